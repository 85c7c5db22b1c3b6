"""gunicorn settings of tests/test_gunicorn_asgi.py: the documented warm-up hook, and the master's record of
every worker it reaps (a worker the master killed at its graceful timeout, and did not reap before it exited,
is not in it)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from inprocserve.gunicorn import post_worker_init as warm_worker


def child_exit(server: Any, worker: Any) -> None:
    with open(os.environ["INPROCSERVE_TEST_REAPED"], "a") as reaped:
        reaped.write(f"{worker.pid}\n")


def post_worker_init(worker: Any) -> None:
    if os.environ.get("INPROCSERVE_TEST_STOP_WHILE_BOOTING") == "1":
        _stop_while_booting()
    warm_worker(worker)


def _stop_while_booting() -> None:
    """A deploy stops the server while this worker boots: the first worker to get here asks the master to stop
    (SIGTERM), once every worker got this far (so each has its own signal handlers: one forked a moment ago
    still has the master's, which lose the signal whatever the app), and goes on booting once the master's
    SIGTERM has reached it, handled by the worker's own handler (the event loop's, chained here to learn that it
    came)."""
    stopper = os.environ["INPROCSERVE_TEST_STOPPER"]
    os.makedirs(f"{stopper}.booting", exist_ok=True)
    open(f"{stopper}.booting/{os.getpid()}", "w").close()
    try:
        os.close(os.open(stopper, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # another worker asks
        return
    deadline = time.monotonic() + 30
    while len(os.listdir(f"{stopper}.booting")) < int(os.environ["INPROCSERVE_TEST_WORKERS"]):
        assert time.monotonic() < deadline, "the other workers did not boot"
        time.sleep(0.01)
    own = signal.getsignal(signal.SIGTERM)
    assert callable(own), own
    arrived = []

    def heard(signum: int, frame: Any) -> None:
        arrived.append(signum)
        own(signum, frame)

    signal.signal(signal.SIGTERM, heard)
    try:
        os.kill(os.getppid(), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not arrived and time.monotonic() < deadline:  # (the master sends it at once)
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, own)
        signal.siginterrupt(signal.SIGTERM, False)  # (as the loop had it: signal.signal made it interrupt calls)
