"""Claims of docs/batching.md, flask.md and django.md checked against the code that makes them true: the rows a
version that never merges takes, the headers of the plug-ins' answers, the ``~`` of a repository setting, and the
``SECURE_REDIRECT_EXEMPT`` pattern that keeps the probes on plain HTTP."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.test import Client, override_settings
from flask import Flask
from inprocserve_django import reset_server
from inprocserve_flask import Inprocserve
from onnx import TensorProto, helper

import inprocserve
from inprocserve import BatchingConfig, InvalidInputError, ModelConfig, web
from inprocserve.testing import build_scale_model, save_model

ROOT = Path(__file__).resolve().parent.parent


def doc(name: str) -> str:
    """docs/NAME with its line breaks and runs of spaces made single spaces (a phrase may wrap anywhere)."""
    return re.sub(r"\s+", " ", (ROOT / "docs" / name).read_text())


def paragraph(name: str, start: str) -> str:
    """The paragraph of docs/NAME that holds ``start``, up to its first blank line."""
    text = (ROOT / "docs" / name).read_text()
    begin = text.index(start)
    end = text.find("\n\n", begin)
    return re.sub(r"\s+", " ", text[begin : end if end >= 0 else None])


# -- batching.md: the rows of a version that never merges ------------------------------------------------------------


def _add(axis: str | None) -> onnx.ModelProto:
    """``y = a + b``, each ``[axis, 4]`` (``None``: axis 0 unnamed): ``a`` of 1 row broadcasts over ``b``'s rows."""
    v = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [v("a", TensorProto.FLOAT, [axis, 4]), v("b", TensorProto.FLOAT, [axis, 4])],
        [v("y", TensorProto.FLOAT, [axis, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


FEEDS = {"a": np.ones((1, 4), np.float32), "b": np.ones((3, 4), np.float32)}


def _never_merged(tmp_path: Path, axis: str | None) -> inprocserve.Server:
    save_model(_add(axis), tmp_path / "models", "m", 1)
    config = ModelConfig(batching=BatchingConfig(rows_independent="no"))
    return inprocserve.Server(tmp_path / "models", config=config, strict=True)


def test_a_version_never_merged_takes_unnamed_axes_0_of_other_rows(tmp_path: Path) -> None:
    with _never_merged(tmp_path, None) as server:
        assert np.asarray(server.predict("m", FEEDS)["y"]).shape == (3, 4)
    assert "`a[?, 4]` of 1 row beside `b[?, 4]` of 3" in doc("batching.md")


def test_batching_md_quotes_the_refusal_of_inputs_whose_axis_0_shares_a_name(tmp_path: Path) -> None:
    with _never_merged(tmp_path, "batch") as server, pytest.raises(InvalidInputError) as refused:
        server.predict("m", FEEDS)
    message = str(refused.value).split(": ", 1)[1]  # (after "model 'm' version 1")
    assert message.startswith("dimension 'batch' must be the same in every input")
    assert f"`{message}`" in doc("batching.md")


# -- flask.md, django.md: the headers of the answers -----------------------------------------------------------------


def named_headers(text: str) -> dict[str, str]:
    """The ``Name: value`` headers a text names in backquotes."""
    return dict(re.findall(r"`([A-Z][A-Za-z-]+): ([^`]+)`", text))


def _same(shown: Mapping[str, str], real: Mapping[str, str]) -> None:
    assert shown == {name: value for name, value in real.items() if name in shown}
    assert set(shown) == set(real)


@pytest.mark.parametrize("page", ["flask.md", "django.md"])
def test_the_json_answers_headers_are_the_ones_the_plug_ins_send(page: str) -> None:
    text = paragraph(page, "Every JSON answer of the endpoints")
    everywhere, private = text.split(", and those of ", 1)
    _same(named_headers(everywhere), web.ANSWER_HEADERS)
    _same({**named_headers(everywhere), **named_headers(private)}, web.PRIVATE_ANSWER_HEADERS)


PLAIN = {"Content-Type", "Content-Length", "WWW-Authenticate", "Vary"}
"""Headers of the status page's 401 that are not the page's own protections."""


def _flask_status_page_401(repository: Path) -> dict[str, str]:
    app = Flask("walk")
    app.config.update(INPROCSERVE_REPOSITORY=os.fspath(repository), INPROCSERVE_STATUS_PAGE=True)
    app.config["INPROCSERVE_STATUS_PAGE_TOKEN"] = "walk-token"
    Inprocserve(app)
    answer = app.test_client().get("/-/inprocserve/status")
    assert answer.status_code == 401
    return {name: value for name, value in answer.headers.items() if name not in PLAIN}


def _django_status_page_401(repository: Path) -> dict[str, str]:
    settings = {"REPOSITORY": os.fspath(repository), "STATUS_PAGE": True, "STATUS_PAGE_TOKEN": "walk-token"}
    with override_settings(INPROCSERVE=settings):
        answer = Client().get("/-/inprocserve/status")
    reset_server()
    assert answer.status_code == 401
    return {name: value for name, value in answer.items() if name not in PLAIN}


@pytest.mark.parametrize(
    ("page", "start", "answer"),
    [
        ("flask.md", "Its answers, the 401 included", _flask_status_page_401),
        ("django.md", "Its answers, the 401 included", _django_status_page_401),
    ],
)
def test_the_status_page_headers_are_the_ones_its_401_sends(
    page: str, start: str, answer: Callable[[Path], dict[str, str]], tmp_path: Path
) -> None:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    real = answer(tmp_path / "models")
    text = paragraph(page, start)
    # The policy is named, its value is inprocserve.STATUS_PAGE_CSP
    assert "`Content-Security-Policy`" in text and real["Content-Security-Policy"] == inprocserve.STATUS_PAGE_CSP
    _same({**named_headers(text), "Content-Security-Policy": inprocserve.STATUS_PAGE_CSP}, real)


# -- flask.md, django.md: a repository setting that begins with ~ ----------------------------------------------------


def _fix_named(message: str) -> str:
    """The expression a refusal of ``~/models`` says to write, as the docs quote it (double quotes)."""
    found = re.search(r"(?:Path|os\.path\.expanduser)\('~/models'\)(?:\.expanduser\(\))?", message)
    assert found is not None, message
    return found.group(0).replace("'", '"')


def _row(page: str, key: str) -> str:
    (line,) = [line for line in (ROOT / "docs" / page).read_text().splitlines() if line.startswith(f"| `{key}` |")]
    return line


def test_the_repository_rows_say_what_the_refusal_of_a_tilde_says_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # (no ~ folder here: the path is read from the working directory)
    app = Flask("walk")
    app.config["INPROCSERVE_REPOSITORY"] = "~/models"
    with pytest.raises(inprocserve.ConfigurationError) as refused:
        Inprocserve(app)
    assert f"`{_fix_named(str(refused.value))}`" in _row("flask.md", "INPROCSERVE_REPOSITORY")

    with override_settings(INPROCSERVE={"REPOSITORY": "~/models"}):
        (error,) = [message for message in run_checks() if message.id == "inprocserve.E001"]
    assert f"`{_fix_named(error.hint or '')}`" in _row("django.md", "REPOSITORY")


# -- django.md: SECURE_REDIRECT_EXEMPT for the probes ----------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[None]:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    (pattern,) = re.findall(r'SECURE_REDIRECT_EXEMPT = \[r"([^"]+)"\]', doc("django.md"))
    with override_settings(
        MIDDLEWARE=["django.middleware.security.SecurityMiddleware", *django_settings.MIDDLEWARE],
        SECURE_SSL_REDIRECT=True,
        SECURE_REDIRECT_EXEMPT=[pattern],
        INPROCSERVE={"REPOSITORY": os.fspath(tmp_path / "models")},
    ):
        yield
    reset_server()


@pytest.mark.usefixtures("served")
def test_django_mds_redirect_exemption_keeps_the_probes_on_http_and_only_them() -> None:
    client = Client()
    for probe in ("health", "ready"):
        answer = client.get(f"/-/inprocserve/{probe}")
        assert answer.status_code == 200, (probe, answer.status_code, answer.get("Location"))
    moved = client.get("/-/inprocserve/models")
    assert (moved.status_code, moved["Location"]) == (301, "https://testserver/-/inprocserve/models")
    assert client.get("/-/inprocserve/models", secure=True).status_code == 200
