"""Pre-fork safety: the onnxruntime warning at fork, the eager warm-up thread under a real gunicorn stop,
builders that do not keep apps alive, and the master-side repository check that matches the Server."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest

import inprocserve
from inprocserve import _prefork
from inprocserve.testing import build_scale_model, save_model

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

ROOT = Path(__file__).resolve().parents[1]

FORK_SCRIPT = """
import logging, multiprocessing, os, sys
if sys.argv[1] == "logging":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
import inprocserve

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

fork()
print("forked without onnxruntime", flush=True)
import onnxruntime
child = multiprocessing.get_context("fork").Process(target=print, args=("multiprocessing child",))
child.start()
child.join()
print("multiprocessing child exit", child.exitcode, flush=True)
fork()
fork()
print("forked twice with onnxruntime", flush=True)
"""


@pytest.mark.parametrize("logging_set_up", ["logging", "no logging"])
def test_a_fork_with_onnxruntime_imported_logs_an_error_once(logging_set_up: str) -> None:
    # (a fresh interpreter: the test process has imported onnxruntime long ago.) Without logging set up
    # (a gunicorn master) the package's NullHandler would swallow the record: it goes to stderr then.
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, logging_set_up],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in order (both are flushed as they are written)
        text=True,
        timeout=120,
        cwd=str(ROOT),
    )
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERROR inprocserve._fork: ")]
    assert len(errors) == 1, result.stdout
    assert "onnxruntime" in errors[0] and "build servers in the workers" in errors[0]
    # no error for the fork before the import, nor for multiprocessing's (its children end with os._exit)
    assert lines.index(errors[0]) > lines.index("multiprocessing child exit 0"), result.stdout
    assert lines[-1] == "forked twice with onnxruntime", result.stdout


WARMING_APP = """
import os, threading, time
import inprocserve

MARKS = os.environ["INPROCSERVE_TEST_MARKS"]

def build():
    open(os.path.join(MARKS, f"started-{os.getpid()}"), "w").close()
    main = threading.main_thread()
    for _ in range(6000):  # until this worker has been told to stop and its main thread is done (bounded)
        if not main.is_alive():
            break
        time.sleep(0.01)
    time.sleep(0.5)  # still building while the interpreter exits: a daemon thread would be cut off here
    open(os.path.join(MARKS, f"done-{os.getpid()}"), "w").close()

inprocserve.build_after_fork(build)

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def test_a_worker_stopped_during_its_warm_up_lets_the_warm_up_finish(tmp_path: Path) -> None:
    # The eager warm-up thread must not be a daemon: a gunicorn worker told to stop while the thread is
    # inside onnxruntime's session creation aborts at exit otherwise. Here the build is still running when
    # the workers' main threads have finished; each worker's exit waits for it to complete.
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "warming_app.py").write_text(WARMING_APP)
    log_path = tmp_path / "gunicorn.log"
    env = {**os.environ, "INPROCSERVE_TEST_MARKS": str(marks), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--bind", "127.0.0.1:0"]
    command += ["--graceful-timeout", "60", "--chdir", str(tmp_path), "warming_app:app"]
    with log_path.open("w") as log:
        master = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(6000):  # bounded wait for both workers to be inside their build
            if len(list(marks.glob("started-*"))) == 2 or master.poll() is not None:
                break
            time.sleep(0.01)
        started = sorted(p.name.split("-")[1] for p in marks.glob("started-*"))
        assert len(started) == 2, log_path.read_text()
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=120) == 0, log_path.read_text()
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    done = sorted(p.name.split("-")[1] for p in marks.glob("done-*"))
    log = log_path.read_text()
    assert done == started, log
    assert "SIGABRT" not in log and "SIGKILL" not in log, log


class _App:
    def __init__(self) -> None:
        self.built_in: list[int] = []

    def warm(self) -> None:
        self.built_in.append(os.getpid())


def test_a_registered_builder_does_not_keep_its_app_alive() -> None:
    apps = [_App() for _ in range(3)]
    for app in apps:
        inprocserve.build_after_fork(app.warm, background=False)
    inprocserve.build_after_fork(apps[0].warm, background=False)  # again: still one entry
    refs = [weakref.ref(app) for app in apps]
    kept = apps[0]
    del app, apps
    gc.collect()
    assert [ref() is None for ref in refs] == [False, True, True]
    ours = [entry for entry in _prefork._builders.values() if isinstance(getattr(entry.get(), "__self__", None), _App)]
    assert len(ours) == 1 and ours[0].get() == kept.warm
    del kept, ours
    gc.collect()
    assert not [entry for entry in _prefork._builders.values() if entry.get() is None]  # dead ones are gone


def test_a_process_with_an_app_s_builder_in_a_module_exits_without_a_traceback(tmp_path: Path) -> None:
    # an app registered in a module (as the plug-ins do with EAGER, in app.py): on Python 3.13 every exit of
    # such a process (each gunicorn worker, the master) printed "Exception ignored in: <function
    # WeakMethod.__new__.<locals>._cb ...>" and an AttributeError traceback (fails on 3.13 only)
    (tmp_path / "app_with_a_builder.py").write_text(
        textwrap.dedent(
            """
            import inprocserve

            class App:
                def warm(self) -> None:
                    pass

            app = App()
            inprocserve.build_after_fork(app.warm)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", "import app_with_a_builder"], capture_output=True, text=True, env=env, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_check_repository_layers_models_over_config_toml_like_the_server(tmp_path: Path) -> None:
    # config.toml serves version 1 only; version 2 is half-copied. models= changes batching alone, so the
    # Server still follows config.toml's policy (and is ready): the check must not fail on version 2.
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    (repository / "fraud" / "2").mkdir()
    (repository / "fraud" / "2" / "model.onnx").write_bytes(b"not onnx (a half-copied version 2)")
    (repository / "fraud" / "config.toml").write_text("version_policy = { specific = [1] }\n")
    models = {"fraud": inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=8))}
    report = inprocserve.check_repository(repository, models=models)
    assert list(report["models"]["fraud"]) == [1]
    # and an invalid config.toml is caught even when models= names the model (the Server reports it too)
    (repository / "fraud" / "config.toml").write_text('[batching]\nmax_batch_size = "lots"\n')
    with pytest.raises(inprocserve.ConfigurationError, match="max_batch_size"):
        inprocserve.check_repository(repository, models=models)


def test_check_repository_checks_the_versions_the_rollout_names(tmp_path: Path) -> None:
    # The policy (latest) selects version 2, but the rollout's stable version 1 is loaded too, and corrupt.
    repository = tmp_path / "models"
    (repository / "fraud" / "1").mkdir(parents=True)
    (repository / "fraud" / "1" / "model.onnx").write_bytes(b"corrupt")
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    (repository / "fraud" / "config.toml").write_text(
        textwrap.dedent("""\
            [rollout]
            strategy = "canary"
            stable = 1
            [rollout.canary]
            version = 2
            percent = 5
            """)
    )
    with pytest.raises(inprocserve.ModelLoadError, match="version 1"):
        inprocserve.check_repository(repository)
    save_model(build_scale_model(2.0), repository, "fraud", 1)  # repaired: both are checked
    assert sorted(inprocserve.check_repository(repository)["models"]["fraud"]) == [1, 2]


def test_check_repository_reads_the_control_file_as_the_workers_will(tmp_path: Path) -> None:
    """A control file every worker would fail on (and refuse its traffic) must fail the master's check."""
    repository = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    control = repository / ".inprocserve-control.json"
    control.write_text('{"revision": 3, "models": {"fraud": {"stable": 1')  # cut short by a hand edit
    with pytest.raises(inprocserve.ConfigurationError, match=r"not valid JSON.*every worker would refuse"):
        inprocserve.check_repository(repository)
    control.unlink()
    control.symlink_to(tmp_path / "configmap" / "control.json")  # a ConfigMap that is not mounted
    with pytest.raises(inprocserve.ControlFileUnavailableError, match="symbolic link to a file that does not"):
        inprocserve.check_repository(repository)
    control.unlink()
    control.write_text('{"revision": 3, "models": {"fraud": {"stable": 7}}}')  # meant 1: workers serve 2
    problems = inprocserve.check_repository(repository)["problems"]
    assert any("serves version(s) 7, not in the repository" in problem for problem in problems), problems
    control.write_text('{"revision": 3, "models": {"fraud": {"stable": 2, "previous_stable": 9}}}')  # pruned
    assert inprocserve.check_repository(repository)["problems"] == []  # (nothing to roll back to: no problem)
    # the stable version the control file pins is loaded by every worker whatever the policy: checked too
    control.write_text('{"revision": 4, "models": {"fraud": {"stable": 1}}}')
    (repository / "fraud" / "1" / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(inprocserve.ModelLoadError, match="version 1"):
        inprocserve.check_repository(repository)


def test_the_gunicorn_hook_without_a_server_to_build_says_so(tmp_path: Path) -> None:
    """gunicorn.conf.py imports the hook, but the app is not in eager mode: the hook built nothing, logged
    "servers warm in 0.00s", and each worker built its server at its first request after all."""
    save_model(build_scale_model(2.0), tmp_path, "scale", 1)
    script = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        from flask import Flask
        from inprocserve_flask import Inprocserve
        from inprocserve.gunicorn import post_worker_init

        app = Flask("app")
        app.config["INPROCSERVE_REPOSITORY"] = sys.argv[1]
        app.config["INPROCSERVE_EAGER"] = sys.argv[2] == "eager"
        Inprocserve(app)
        post_worker_init(None)  # what gunicorn calls in each worker
        print("built:", app.extensions["inprocserve"].started)
        """
    )
    pytest.importorskip("inprocserve_flask")
    plugin = Path(__file__).resolve().parent.parent / "integrations" / "flask" / "src"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), str(plugin)]),
    }
    for mode, built in (("lazy", False), ("eager", True)):
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path), mode],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
            check=True,
        )
        assert f"built: {built}" in done.stdout, done.stderr
        warned = "post_worker_init hook found no server to build: set INPROCSERVE_EAGER = True" in done.stderr
        assert warned is not built, done.stderr
        assert ("servers warm in" in done.stderr) is built, done.stderr


def test_a_gunicorn_worker_started_after_the_first_ones_is_told_apart() -> None:
    """The plug-ins' start-up check fails a first start, but not a worker gunicorn starts later (a failed
    load there makes gunicorn stop the whole server): told apart by the worker's age, or the arbiter's HUP
    reload below it on the stack (a reload that raises --workers forks new workers whose age is low)."""
    pytest.importorskip("gunicorn")
    from types import SimpleNamespace

    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.sync import SyncWorker

    def worker(age: int, workers: int) -> SyncWorker:
        made = object.__new__(SyncWorker)  # (what gunicorn's spawn_worker builds, without its sockets)
        made.age, made.cfg = age, SimpleNamespace(workers=workers)
        return made

    def load_wsgi(self: SyncWorker) -> str | None:  # where gunicorn loads the app in each worker
        return _prefork.replacement_worker()

    def reload(self: Arbiter, worker: SyncWorker) -> str | None:  # the arbiter's HUP reload forks new workers
        return load_wsgi(worker)

    assert _prefork.replacement_worker() is None  # not in a gunicorn worker (a --preload master, a script)
    assert load_wsgi(worker(age=2, workers=2)) is None  # the first start's second worker
    assert "(age 3) was started after the server's first 2" in str(load_wsgi(worker(age=3, workers=2)))
    assert "reload (HUP)" in str(reload(object.__new__(Arbiter), worker(age=3, workers=4)))

    # the same rule in a child just forked (a --preload master's worker loads no app): its failed loads are retried
    def spawn_worker(self: Arbiter, worker: SyncWorker) -> bool:  # where the arbiter forks each worker
        return _prefork._gunicorn_replacement_at_fork()

    assert not spawn_worker(object.__new__(Arbiter), worker(age=2, workers=2))
    assert spawn_worker(object.__new__(Arbiter), worker(age=3, workers=2))
    assert not _prefork._gunicorn_replacement_at_fork()  # (not forked by gunicorn at all)


def test_a_worker_started_past_a_failed_check_retries_what_failed_without_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a worker's server (poll_interval_s None, the default) loaded nothing of the broken model and, with
    no refresh to come, answered 404 for it until the worker was replaced again; it now retries by itself
    (1 s, then twice as long each time) until every model loads, then stops retrying."""
    save_model(build_scale_model(2.0), tmp_path, "scale", 1)
    config_toml = tmp_path / "scale" / "config.toml"
    config_toml.write_text("[batching\n")
    monkeypatch.setattr(_prefork, "_started_past_failure", True)
    with inprocserve.Server(tmp_path) as server:
        assert server.models == {}
        config_toml.write_text("[batching]\nmax_batch_size = 8\n")
        deadline = time.monotonic() + 10
        while not server.models and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.models == {"scale": [1]}
        healer = server._registry._poller
        assert healer is not None and healer.name == "inprocserve-heal"
        healer.join(timeout=5)
        assert not healer.is_alive()  # every model loads: no more retries
    monkeypatch.setattr(_prefork, "_started_past_failure", False)
    config_toml.write_text("[batching\n")
    with inprocserve.Server(tmp_path) as server:  # a first start: no retries (a refresh, a reload does it)
        assert server.models == {} and server._registry._poller is None
