"""docs/deployment.md's Celery ``tasks.py`` and RQ ``worker.py``/``jobs.py``, as a user copies them, run for
real: a redis-server on a loopback port, a ``celery worker`` under the prefork pool (children recycled every
5 tasks; autoscaled), and the threads, solo and gevent pools, an RQ ``SimpleWorker``; every answer checked
against onnxruntime's own, and the worker stopped with SIGTERM (a warm shutdown) exits cleanly.

``make test`` runs the prefork pool (with its children recycled) and the threads pool, about 10 s; the solo,
gevent and autoscaled pools and the RQ worker, about 20 s more, run in ``make soak``, which sets
``INPROCSERVE_TEST_TASK_QUEUES_SOAK=1`` (they skip without it: ``make test`` is at its time limit on 2 cores).

Celery and RQ are in the dev extra (about 10 MB of pure Python with what they add, 5 s to install from a
local index); without them (``pip install celery rq``) or redis-server this module is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

for module, what in (("celery", "celery"), ("rq", "rq"), ("redis", "redis")):
    pytest.importorskip(module, reason=f"the Celery and RQ deployment tests need {what} (pip install {what})")
if shutil.which("redis-server") is None:
    pytest.skip(
        "redis-server is not installed (Debian package redis-server: apt-get install redis-server, "
        "or make system-deps)",
        allow_module_level=True,
    )

import redis  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOAK = os.environ.get("INPROCSERVE_TEST_TASK_QUEUES_SOAK") == "1"
soak_only = pytest.mark.skipif(
    not SOAK, reason="soak only (make soak): set INPROCSERVE_TEST_TASK_QUEUES_SOAK=1 to run it"
)
DOC = (ROOT / "docs" / "deployment.md").read_text()


def load_redis_server() -> Any:
    spec = importlib.util.spec_from_file_location(
        "deployment_redis_server", ROOT / "examples/queue_consumer/redis_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snippets(section: str) -> list[str]:
    """The ``python`` code blocks of a section of docs/deployment.md."""
    text = DOC.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def build_fraud_model() -> Any:
    """``fraud``: probability = 2 * x, on x[batch, 4] (the snippets' model and output names)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["probability"])],
        "fraud",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.full(4, 2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with load_redis_server().RedisServer() as server:
        yield server.url


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> tuple[Path, dict[str, str]]:
    from inprocserve.testing import save_model

    models = tmp_path / "models"
    path = save_model(build_fraud_model(), models, "fraud")
    assert path.exists()
    code = tmp_path / "code"
    code.mkdir()
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "MODELS": str(models),
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "REDIS_URL": redis_url,
        "PYTHONPATH": os.pathsep.join([str(code), *sys.path]),
    }
    return code, env


def expected(path: Path, rows: np.ndarray) -> np.ndarray:
    return onnxruntime.InferenceSession(str(path)).run(["probability"], {"x": rows})[0]  # type: ignore[no-any-return]


def batches(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(count)]


def stop(worker: subprocess.Popen[bytes]) -> int:
    worker.send_signal(signal.SIGTERM)  # a warm shutdown
    try:
        return worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        raise


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--pool", "prefork", "--concurrency", "2", "--max-tasks-per-child", "5"], id="prefork"),
        pytest.param(["--pool", "threads", "--concurrency", "4"], id="threads"),
        pytest.param(["--pool", "solo"], id="solo", marks=soak_only),
        # (within kombu's default broker_pool_limit of 10: with 20 greenlets, acknowledgements failed with
        # redis-py's MaxConnectionsError, a Celery setting the docs now name)
        pytest.param(["--pool", "gevent", "--concurrency", "8"], id="gevent", marks=soak_only),
        pytest.param(["--pool", "prefork", "--autoscale", "3,1"], id="autoscale", marks=soak_only),
    ],
)
def test_the_celery_tasks_module_of_the_docs_answers_every_task(
    deployment: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, options: list[str]
) -> None:
    code, env = deployment
    (tasks_py,) = snippets("Celery")
    (code / "tasks.py").write_text(tasks_py)
    log = code / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel", "info", *options],
            cwd=code,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        for name in ("MODELS", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            monkeypatch.setenv(name, env[name])
        monkeypatch.syspath_prepend(str(code))
        sys.modules.pop("tasks", None)
        import tasks

        rows = batches(24)
        results = [tasks.score.delay(batch.tolist()) for batch in rows]
        model = Path(env["MODELS"]) / "fraud" / "1" / "model.onnx"
        for batch, result in zip(rows, results, strict=True):
            np.testing.assert_allclose(np.asarray(result.get(timeout=120)), expected(model, batch), rtol=1e-6)
    finally:
        sys.modules.pop("tasks", None)
        code_status = stop(worker)
    text = log.read_text(errors="replace")
    assert code_status == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@soak_only
@pytest.mark.timeout(240)
def test_the_rq_worker_of_the_docs_answers_every_job_and_survives_a_job_timeout(
    deployment: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rq

    code, env = deployment
    worker_py, jobs_py = snippets("RQ")
    assert jobs_py.startswith("# jobs.py\n")
    (code / "jobs.py").write_text(jobs_py)
    (code / "worker.py").write_text(worker_py.replace(".work()", ".work(burst=True)"))  # (ends when the queue is empty)
    monkeypatch.syspath_prepend(str(code))
    sys.modules.pop("jobs", None)
    import jobs

    try:
        connection = redis.Redis.from_url(env["REDIS_URL"])
        queue = rq.Queue(connection=connection)
        rows = batches(12)
        queued = [queue.enqueue(jobs.score, batch.tolist()) for batch in rows]
        # a job stopped by its timeout (SIGALRM) while it sleeps: it fails alone, the next job is answered
        queued.insert(6, queue.enqueue("time.sleep", 30, job_timeout=1))
        completed = subprocess.run(
            [sys.executable, str(code / "worker.py")], cwd=code, env=env, capture_output=True, timeout=200
        )
        assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-3000:]
        timed_out = queued.pop(6)
        assert timed_out.get_status(refresh=True) == "failed"
        model = Path(env["MODELS"]) / "fraud" / "1" / "model.onnx"
        for batch, job in zip(rows, queued, strict=True):
            assert job.get_status(refresh=True) == "finished", job.latest_result()
            np.testing.assert_allclose(np.asarray(job.return_value()), expected(model, batch), rtol=1e-6)
    finally:
        sys.modules.pop("jobs", None)
