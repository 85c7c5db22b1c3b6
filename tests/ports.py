"""TCP ports for the servers that tests start as child processes, which no other process can take first.

``make test`` runs two pytest processes side by side, and other programs on the machine bind ports too. A port
found free by binding port 0 and closing that socket is free for everyone again: another process may bind it
before the child does, and the child then fails to start ("Address already in use"), or a stranger answers on
a port meant to refuse connections. Both helpers leave no such moment:

* ``listening_socket()``: the socket itself, bound and listening, for a child that takes one by its file
  descriptor (``pass_fds``): gunicorn ``--bind fd://N``, uvicorn ``--fd N``, uWSGI ``--http-socket fd://N``.
  The port is the child's from the start; close this process's copy once the child runs.
* ``reserved_port()``: a port number held here by a bound socket that never listens, for a child that only
  takes a number (redis-server, Prometheus, MLServer, ``flask run``) and for a port where nothing may listen.
  Connections to it are refused until a child listens there. Linux never gives it to another socket's bind to
  port 0 on 127.0.0.1 or the wildcard address, nor to a connect() as its local port (so a connection to it
  cannot connect to itself either), and it lets a socket that sets SO_REUSEADDR (each of those servers does,
  gunicorn and werkzeug too) bind a port that only sockets with SO_REUSEADDR hold and none listens on, even
  past TIME_WAIT. The hold lasts until this process exits, one descriptor a call: a child may stop and start
  again on the same port (a restarted server, in a fixture of any scope), and no one takes it in between.
"""

from __future__ import annotations

import atexit
import socket

__all__ = ["listening_socket", "reserved_port"]

_held: list[socket.socket] = []


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1, on a port the kernel chose: hand it to one child."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
    except BaseException:
        listener.close()
        raise
    return listener


def reserved_port() -> int:
    """A port of 127.0.0.1 that only a child told its number binds (with SO_REUSEADDR), until this process
    exits; connections to it are refused while no child listens."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _held.append(holder)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    port: int = holder.getsockname()[1]
    return port


@atexit.register
def _release() -> None:
    for holder in _held:
        holder.close()
