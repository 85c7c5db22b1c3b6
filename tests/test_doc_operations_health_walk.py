"""docs/operations.md, "Health": the fields of ``inprocserve.web.Readiness`` it lists are all of them, and the
``/ready`` answers it quotes for a worker still warming and one whose server could not be built are the Flask
plug-in's."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from flask import Flask
from inprocserve_flask import Inprocserve

from inprocserve.testing import build_scale_model, save_model
from inprocserve.web import Readiness

from .test_doc_snippets_docsa import section

PID = 4711  # (the page's worker)


def health() -> str:
    return " ".join(section("docs/operations.md", "## Health").split("### Your own web integration")[0].split())


def quoted_answer(key: str) -> dict[str, object]:
    """The page's ``/ready`` body holding ``"<key>"``, parsed."""
    (body,) = [text for text in re.findall(r"`(\{\"ready\": false, [^`]*\})`", health()) if f'"{key}"' in text]
    answer: dict[str, object] = json.loads(body)
    return answer


def test_every_field_of_readiness_is_named() -> None:
    text = health()
    missing = [field.name for field in dataclasses.fields(Readiness) if f"`{field.name}`" not in text]
    assert not missing, f"docs/operations.md, Health, does not name Readiness's {missing}"


def test_the_warming_answer_is_the_probes() -> None:
    assert quoted_answer("warming") == {**Readiness.warming_up().body(), "worker": PID}


def test_the_answer_of_a_worker_whose_server_could_not_be_built_is_the_flask_plugins(tmp_path: Path) -> None:
    models = tmp_path / "models"
    save_model(build_scale_model(1.0), models, "fraud", 1)
    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = str(models)
    Inprocserve(app)
    models.rename(tmp_path / "away")  # (the folder gone before the worker's first request builds its server)
    answer = app.test_client().get("/-/inprocserve/ready")
    assert answer.status_code == 503
    assert {**answer.get_json(), "worker": PID} == quoted_answer("error")
    assert answer.get_json()["worker"] == os.getpid()
