"""How long waking a blocked thread takes on this machine, as ``status()`` shows it.

Tens of microseconds on small virtual machines, a few on bare metal, and a noisy reading: on one machine the
probe read 2.7-3.1 µs in some processes and 25 µs in others. The flush policy weighed a model's fixed cost
against it, and the same model waited for companions in some processes and never in others; it no longer
does (``_flush_policy.automatic_delay_s``). Measured on the first call, not at start-up.
"""

from __future__ import annotations

import threading
import time

from . import _fork

__all__ = ["handoff_cost_s"]

_handoff_lock = threading.Lock()
_handoff_s: float | None = None


def _new_lock_in_child() -> None:
    """In a forked child: a thread of the parent may have held the lock at the fork (measuring, or reading
    the measure for ``status()``); held for good there, the child's first batcher or ``status()`` hung."""
    global _handoff_lock
    _handoff_lock = threading.Lock()


_fork.at_fork_in_child(_new_lock_in_child)
_fork.on_monkey_patch(_new_lock_in_child)


def handoff_cost_s() -> float:
    """The median of a short ping-pong between two threads, measured once per process (its thread is
    joined before this returns)."""
    global _handoff_s
    with _handoff_lock:
        if _handoff_s is None:
            ping, pong = threading.Lock(), threading.Lock()
            ping.acquire()
            pong.acquire()
            rounds = 40

            def echo() -> None:
                for _ in range(rounds):
                    ping.acquire()
                    pong.release()

            thread = threading.Thread(target=echo, name="inprocserve-handoff-probe", daemon=True)
            thread.start()
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                ping.release()
                pong.acquire()
                samples.append((time.perf_counter() - start) / 2)
            thread.join()
            samples.sort()
            _handoff_s = samples[len(samples) // 2]
        return _handoff_s
