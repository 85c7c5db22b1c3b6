"""inprocserve.W007 under a prefix that a URL or a regular expression writes differently: the hint's exemption,
pasted into SECURE_REDIRECT_EXEMPT, lets Django's own request cycle answer the probes, and then the check is quiet."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.test import Client, override_settings
from django.urls import include, path

from inprocserve.testing import build_scale_model, save_model

SECURITY = "django.middleware.security.SecurityMiddleware"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    save_model(build_scale_model(2.0), tmp_path / "models", "fraud", 1)
    return tmp_path / "models"


@pytest.mark.parametrize(
    "prefix",
    [
        "modèles/",  # (reverse() gives it percent-encoded; SecurityMiddleware matches the decoded path)
        "c++/",  # (read as a regular expression, "c++" is no "c++")
        "api/v1.0/",
    ],
)
def test_the_hinted_exemption_answers_the_probes_under_the_prefix(
    repository: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.conf import settings as django_settings
    from inprocserve_django import reset_server

    urls = types.ModuleType("probe_redirect_urls")
    urls.urlpatterns = [path(prefix, include("inprocserve_django.urls"))]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, urls.__name__, urls)
    redirecting = {
        "MIDDLEWARE": [SECURITY, *django_settings.MIDDLEWARE],
        "SECURE_SSL_REDIRECT": True,
        "ROOT_URLCONF": urls.__name__,
        "INPROCSERVE": {"REPOSITORY": str(repository)},
    }
    ready = f"/{prefix}ready"
    with override_settings(**redirecting):
        (warned,) = [message for message in run_checks() if message.id == "inprocserve.W007"]
        assert Client().get(ready).status_code == 301
        exempt = [(warned.hint or "").split('[r"', 1)[1].split('"]', 1)[0]]
        with override_settings(SECURE_REDIRECT_EXEMPT=exempt):
            answered = Client().get(ready)
            assert (answered.status_code, exempt) == (200, exempt)
            assert [message.id for message in run_checks() if message.id == "inprocserve.W007"] == []
    reset_server()
