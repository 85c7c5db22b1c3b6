"""The external-data checks hold with an old onnxruntime that itself follows ``../../etc/passwd``.

Needs a second Python with an old onnxruntime (1.17.3 served ``/etc/passwd`` as a model's output), named by
``INPROCSERVE_OLD_ORT_PYTHON``; ``make soak`` builds one in ``.venv-ort-old`` (see the Makefile). The script
runs there against this checkout, so it also proves the library works with that onnxruntime.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import report

ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("INPROCSERVE_OLD_ORT_PYTHON", "")

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
import inprocserve

w = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
w.ClearField("raw_data")
w.data_location = TensorProto.EXTERNAL
root = Path(tempfile.mkdtemp()) / "models"
path = root / "m" / "1" / "model.onnx"
path.parent.mkdir(parents=True)
for key, value in (("location", "../" * len(path.parent.resolve().parts) + "etc/passwd"), ("length", "16")):
    entry = w.external_data.add()
    entry.key, entry.value = key, value
io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 4])
graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [io("x")], [io("y")], [w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
path.write_bytes(model.SerializeToString())
try:
    raw = ort.InferenceSession(str(path)).run(None, {"x": np.zeros((1, 4), np.float32)})[0].tobytes().decode("latin-1")
except Exception as exc:
    raw = "refused: " + str(exc)[:100]
server = inprocserve.Server(root)
version = server.status()["models"]["m"]["versions"]["1"]
server.close()
print(json.dumps({"onnxruntime": ort.__version__, "raw": raw, "state": version["state"], "error": version["error"]}))
"""


@pytest.mark.skipif(not PYTHON, reason="set INPROCSERVE_OLD_ORT_PYTHON to a Python with an old onnxruntime (make soak)")
def test_the_library_refuses_what_an_old_onnxruntime_would_serve() -> None:
    done = subprocess.run(
        [PYTHON, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    report("old_onnxruntime", outcome)
    assert outcome["state"] == "failed" and "may not climb out" in outcome["error"]
