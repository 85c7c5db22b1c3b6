"""A process forked while one of its threads was closing a server: the child has no such thread. The closing
had begun there (``close()`` claims it first, so that the exit's clean-up leaves it alone), so the child's
``close()`` waited its whole ``timeout_s`` for a closing nothing in the child would ever end, and the exit's
clean-up of the child waited too, then gave up. A server being closed in the parent is closed in the child,
and closing it there releases, at once, what the parent's thread had not reached yet."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import ModelConfig, WarmupConfig
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, count_batch_runs, run_in_forked_child, wait_until
from .test_dropped_servers import _endless_request
from .test_fork import held_by_another_thread
from .test_shadow_close import build_loop_model

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

X = np.ones((1, 4), np.float32)


def _refused(server: inprocserve.Server) -> bool:
    try:
        server.predict("scale", X, timeout_s=5)
    except inprocserve.ServerClosedError:
        return True
    return False


def test_a_child_forked_while_close_drains_a_request_finishes_closing_at_once(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(build_loop_model(), repository, "loop")
    save_model(build_scale_model(), repository, "scale")
    server = make_server(repository, config=ModelConfig(warmup=WarmupConfig(enabled=False)))
    scale = server._registry.loaded["scale"][1]
    endless = _endless_request(server, count_batch_runs(monkeypatch))
    closing = threading.Thread(target=server.close, kwargs={"timeout_s": 3.0})  # (waits 3 s for the request)
    closing.start()
    # closed, retiring 'loop' (waiting for its request), 'scale' next: the state the fork copies
    wait_until(lambda: server.status()["closed"])

    def in_the_child() -> str:
        started = time.monotonic()
        server.close(timeout_s=20.0)
        took = time.monotonic() - started
        return f"{took < 3.0} {_refused(server)} {scale.state} {server.status()['models'] == {}}"

    assert run_in_forked_child(in_the_child, timeout_s=40) == "True True unloaded True"
    assert closing.is_alive() and scale.state == "ready"  # the parent's close() goes on, untouched
    closing.join(timeout=15)
    assert not closing.is_alive() and endless.done()


def test_the_exit_of_a_child_forked_while_close_drains_cleans_up_at_once(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The child never calls close(): its exit's clean-up of the server (a weak reference's, armed anew in the
    child) waited 20 s for the parent's close() and said "still running ... exiting anyway"."""
    save_model(build_loop_model(), repository, "loop")
    save_model(build_scale_model(), repository, "scale")
    server = make_server(repository, config=ModelConfig(warmup=WarmupConfig(enabled=False)))
    scale = server._registry.loaded["scale"][1]
    endless = _endless_request(server, count_batch_runs(monkeypatch))
    closing = threading.Thread(target=server.close, kwargs={"timeout_s": 3.0})
    closing.start()
    wait_until(lambda: server.status()["closed"])

    def in_the_child() -> str:
        errors: list[str] = []
        handler = logging.Handler(logging.ERROR)
        handler.emit = lambda record: errors.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("inprocserve").addHandler(handler)
        started = time.monotonic()
        server._finalizer()  # what the child's exit hook does for a server nobody closed
        took = time.monotonic() - started
        return f"{took < 3.0} {scale.state} {errors}"

    assert run_in_forked_child(in_the_child, timeout_s=40) == "True unloaded []"
    closing.join(timeout=15)
    assert not closing.is_alive() and endless.done()


def test_a_child_forked_as_close_begins_sees_the_server_closed(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    """Forked after close() claimed the closing but before it marked the server closed (it waits for the
    registry's lock, held by a load or a hot reload): the child served requests on a server its parent was
    closing, and its close() waited 30 s."""
    server = make_server(scale_repository)
    with held_by_another_thread(server._registry.lock):
        closing = threading.Thread(target=server.close)
        closing.start()
        wait_until(lambda: server._closing._owner == closing.ident)

        def in_the_child() -> str:
            refused = _refused(server)
            started = time.monotonic()
            server.close(timeout_s=20.0)
            return f"{refused} {time.monotonic() - started < 3.0} {server.status()['models'] == {}}"

        assert run_in_forked_child(in_the_child, timeout_s=40) == "True True True"
        assert not server.status()["closed"]  # the parent's close() still waits for the lock
    closing.join(timeout=10)
    assert not closing.is_alive() and server.status()["closed"]


def test_a_closing_under_way_is_left_to_its_thread_when_gevent_runs_the_fork_hooks_again(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    """gevent's monkey-patching runs every fork hook again in the same process (see _fork; only while none of
    the library's threads runs, but a close() on a thread of the application's may be under way): there the
    thread that is closing the server is alive, and the closing stays its own (freed, a second close() would
    run beside it, and the server was marked closed under it)."""
    server = make_server(scale_repository)
    with held_by_another_thread(server._registry.lock):
        closing = threading.Thread(target=server.close)
        closing.start()
        wait_until(lambda: server._closing._owner == closing.ident)
        server._after_fork_in_child()  # what gevent's patch runs
        assert not server._closing.begin()  # still claimed by the closing thread
        assert not server.status()["closed"] and server.models == {"scale": [1]}
    closing.join(timeout=10)
    assert not closing.is_alive() and server.status()["closed"]
