"""A stop (Ctrl-C, SIGTERM) that lands at any point after ``quantize`` made its temporary file leaves nothing
behind in the target's folder: it was removed only by code that began after the file's making, and a
``KeyboardInterrupt`` raised between the two (the call returned, its result not yet assigned) left the hidden
``.q.onnx.<hex>.tmp`` beside the target (seen once in a loaded CI run of test_leftovers12.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inprocserve import _quantize
from inprocserve.testing import build_mlp_model, save_model

pytest.importorskip("onnxruntime.quantization")


def test_a_stop_just_after_the_quantized_file_is_made_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = save_model(build_mlp_model((8, 16, 3), seed=1), tmp_path, "mlp", 1)
    target = tmp_path / "out" / "q.onnx"
    target.parent.mkdir()
    write = _quantize._write_quantized

    def stopped_as_it_returns(*args: Any, **kwargs: Any) -> Any:
        write(*args, **kwargs)
        assert list(target.parent.iterdir()) != []  # (the file was made)
        raise KeyboardInterrupt  # (the signal's exception, raised at the next bytecode after the call)

    monkeypatch.setattr(_quantize, "_write_quantized", stopped_as_it_returns)
    with pytest.raises(KeyboardInterrupt):
        _quantize.quantize(source, target, sample_rows=4, seconds=0.01)
    assert list(target.parent.iterdir()) == []
