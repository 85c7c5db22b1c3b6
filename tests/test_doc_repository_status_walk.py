"""docs/repository.md, "Status": the ``server.status()`` it shows holds keys a real server's status has, at the
same places, and its ``latency_ms`` and ``batch_size`` (shown whole) hold all of theirs."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .test_doc_snippets_docsa import blocks

WHOLE = ("latency_ms", "batch_size")
"""Shown with every key (no ``...`` among them): the text names each."""
DATA = ("histogram", "signature", "input_bounds", "backend_status")
"""Keyed by the data (buckets, inputs) or elided: their keys are not compared."""


def shown_status() -> dict[str, Any]:
    (block,) = [code for code in blocks("docs/repository.md", "## Status") if '"closed"' in code]
    text = block.replace("[...]", "[]").replace("{...}", "{}")
    text = re.sub(r",\s*\.\.\.\s*(?=[}\]])", "", text)
    text = re.sub(r"\.\.\.,\s*", "", text)
    shown: dict[str, Any] = ast.literal_eval(text)
    return shown


def differences(shown: dict[str, Any], real: dict[str, Any], where: str) -> list[str]:
    found = [f"{where}.{key}: not in a real status" for key in shown if key not in real]
    if where.rsplit(".", 1)[-1] in WHOLE:
        found += [f"{where}.{key}: not shown" for key in real if key not in shown]
    for key, value in shown.items():
        if isinstance(value, dict) and isinstance(real.get(key), dict) and key not in DATA:
            found += differences(value, real[key], f"{where}.{key}")
    return found


def test_the_status_shown_is_a_real_servers(tmp_path: Path) -> None:
    models = tmp_path / "models"
    save_model(build_scale_model(2.0), models, "fraud", 2)
    with inprocserve.Server(repository=models) as server:
        for _ in range(3):
            server.predict("fraud", {"x": [[1.0, 2.0, 3.0, 4.0]]})
        (models / "fraud" / "3").mkdir()
        (models / "fraud" / "3" / "model.onnx").write_bytes(b"not a model")  # (the page's failed version 3)
        server.refresh()
        real = server.status()
    assert real["models"]["fraud"]["versions"]["3"]["state"] == "failed"
    assert differences(shown_status(), real, "status") == []
