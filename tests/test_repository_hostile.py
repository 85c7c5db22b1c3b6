"""The model repository as CI pipelines, rsync and people with editors leave it: whatever lies there is skipped
and reported, the rest of the repository is served, and every report stays one readable line."""

from __future__ import annotations

import shutil
from pathlib import Path

from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def test_a_version_folder_of_more_than_18_digits_is_skipped_and_reported(
    repository: Path, make_server: ServerFactory
) -> None:
    """``models/fraud/1000000000000000000000000000000`` (a timestamp with its nanoseconds, a typo) became the
    default version, though no one could name it: ``/v2/models/fraud/versions/...`` takes at most 18 digits
    (400), the control file at most 2**63-1, and the OTLP exporter dropped its version attribute (past int64)."""
    model_file = save_model(build_scale_model(2.0), repository, "fraud", 1)
    huge = repository / "fraud" / str(10**30)
    huge.mkdir()
    shutil.copy(model_file, huge / "model.onnx")
    server = make_server(repository)
    assert server.models == {"fraud": [1]}
    assert server.status()["models"]["fraud"]["default_version"] == 1
    problems = server.refresh()
    assert f"{huge}: version folders must be positive integers of at most 18 digits" in "\n".join(problems)
