"""inprocserve's spans under the request spans of the OpenTelemetry instrumentations of Flask, Django and
ASGI (opentelemetry-python-contrib), as docs/otel-instrumentation.md says they nest.

The instrumentations pin exact OpenTelemetry API and semantic-convention versions that the main venv's newest
SDK does not take, so the apps run in a venv of their own, made by ``make otel-instrumentation-venv`` with
the one pip command the page gives (``make test`` makes it and points INPROCSERVE_OTEL_INSTRUMENTATION_PYTHON
at it); without it these tests skip and say so. The apps are the page's scripts, docs/otel/flask_check.py,
docs/otel/django_check.py and docs/otel/shadow_check.py (real Flask and Django apps, real request cycles, real
onnxruntime, spans collected in memory), run on this working tree's packages (PYTHONPATH) on models built here:
one process for Flask, two for Django (whether the ASGI instrumentation is importable is decided once per
process), one for the shadow spans under both (and the copies dropped, from the metrics, collected in memory).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inprocserve.testing import build_scale_model, save_model

from .conftest import build_busy_model

ROOT = Path(__file__).resolve().parent.parent
# absolute, not resolved: the venv's python is a link to the base interpreter
PYTHON = Path(
    os.environ.get("INPROCSERVE_OTEL_INSTRUMENTATION_PYTHON", ROOT / ".venv-otelinst" / "bin" / "python")
).absolute()
PAGE = ROOT / "docs" / "otel-instrumentation.md"

pytestmark = pytest.mark.skipif(
    not PYTHON.is_file(),
    reason=f"the OpenTelemetry instrumentations' venv is missing ({PYTHON}); run `make otel-instrumentation-venv` "
    "(make test does) to test inprocserve's spans under Flask's and Django's request spans",
)


@dataclass(frozen=True)
class Span:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    links: tuple[str, ...]
    attributes: dict[str, Any]


class Run:
    """The finished spans of one run of a check script."""

    def __init__(self, spans: list[dict[str, Any]]) -> None:
        self.spans = [Span(**{**span, "links": tuple(span["links"])}) for span in spans]
        self._by_id = {span.span_id: span for span in self.spans}

    def named(self, name: str) -> list[Span]:
        return [span for span in self.spans if span.name == name]

    def parent(self, span: Span) -> Span | None:
        """The span's parent; a parent id that no finished span has fails (the span points out of the run)."""
        if span.parent_id is None:
            return None
        assert span.parent_id in self._by_id, f"{span.name}'s parent is no span of this run"
        return self._by_id[span.parent_id]

    def name_and_parent(self) -> set[tuple[str, str | None]]:
        """Each span's name with its parent's name (``None``: a root), as the page's table lists them."""
        return {(span.name, getattr(self.parent(span), "name", None)) for span in self.spans}


def run_check(script: str, models: Path, *args: str) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}  # the SDK's defaults
    env["PYTHONPATH"] = os.pathsep.join(
        str(ROOT / folder) for folder in (".", "integrations/flask/src", "integrations/django/src")
    )
    done = subprocess.run(
        [str(PYTHON), str(ROOT / "docs" / "otel" / script), str(models), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("models")
    save_model(build_busy_model(512), repository, "busy", 1)  # slow enough per row to keep its session busy
    save_model(build_scale_model(), repository, "scale", 1)
    return repository


@pytest.fixture(scope="module")
def flask_run(models: Path) -> Run:
    result = run_check("flask_check.py", models)
    assert result["statuses"] == [200] * 7
    return Run(result["spans"])


@pytest.fixture(scope="module")
def django_runs(models: Path) -> dict[str, Run]:
    result = run_check("django_check.py", models)
    assert {run: answer["status"] for run, answer in result.items()} == dict.fromkeys(
        ("wsgi", "asgi", "asgi-middleware"), 200
    )
    return {run: Run(answer["spans"]) for run, answer in result.items()}


@pytest.fixture(scope="module")
def django_runs_without_asgi(models: Path) -> dict[str, Run]:
    result = run_check("django_check.py", models, "--without-asgi-instrumentation")
    assert {run: answer["status"] for run, answer in result.items()} == {"wsgi": 200, "asgi": 200}
    return {run: Run(answer["spans"]) for run, answer in result.items()}


def test_each_flask_requests_predict_span_is_a_child_of_its_request_span(flask_run: Run) -> None:
    requests = flask_run.named("POST /score")
    predicts = flask_run.named("inprocserve.predict")
    assert len(requests) == len(predicts) == 7
    assert {request.kind for request in requests} == {"SERVER"}
    parents = [flask_run.parent(predict) for predict in predicts]
    assert sorted(parent.span_id for parent in parents if parent is not None) == sorted(r.span_id for r in requests)
    for predict, parent in zip(predicts, parents, strict=True):
        assert parent is not None and predict.trace_id == parent.trace_id


def test_the_batch_that_merged_flask_requests_links_to_their_predict_spans(flask_run: Run) -> None:
    (batch,) = flask_run.named("inprocserve.batch")  # the six one-row requests that queued behind the big one
    assert batch.parent_id is None  # one batch serves many traces: links, not a parent
    predicts = {span.span_id: span for span in flask_run.named("inprocserve.predict")}
    assert len(set(batch.links)) == 6
    assert set(batch.links) <= set(predicts)
    # each linked request is in the trace of its own Flask request: six traces
    linked_parents = [flask_run.parent(predicts[link]) for link in batch.links]
    assert {getattr(parent, "name", None) for parent in linked_parents} == {"POST /score"}
    assert len({predicts[link].trace_id for link in batch.links}) == 6


@pytest.mark.parametrize("run", ["wsgi", "asgi", "asgi-middleware"])
def test_a_django_predict_span_is_a_child_of_djangos_request_span(django_runs: dict[str, Run], run: str) -> None:
    spans = django_runs[run]
    (predict,) = spans.named("inprocserve.predict")
    parent = spans.parent(predict)
    assert parent is not None and parent.name == ("GET score" if run == "wsgi" else "GET ascore")
    assert predict.trace_id == parent.trace_id
    # under the ASGI middleware the server's span is the root and Django's is its child
    assert parent.kind == ("INTERNAL" if run == "asgi-middleware" else "SERVER")


def test_an_async_django_view_without_the_asgi_instrumentation_gets_no_request_span(
    django_runs_without_asgi: dict[str, Run],
) -> None:
    assert django_runs_without_asgi["wsgi"].name_and_parent() == {
        ("GET score", None),
        ("inprocserve.predict", "GET score"),
    }
    assert django_runs_without_asgi["asgi"].name_and_parent() == {("inprocserve.predict", None)}


def table_row(run: str) -> list[str]:
    """The cells of the page's table row for ``run`` (its first column)."""
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] == run:
            return cells
    raise AssertionError(f"{PAGE.name} has no table row for {run!r}")


def documented(run: str) -> set[tuple[str, str | None]]:
    """The spans the page's tables list for ``run`` (its first column), as (name, parent name) pairs."""
    pairs = re.findall(r"`([^`]+)` \((?:root|`([^`]+)`)\)", table_row(run)[1])
    return {(name, parent or None) for name, parent in pairs}


@pytest.mark.parametrize(
    ("row", "fixture", "run"),
    [
        ("Flask: 7 requests, 6 merged into one batch", "flask_run", None),
        ("Django, WSGI", "django_runs", "wsgi"),
        ("Django, ASGI", "django_runs", "asgi"),
        ("Django, ASGI, without the ASGI instrumentation", "django_runs_without_asgi", "asgi"),
        ("Django, ASGI, in `OpenTelemetryMiddleware`", "django_runs", "asgi-middleware"),
    ],
)
def test_the_pages_table_lists_the_spans_each_run_makes(
    request: pytest.FixtureRequest, row: str, fixture: str, run: str | None
) -> None:
    made = request.getfixturevalue(fixture)
    spans = made if run is None else made[run]
    assert spans.name_and_parent() == documented(row)


# Shadow spans: docs/otel/shadow_check.py's runs, and the page's "Shadow spans" table

SHADOW_ROWS = {  # the run in shadow_check.py's output: its row in the page's table
    "flask": "Flask, a shadowed model",
    "wsgi": "Django, WSGI, a shadowed model",
    "asgi": "Django, ASGI, a shadowed model",
    "asgi-middleware": "Django, ASGI, in `OpenTelemetryMiddleware`, a shadowed model",
    "flask-over-budget": "Flask, 2 requests, the second's copy over budget",
    "flask-busy": "Flask, 3 requests, a queue of one copy, then the shadow version busy",
}
OBSERVABILITY = ROOT / "docs" / "observability.md"


class ShadowRun(Run):
    """The finished spans of one run of docs/otel/shadow_check.py, and the copies it dropped."""

    def __init__(self, spans: list[dict[str, Any]], dropped: dict[str, int]) -> None:
        super().__init__(spans)
        self.dropped = dropped

    def requests(self) -> list[Span]:
        """The ``inprocserve.predict`` spans of the web requests (children of the framework's span), in the
        order they were answered (the exporter's order: spans in the order they ended)."""
        return [span for span in self.named("inprocserve.predict") if span.parent_id is not None]

    def shadows(self) -> list[tuple[int, str]]:
        """Each shadow span as the page's table says it: the number of the request it links to, and whether
        it holds a comparison or says the copy was dropped."""
        numbers = {span.span_id: number for number, span in enumerate(self.requests(), start=1)}
        made = []
        for shadow in self.named("inprocserve.shadow"):
            compared = "inprocserve.shadow.max_abs_diff" in shadow.attributes
            dropped = shadow.attributes.get("inprocserve.shadow.dropped") is True
            state = "compared" if compared and not dropped else "dropped" if dropped and not compared else "neither"
            made.append((numbers.get(shadow.links[0], 0) if len(shadow.links) == 1 else 0, state))
        return made


@pytest.fixture(scope="module")
def shadow_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``shadowed`` (version 2 answers twice version 1's: a difference of 1 on ones) and ``held`` (slow
    enough per row that a 4000-row request keeps version 2's one session busy), each shadowing 1 with 2."""
    repository = tmp_path_factory.mktemp("shadow-models")
    save_model(build_scale_model(1.0), repository, "shadowed", 1)
    save_model(build_scale_model(2.0), repository, "shadowed", 2)
    for version in (1, 2):
        save_model(build_busy_model(512), repository, "held", version)
    for model in ("shadowed", "held"):
        (repository / model / "config.toml").write_text("[rollout]\nstable = 1\n\n[rollout.shadow]\nversions = [2]\n")
    return repository


@pytest.fixture(scope="module")
def shadow_runs(shadow_models: Path) -> dict[str, ShadowRun]:
    result = run_check("shadow_check.py", shadow_models)
    statuses = {run: answer["statuses"] for run, answer in result.items()}
    assert statuses == {**{run: [200] for run in SHADOW_ROWS}, "flask-over-budget": [200] * 2, "flask-busy": [200] * 3}
    return {run: ShadowRun(answer["spans"], answer["dropped"]) for run, answer in result.items()}


@pytest.mark.parametrize("run", list(SHADOW_ROWS))
def test_each_shadow_span_is_a_root_in_a_trace_of_its_own_linked_to_its_requests_predict_span(
    shadow_runs: dict[str, ShadowRun], run: str
) -> None:
    spans = shadow_runs[run]
    requests = {span.span_id: span for span in spans.requests()}
    shadows = spans.named("inprocserve.shadow")
    assert shadows
    for shadow in shadows:
        assert shadow.parent_id is None, f"{run}: the shadow span is a child of {spans.parent(shadow)}"
        assert len(shadow.links) == 1 and shadow.links[0] in requests, f"{run}: shadow span's links {shadow.links}"
        mirrored = requests[shadow.links[0]]
        assert mirrored.trace_id != shadow.trace_id
        # a trace of its own: no span of the request (nor of any other) is in the shadow's trace
        assert [span.name for span in spans.spans if span.trace_id == shadow.trace_id] == ["inprocserve.shadow"]
        # the request it mirrors is in the trace of its web request
        request_span = spans.parent(mirrored)
        assert request_span is not None and request_span.trace_id == mirrored.trace_id


def listed_shadow_attributes() -> set[str]:
    """The keys docs/observability.md's span attribute table lists on shadow spans (``.x`` after a key is
    ``x`` in that key's namespace)."""
    keys: set[str] = set()
    for line in OBSERVABILITY.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] == "shadow":
            names = re.findall(r"`([^`]+)`", cells[0])
            namespace = names[0].rsplit(".", 1)[0]
            keys.update(name if not name.startswith(".") else namespace + name for name in names)
    assert keys, f"{OBSERVABILITY.name} lists no shadow span attributes"
    return keys


@pytest.mark.parametrize("run", ["flask", "wsgi", "asgi", "asgi-middleware", "flask-busy"])
def test_a_shadow_span_carries_the_attributes_the_pages_list_for_shadows(
    shadow_runs: dict[str, ShadowRun], run: str
) -> None:
    listed = listed_shadow_attributes()
    dropped_key = "inprocserve.shadow.dropped"
    model = "held" if run == "flask-busy" else "shadowed"
    compared, *dropped = shadow_runs[run].named("inprocserve.shadow")
    # the model's name, as on every span; the version it ran as inprocserve.shadow.version, not as the model's
    assert set(compared.attributes) == {"inprocserve.model.name"} | listed - {dropped_key}
    assert compared.attributes["inprocserve.model.name"] == model
    assert compared.attributes["inprocserve.shadow.version"] == 2
    assert compared.attributes["inprocserve.shadow.max_abs_diff"] == (0.0 if model == "held" else 1.0)
    assert compared.attributes["inprocserve.shadow.label_agreement"] == 1.0
    for span in dropped:  # (flask-busy's second copy: found no spare capacity)
        assert span.attributes == {"inprocserve.model.name": model, "inprocserve.shadow.version": 2, dropped_key: True}


@pytest.mark.parametrize(("run", "row"), list(SHADOW_ROWS.items()))
def test_the_pages_shadow_table_lists_the_spans_links_and_dropped_copies_each_run_makes(
    shadow_runs: dict[str, ShadowRun], run: str, row: str
) -> None:
    spans = shadow_runs[run]
    listed_shadows, listed_dropped = table_row(row)[2:]
    assert spans.name_and_parent() == documented(row)
    shadows = [(int(number), state) for number, state in re.findall(r"request (\d+), (\w+)", listed_shadows)]
    assert spans.shadows() == shadows
    dropped = {why: int(count) for why, count in re.findall(r"`(\w+)` (\d+)", listed_dropped)}
    assert spans.dropped == dropped
