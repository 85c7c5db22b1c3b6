"""The Django app through real Django request cycles (test client), checks and management commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from inprocserve_django import get_server, reset_server

import inprocserve
from inprocserve.testing import build_scale_model, save_model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), folder, "scale", version)
    return folder


@pytest.fixture
def served(repository: Path) -> Iterator[Path]:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        yield repository
    reset_server()


def post(client: Client, url: str, rows: Any, **headers: str) -> Any:
    return client.post(url, data=json.dumps({"rows": rows}), content_type="application/json", headers=headers)


def test_a_sync_view_predicts(served: Path) -> None:
    response = post(Client(), "/score", [[1, 2, 3, 4]])
    assert response.status_code == 200
    assert response.json() == {"y": [[2.0, 4.0, 6.0, 8.0]], "version": 2, "variant": "default"}


def test_an_async_view_uses_apredict(served: Path) -> None:
    response = post(Client(), "/ascore", [[1, 1, 1, 1], [2, 2, 2, 2]])
    assert response.status_code == 200
    assert response.json()["y"] == [[2.0] * 4, [4.0] * 4]


def test_errors_become_http_responses(served: Path) -> None:
    client = Client()
    bad = post(client, "/score", [[1, 2]])
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_input" and "input 'x'" in bad.json()["message"]
    assert client.get("/unknown").status_code == 404
    late = post(client, "/score", [[1, 1, 1, 1]], **{"X-Request-Timeout-Ms": "0"})
    assert late.status_code == 504


def canary(repository: Path) -> dict[str, Any]:
    config = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(),
        rollout=inprocserve.RolloutConfig(strategy="canary", stable=1, candidate=2, canary_percent=50),
    )
    return {"REPOSITORY": str(repository), "CONFIG": config}


@pytest.mark.django_db
def test_the_logged_in_user_decides_the_canary(repository: Path) -> None:
    with override_settings(INPROCSERVE=canary(repository)):
        try:
            versions = set()
            for i in range(20):
                user = User.objects.create_user(username=f"user{i}")
                client = Client()
                client.force_login(user)
                answers = {post(client, "/score", [[1, 1, 1, 1]]).json()["version"] for _ in range(3)}
                assert len(answers) == 1  # sticky per user
                versions |= answers
            assert versions == {1, 2}
        finally:
            reset_server()


def test_anonymous_requests_use_the_user_header(repository: Path) -> None:
    with override_settings(INPROCSERVE=canary(repository)):
        try:
            client = Client()
            for user in ("a", "b", "c", "d", "e"):
                answers = {
                    post(client, "/score", [[1, 1, 1, 1]], **{"X-User-Id": user}).json()["version"] for _ in range(3)
                }
                assert len(answers) == 1
        finally:
            reset_server()


def test_health_ready_and_models_urls(served: Path) -> None:
    client = Client()
    assert client.get("/-/inprocserve/health").json() == {"status": "ok"}
    assert client.get("/-/inprocserve/ready").json() == {"ready": True, "models": ["scale"]}
    assert client.get("/-/inprocserve/models").json()["models"]["scale"]["default_version"] == 2


def test_ready_is_503_for_a_broken_model(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "broken" / "1").mkdir(parents=True)
    (folder / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    with override_settings(INPROCSERVE={"REPOSITORY": str(folder)}):
        try:
            response = Client().get("/-/inprocserve/ready")
            assert response.status_code == 503 and "cannot load" in response.json()["models"]["broken"]
        finally:
            reset_server()


def test_changing_settings_rebuilds_the_server(repository: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    save_model(build_scale_model(5.0), other, "scale", 7)
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        first = get_server()
        assert first.models == {"scale": [2]}
        with override_settings(INPROCSERVE={"REPOSITORY": str(other)}):
            assert get_server().models == {"scale": [7]}
        assert get_server() is not first  # closed and rebuilt on the way back too
    reset_server()


def check_ids(settings: dict[str, Any]) -> list[str]:
    with override_settings(INPROCSERVE=settings):
        return sorted(message.id for message in run_checks() if message.id and message.id.startswith("inprocserve"))


def test_system_checks(repository: Path, tmp_path: Path) -> None:
    assert check_ids({"REPOSITORY": str(repository)}) == []
    assert check_ids({"REPOSITORY": str(tmp_path / "missing")}) == ["inprocserve.E001"]
    assert check_ids({"REPOSITORY": str(repository), "MODELS": {"fraud": inprocserve.ModelConfig()}}) == [
        "inprocserve.E002"
    ]
    assert check_ids({"REPOSITORY": str(repository), "CONFIG": {"batching": {"max_batch_size": 0}}}) == [
        "inprocserve.E003"
    ]
    assert check_ids({"REPOSITORY": str(repository), "BATCH": 3}) == ["inprocserve.E004"]
    assert check_ids({}) == ["inprocserve.W001"]


def test_management_commands(served: Path) -> None:
    out = StringIO()
    call_command("inprocserve_status", stdout=out)
    assert json.loads(out.getvalue())["models"]["scale"]["ready"] is True
    out = StringIO()
    call_command("inprocserve_warmup", stdout=out)
    assert "ready   scale (versions 2)" in out.getvalue()


def test_warmup_command_fails_for_a_broken_model(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "broken" / "1").mkdir(parents=True)
    (folder / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    with override_settings(INPROCSERVE={"REPOSITORY": str(folder)}):
        try:
            with pytest.raises(CommandError, match="broken"):
                call_command("inprocserve_warmup", stdout=StringIO())
        finally:
            reset_server()
