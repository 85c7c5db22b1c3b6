"""The status page route: through Flask's test client, and in a real headless Chromium over loopback HTTP.

The browser tests need the Debian package ``chromium`` (``make system-deps`` installs it); without it they
skip and say so. With ``INPROCSERVE_DOCS_SCREENSHOT=1`` (``make docs-screenshot``) the screenshot they take
is also written to ``docs/images/status-page.png``.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from inprocserve_flask import Inprocserve, server
from werkzeug.serving import make_server

import inprocserve
from inprocserve.testing import build_scale_model, save_model

TOKEN = "status-token-7f3a"
PAGE = "/-/inprocserve/status"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "images" / "status-page.png"


def make_app(repository: Path, **config: Any) -> Flask:
    app = Flask("shop")
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), **config)
    Inprocserve(app)
    return app


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    return folder


@pytest.fixture
def app(repository: Path) -> Iterator[Flask]:
    application = make_app(repository, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_STATUS_PAGE_TOKEN=TOKEN)
    yield application
    Inprocserve.close(application)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_worker_whose_server_cannot_be_built_answers_a_503_page(app: Flask, repository: Path) -> None:
    """The repository gone at a worker's first request (a release swapping folders): the page answered a 500
    and logged a traceback at each load. A 503 page that says so, naming no file; built once it is back."""
    moved = repository.with_name("elsewhere")
    repository.rename(moved)
    try:
        response = app.test_client().get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"})
        # (INPROCSERVE_RETRY_AFTER_S, as every other 503 of the plug-in: the page said 5 whatever it was)
        retry = inprocserve.web.retry_after(app.config["INPROCSERVE_RETRY_AFTER_S"])
        assert response.status_code == 503 and response.headers["Retry-After"] == retry != "5"
        assert response.headers["Content-Security-Policy"] == inprocserve.STATUS_PAGE_CSP
        page = response.get_data(as_text=True)
        assert inprocserve.web.NO_SERVER in page and str(repository.parent) not in page
    finally:
        moved.rename(repository)
    response = app.test_client().get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and 'id="model-scale"' in response.get_data(as_text=True)


def test_the_page_is_off_by_default(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN=TOKEN)
    assert app.test_client().get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    Inprocserve.close(app)


def test_the_page_is_never_served_without_a_token(repository: Path) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match="INPROCSERVE_STATUS_PAGE_TOKEN"):
        make_app(repository, INPROCSERVE_STATUS_PAGE=True)
    with pytest.raises(inprocserve.ConfigurationError, match="INPROCSERVE_ENDPOINTS"):
        make_app(
            repository, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_STATUS_PAGE_TOKEN=TOKEN, INPROCSERVE_ENDPOINTS=False
        )


def test_the_token_is_required_and_a_browser_is_asked_for_it(app: Flask) -> None:
    client = app.test_client()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": "Basic !!not-base64!!"},
        basic(TOKEN, ""),  # the token as the user name, not the password
    ):
        response = client.get(PAGE, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="inprocserve status"')
        assert b"scale" not in response.data
    assert client.get(f"{PAGE}?token={TOKEN}").status_code == 401  # never in a URL: logs and history keep it


def test_a_bearer_token_or_basic_credentials_open_the_page(app: Flask) -> None:
    client = app.test_client()
    with app.app_context():
        server.predict("scale", np.ones((2, 4), dtype=np.float32))
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, basic("anyone", TOKEN)):
        response = client.get(PAGE, headers=headers)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == inprocserve.STATUS_PAGE_CSP
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        page = response.get_data(as_text=True)
        assert 'id="model-scale"' in page and "inprocserve status · shop" in page
        assert "1 requests" in page  # the prediction above, in the latency chart
        repository = app.config["INPROCSERVE_REPOSITORY"]
        assert str(repository) not in page  # a status-page token is not the admin token: no file-system paths


def test_the_admin_token_opens_the_page_when_it_has_no_token_of_its_own(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_ADMIN_TOKEN="admin-token")
    assert app.test_client().get(PAGE, headers={"Authorization": "Bearer admin-token"}).status_code == 200
    Inprocserve.close(app)


# -- in a real browser -------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed: the status page's browser tests need the Debian package `chromium` "
    "(`make system-deps` installs it when run as root)",
)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # these tests may run as root in a container
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def fraud_drift_windows() -> int:
    return int(server.status()["models"]["fraud"]["versions"]["1"]["drift"]["windows"])


@pytest.fixture(scope="module")
def live_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Flask app with busy, varied models, served by werkzeug on a loopback port; yields its address."""
    folder = tmp_path_factory.mktemp("live") / "models"
    for version, factor in ((1, 2.0), (2, 2.0), (3, 2.2)):
        save_model(build_scale_model(factor), folder, "fraud", version)
        save_model(build_scale_model(factor), folder, "ranker", version)
    broken = folder / "fraud" / "4" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"truncated upload")
    rollout = inprocserve.RolloutConfig
    models = {
        "fraud": inprocserve.ModelConfig(
            rollout=rollout(
                strategy="canary",
                stable=1,
                canary=inprocserve.CanaryConfig(version=2, percent=20),
                shadow=inprocserve.ShadowConfig(versions=(3,)),
            ),
            drift=inprocserve.DriftConfig(capture_reference=300, window=300),
        ),
        "ranker": inprocserve.ModelConfig(
            rollout=rollout(
                strategy="bandit",
                variants={"control": {"version": 1}, "wide": {"version": 2}, "deep": {"version": 3}},
                seed=5,
            )
        ),
    }
    app = make_app(folder, INPROCSERVE_MODELS=models, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_STATUS_PAGE_TOKEN=TOKEN)
    rng = np.random.default_rng(11)
    with app.app_context():
        for user in range(400):
            rows = rng.normal(size=(1 + user % 4, 4)).astype(np.float32)
            if user >= 250:
                rows[:, 0] += 2.0  # the first feature drifts
            server.predict("fraud", rows, context={"user_id": str(user)})
            result = server.predict("ranker", rows, context={"user_id": str(user)})
            rate = {"control": 0.2, "wide": 0.3, "deep": 0.5}[result.variant]
            server.record_outcome(result.request_id, float(rng.random() < rate), model="ranker")
        deadline = time.monotonic() + 10  # drift windows are scored on a background thread
        while time.monotonic() < deadline and not fraud_drift_windows():
            # a fast machine may finish the loop before a window fills: feed version 1 until one is scored
            rows = rng.normal(size=(4, 4)).astype(np.float32)
            rows[:, 0] += 2.0  # drifted, like the late users above
            server.predict("fraud", rows, version=1)
            time.sleep(0.01)
        assert fraud_drift_windows(), "no drift window was scored"
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=http.serve_forever, kwargs={"poll_interval": 0.05}, name="status-page-http", daemon=True
    )
    thread.start()
    yield f"127.0.0.1:{http.port}"
    http.shutdown()
    thread.join(timeout=10)
    http.server_close()
    Inprocserve.close(app)


@needs_chromium
def test_chromium_renders_the_page_with_every_model(live_page: str, tmp_path: Path) -> None:
    # The token travels as Basic credentials: Chromium answers the page's challenge with them.
    result = chromium(tmp_path, "--dump-dom", f"http://status:{TOKEN}@{live_page}{PAGE}")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for model in ("fraud", "ranker"):
        assert f'id="model-{model}"' in dom
    assert "Canary: 20 % of targeting keys go to version 2" in dom
    assert "Bandit arm shares" in dom and "Shadow agreement" in dom and "PSI per feature" in dom
    assert dom.count("<svg") >= 10
    assert "truncated upload" in dom or "failed" in dom  # the broken version 4 and why


@needs_chromium
def test_chromium_without_the_token_gets_nothing(live_page: str, tmp_path: Path) -> None:
    for url in (f"http://{live_page}{PAGE}", f"http://status:wrong@{live_page}{PAGE}"):
        result = chromium(tmp_path, "--dump-dom", url)
        assert 'id="model-fraud"' not in result.stdout


@needs_chromium
def test_chromium_takes_a_screenshot_for_the_docs(live_page: str, tmp_path: Path) -> None:
    shot = tmp_path / "status-page.png"
    result = chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", f"http://status:{TOKEN}@{live_page}{PAGE}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 1600)
    assert len(data) > 50_000  # charts and tables; a blank or error page compresses to a few kB
    if os.environ.get("INPROCSERVE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_rows_per_batch_counts_the_runs_whose_rows_it_counts(repository: Path) -> None:
    # The page divided the rows of the batches that succeeded by every run, failed runs too: one batch of 4 rows
    # and three requests that failed in onnxruntime showed "1" row per batch. Both count every run now (the
    # batch-size chart's: 4 runs of 7 rows), as each slice of a request larger than max_batch_size is a run
    from inprocserve.testing import build_gather_model

    save_model(build_gather_model(table_rows=10), repository, "gather", 1)
    app = make_app(repository, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_STATUS_PAGE_TOKEN=TOKEN)
    try:
        with app.app_context():
            server.predict("gather", {"index": np.array([1, 2, 3, 4], dtype=np.int64)})
            for _ in range(3):
                with pytest.raises(inprocserve.InferenceError):
                    server.predict("gather", {"index": np.array([99], dtype=np.int64)})
        page = app.test_client().get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
    finally:
        Inprocserve.close(app)
    section = page[page.index('id="model-gather"') :]
    row = section[section.index("<tr><td>v1") : section.index("</tr>", section.index("<tr><td>v1"))]
    cells = row.split('<td class="n">')[1:]
    answered, errors, batches, rows_per_batch = (cells[i].split("</td>")[0] for i in (0, 1, 5, 6))
    assert (answered, errors) == ("1", "3"), row
    assert (batches, rows_per_batch) == ("4", "1.8"), row  # (4 + 1 + 1 + 1) / 4


def test_a_canary_stop_on_an_ab_test_does_not_badge_the_model_as_back_on_one_version(repository: Path) -> None:
    # The on-call step for a bad canary (`{"version": null}`) on a model running an A/B test: both arms keep
    # answering, and the page's badge said "canary stopped (control file)" as if one version answered.
    save_model(build_scale_model(3.0), repository, "scale", 2)
    (repository / "scale" / "config.toml").write_text(
        '[rollout]\nstrategy = "ab"\n\n[rollout.variants.control]\nversion = 1\nweight = 50\n\n'
        "[rollout.variants.bigger]\nversion = 2\nweight = 50\n"
    )
    app = make_app(repository, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_ADMIN_TOKEN="admin-token")
    client = app.test_client()
    admin = {"Authorization": "Bearer admin-token"}
    try:
        stopped = client.post("/-/inprocserve/models/scale/canary", json={"version": None}, headers=admin)
        assert (stopped.status_code, stopped.json["canary_off"]) == (200, True)
        with app.app_context():
            rows = np.ones((1, 4), np.float32)
            answered = {server.predict("scale", rows, context={"user_id": f"u{n}"}).version for n in range(100)}
        assert answered == {1, 2}
        page = client.get(PAGE, headers=admin).get_data(as_text=True)
    finally:
        Inprocserve.close(app)
    section = page[page.index('id="model-scale"') :]
    heading = section[: section.index("</h2>")]
    assert "canary stopped; arms still answer (control file)" in heading
    assert "canary stopped (control file)" not in page
    assert "A/B test, sticky per targeting key" in section and "its arms still answer" in section
