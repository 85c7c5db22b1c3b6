"""Per-thread state without a ``threading.local`` per object (``inprocserve._thread_values``).

In Python 3.11 a ``threading.local`` freed by a collection that runs inside ``sys._current_frames()``
deadlocks the process (CPython gh-106883), and sampling profilers and APM agents call it many times a second.
A loaded version's run limit, and every flag provider, kept a ``threading.local`` of its own, freed by the
collector when the version was unloaded or the server closed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from inprocserve._thread_values import ThreadValue

ROOT = Path(__file__).resolve().parent.parent


class Held:
    """A value whose end a test can see (a weak reference to it)."""


def test_each_thread_sees_the_value_it_set_and_the_default_before() -> None:
    value: ThreadValue[str | None] = ThreadValue(None)
    value.set("main")
    seen: list[str | None] = []

    def other() -> None:
        seen.append(value.get())
        value.set("other")
        seen.append(value.get())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [None, "other"]
    assert value.get() == "main"


def test_a_value_goes_with_its_thread() -> None:
    value: ThreadValue[Held | None] = ThreadValue(None)
    refs: list[weakref.ref[Held]] = []

    def other() -> None:
        held = Held()
        refs.append(weakref.ref(held))
        value.set(held)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert refs[0]() is None


def test_a_value_goes_with_its_owner_while_its_thread_lives_on() -> None:
    """A version unloaded while the request threads that ran it live on: their run slots go with it, when
    the next version is loaded (as its own per-thread state is made: never inside a collection)."""
    value: ThreadValue[Held | None] = ThreadValue(None)
    held = Held()
    kept = weakref.ref(held)
    value.set(held)
    del held
    assert kept() is not None
    del value
    ThreadValue(None)
    assert kept() is None


def test_values_go_with_their_owner_while_other_threads_start_and_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Owners dropped (versions unloaded) while request threads come and go (a thread pool growing): the
    walk of every thread's values that a dropped owner makes raced a thread adding its first value ("Set
    changed size during iteration", in a finalizer: printed, and the owner's values kept for good)."""
    failures: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: failures.append(unraisable.exc_value))
    shared: ThreadValue[int | None] = ThreadValue(None)
    stop = threading.Event()
    parked: list[tuple[threading.Thread, threading.Event]] = []

    def start_and_end_threads() -> None:
        while not stop.is_set():
            release = threading.Event()

            def request(release: threading.Event) -> None:
                shared.set(1)  # (its first value: its dict of values is listed)
                release.wait()

            thread = threading.Thread(target=request, args=(release,))
            thread.start()
            parked.append((thread, release))
            if len(parked) > 200:
                oldest, its_release = parked.pop(0)
                its_release.set()
                oldest.join()

    churners = [threading.Thread(target=start_and_end_threads) for _ in range(2)]
    for churner in churners:
        churner.start()
    kept = 0
    before: weakref.ref[Held] | None = None
    try:
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            owner: ThreadValue[Held | None] = ThreadValue(None)  # (takes out the values of the one before)
            kept += before is not None and before() is not None
            held = Held()
            before = weakref.ref(held)
            owner.set(held)
            del held, owner
    finally:
        stop.set()
        for churner in churners:
            churner.join()
        for thread, release in parked:
            release.set()
            thread.join()
    assert (kept, failures) == (0, [])


OWNERS_DROPPED_UNDER_A_PROFILER = """
import gc, sys, threading, _thread
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
import inprocserve
from inprocserve import EnvFlags, FileFlags, OpenFeatureFlags
from inprocserve.testing import build_scale_model, save_model
from openfeature import api
from openfeature.provider.in_memory_provider import InMemoryProvider

folder = Path(sys.argv[2])
save_model(build_scale_model(2.0), folder, "scale", 1)  # (pool.max_run_s: 60 s by default, a run limit)
flag_file = folder.parent / "flags.json"
flag_file.write_text('{"scale": {"kill": false}}')
api.set_provider(InMemoryProvider({}), domain="profiled")
rows = np.ones((1, 4), np.float32)


def served():
    server = inprocserve.Server(folder)
    server.predict("scale", rows)
    server.close()
    return server


def file_flags():
    flags = FileFlags(flag_file)
    flags.get_boolean("scale.kill", False, {})
    flags.close()
    return flags


def env_flags():
    flags = EnvFlags()
    flags.get_boolean("scale.kill", False, {})
    return flags


def served_with_flags():
    server = inprocserve.Server(folder, flags=OpenFeatureFlags(domain="profiled"))  # (blocking: tried here first)
    server.predict("scale", rows)
    server.close()
    return server


builds = {
    "a closed server's loaded version": served,
    "a closed server's flag reader": served_with_flags,
    "FileFlags": file_flags,
    "EnvFlags": env_flags,
    "OpenFeatureFlags": lambda: OpenFeatureFlags(domain="profiled"),
}


def locals_alive():
    return sum(isinstance(thing, _thread._local) for thing in gc.get_objects())


for name, build in builds.items():
    before = locals_alive()
    owner = build()
    assert locals_alive() == before, f"{name} made a threading.local of its own"
    for _ in range(3):
        gc.disable()  # (what it leaves stays for the next collection, as it may in any process)
        try:
            owner = build()
            cycle = [owner]
            cycle.append(cycle)
            del owner, cycle
        finally:
            gc.enable()
        sys._current_frames()  # a sampling profiler's call, in which the next collection comes
    print(name, "dropped", flush=True)
print("done")
"""


def test_servers_and_flag_providers_dropped_under_a_sampling_profiler_do_not_deadlock_the_process(
    tmp_path: Path,
) -> None:
    """Each owner of per-thread state is made and dropped in a cycle, and the collection that frees it comes
    inside ``sys._current_frames()``, as it may under a profiler's thread: with a ``threading.local`` of its
    own, the first such collection deadlocked the process for good (run until the timeout here)."""
    folder = tmp_path / "models"
    folder.mkdir()
    try:
        run = subprocess.run(
            [sys.executable, "-c", OWNERS_DROPPED_UNDER_A_PROFILER, str(ROOT), str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as exc:
        said = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        raise AssertionError(f"deadlocked after: {said!r}") from None
    assert run.returncode == 0 and run.stdout.strip().endswith("done"), run.stdout + run.stderr


GREENLETS_AFTER_A_LATE_PATCH = """
import sys
sys.path.insert(0, sys.argv[1])
from inprocserve._thread_values import ThreadValue
from gevent import monkey
monkey.patch_all()
import gevent

callers, threads = ThreadValue(None), ThreadValue(None, os_threads=True)
seen = []

def greenlet(name):
    callers.set(name)
    threads.set(name)
    gevent.sleep(0.01)  # the other greenlet sets its values meanwhile
    seen.append((name, callers.get(), threads.get()))

gevent.joinall([gevent.spawn(greenlet, "a"), gevent.spawn(greenlet, "b")])
print(sorted(seen))
"""


def test_under_a_late_gevent_patch_each_greenlet_has_its_own_value_and_an_os_threads_value_is_shared() -> None:
    """A flag provider's per-caller state must be a greenlet's own under gevent (a greenlet may switch while
    it makes a plan), even when inprocserve was imported before the patch (gunicorn's ``--preload``); a run
    limit's slot stays one per OS thread (a run blocks its thread: no greenlet switches during it)."""
    run = subprocess.run(
        [sys.executable, "-c", GREENLETS_AFTER_A_LATE_PATCH, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[('a', 'a', 'b'), ('b', 'b', 'b')]", run.stdout + run.stderr


OWNERS_DROPPED_WHILE_THREADS_START_AND_END = """
import gc, sys, threading, time
sys.path.insert(0, sys.argv[1])
from inprocserve import _fork, _reaper
from inprocserve._flags import FileFlags
from inprocserve._recorder import Recorder
from inprocserve._thread_values import ThreadValue

stopping = False


def start_and_end_threads():
    while not stopping:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()


for _ in range(2):
    threading.Thread(target=start_and_end_threads, daemon=True).start()
sys.setswitchinterval(1e-5)  # (the GIL asked for often: its hand-over inside a collection comes sooner)


class Owner:
    # what a run limit or a flag provider is to this: per-thread state, fork hooks, a cycle

    def __init__(self):
        self.itself = self
        if sys.argv[2] == "per-thread state":
            self.state = ThreadValue(None)
            self.state.set(1)
        elif sys.argv[2] == "a version's metric recorder":
            self.recorder = Recorder("m", 1)
        elif sys.argv[2] == "a server's clean-up":
            _reaper.watch(self, len, ())  # (what a server nobody closed hands to the clean-up thread)
        elif sys.argv[2] == "a flag file's refresher":
            self.flags = FileFlags(sys.argv[3])
        else:
            _fork.register(self)

    def _after_fork_in_child(self):
        pass


until = time.monotonic() + 4.0
while time.monotonic() < until:
    gc.disable()  # (what it leaves stays for the next collection, as it may in any process)
    owners = [Owner() for _ in range(50)]
    del owners
    gc.enable()
    sys._current_frames()  # a sampling profiler's call, in which the next collection comes
stopping = True
print("done")
"""


@pytest.mark.parametrize(
    "kind",
    [
        "per-thread state",
        "fork hooks",
        "a version's metric recorder",
        "a server's clean-up",
        "a flag file's refresher",
    ],
)
def test_owners_collected_under_a_sampling_profiler_while_threads_start_and_end_do_not_deadlock(
    kind: str, tmp_path: Path
) -> None:
    """Python code that a collection inside sys._current_frames() runs (a weakref.finalize, a lambda callback)
    may hand the GIL to a thread that then starts or ends and waits, with the GIL, for the runtime lock the
    collection holds (the case CPython gh-106883 first reported): every run here hung within 4 s when a
    dropped ThreadValue's values were taken out by a finalizer, a registered object left the fork hooks' set
    by a lambda, a version's metric recorder handed its pending records on in a finalizer, a server nobody
    closed handed its clean-up to the clean-up thread in a finalizer, or a FileFlags nobody closed ended its
    refresher in one. Their clean-up in a collection is C alone now."""
    flags_file = tmp_path / "flags.json"
    flags_file.write_text("{}")
    try:
        run = subprocess.run(
            [sys.executable, "-c", OWNERS_DROPPED_WHILE_THREADS_START_AND_END, *(str(ROOT), kind, str(flags_file))],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"deadlocked ({kind})") from None
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stdout + run.stderr
