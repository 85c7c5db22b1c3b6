"""The remote client's answers, from the raw-socket server of :mod:`tests.test_remotehostile` to a real
:class:`inprocserve.Server` whose version is a ``remote.toml``. A ``gzip`` answer whose second or later member is
a gzip member (its header says so) that does not inflate (its data or its checksum broken): the error says the
member is broken, not that the body goes on with bytes that are not a gzip member (what a page or padding
appended to the answer is told). A redirect is sent once, where retries are allowed."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import inprocserve

from .conftest import ServerFactory
from .test_remotehostile import Hostile, in_pieces, predicted, response, serve, y_answer
from .test_remotehostile import hostile as hostile  # (the fixture)


def _broken(member: bytes, at: int) -> bytes:
    """``member`` with its byte at ``at`` flipped."""
    return member[:at] + bytes([member[at] ^ 0xFF]) + member[at + 1 :]


def test_a_broken_member_after_a_whole_one_is_named_broken_not_other_bytes(
    repository: Path, make_server: ServerFactory, hostile: Hostile
) -> None:
    server = serve(repository, make_server, hostile)
    answer = y_answer().encode()
    first = gzip.compress(answer[:9], mtime=0)
    second = gzip.compress(answer[9:], mtime=0)
    coded = {"Content-Encoding": "gzip"}
    cases = {
        "its checksum": [response(first + _broken(second, len(second) - 8), headers=coded)],
        "its data": [response(first + _broken(second, 12), headers=coded)],
        # (its two magic bytes read apart: the member is still told by them)
        "its checksum, its header cut": [
            in_pieces(
                response(first + _broken(second, len(second) - 8), headers={**coded, "Connection": "close"}),
                [len(first) + 1],
            )
        ],
    }
    for name, script in cases.items():
        hostile.script = script
        with pytest.raises(inprocserve.RemoteUnavailableError) as error:
            predicted(server)
        message = str(error.value)
        assert (
            "the answer's gzip body is broken after gzip member 1: member 2, a gzip member by its header, does not "
            "inflate (Error -3 while decompressing data: " in message
        ), (name, message)
        assert "not a gzip member" not in message, (name, message)
        np.testing.assert_array_equal(predicted(server), 2.0)  # (the next answer, whole, is taken)
    # Bytes that are no gzip member after a whole one are still told so.
    hostile.script = [response(first + second + b"<html>", headers=coded)]
    with pytest.raises(inprocserve.RemoteUnavailableError, match="after gzip member 2\\) with bytes that are not"):
        predicted(server)


def test_a_redirect_is_sent_once_where_retries_are_allowed(
    repository: Path, make_server: ServerFactory, hostile: Hostile
) -> None:
    """A redirect is not retried (the request and remote.toml's headers go to url only, and the same url answers
    the same): the redirect tests ran with ``retries = 0``, where nothing is retried, so they could not tell."""
    server = serve(repository, make_server, hostile, extra="retries = 2\n")
    service_unavailable = response(b'{"error": "busy"}', status="503 Service Unavailable")
    hostile.script = [service_unavailable, service_unavailable]
    np.testing.assert_array_equal(predicted(server), 2.0)  # (503s are retried here: two retries, then answered)
    assert hostile.script == []
    for status in ("301 Moved Permanently", "302 Found", "307 Temporary Redirect", "308 Permanent Redirect"):
        redirect = response(b"moved", status=status, headers={"Location": "http://127.0.0.1:9/v2/models/scale/infer"})
        hostile.script = [redirect] * 3
        with pytest.raises(inprocserve.RemoteUnavailableError, match=r"a redirect to http://127\.0\.0\.1:9/"):
            predicted(server)
        assert len(hostile.script) == 2, status  # (sent once)


def test_a_coded_redirect_is_read_no_further_than_an_uncoded_one(
    repository: Path, make_server: ServerFactory, hostile: Hostile
) -> None:
    """A redirect (an error answer: its message is in the first 64 KiB) whose gzip body goes on with members that
    inflate to nothing: it was read to its end, however long, inflated member by member, so the call ran out of
    time (here the server sends 5 MB of them, says more are to come, and waits) and was a DeadlineExceededError,
    counted against the server, instead of the redirect's RemoteUnavailableError and its advice."""
    folder = repository / "scale" / "1"
    folder.mkdir(parents=True)
    (folder / "remote.toml").write_text(
        f'url = "http://127.0.0.1:{hostile.port}"\nmodel = "scale"\ntimeout_s = 2\nretries = 0\n'
    )
    server = make_server(repository=repository)
    body = gzip.compress(b'{"error": "moved to the new cluster"}', mtime=0)
    body += gzip.compress(b"", mtime=0) * ((5 << 20) // 20)
    done = threading.Event()

    def redirect_without_end(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 307 Temporary Redirect\r\nContent-Encoding: gzip\r\nLocation: http://127.0.0.1:9/v2\r\n"
            + f"Content-Length: {1 << 30}\r\n\r\n".encode()
            + body
        )
        done.wait(10)  # (the rest of the gigabyte never comes)

    hostile.script = [redirect_without_end]
    try:
        started = time.monotonic()
        with pytest.raises(inprocserve.RemoteUnavailableError) as error:
            predicted(server)
    finally:
        done.set()
    assert "answered 307: moved to the new cluster (a redirect to http://127.0.0.1:9/v2, not followed" in str(
        error.value
    )
    assert time.monotonic() - started < 2  # (not its timeout_s)
