"""System checks on the settings a newcomer writes from docs/repository.md and django.md: each hint says how
to fix the setting (a config.toml-shaped dict in ``MODELS`` or ``CONFIG``, a required model's name typed wrong).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from inprocserve.testing import build_scale_model, save_model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    save_model(build_scale_model(2.0), tmp_path / "models", "fraud", 1)
    return tmp_path / "models"


def hints(settings: dict[str, Any], check: str) -> list[str]:
    with override_settings(INPROCSERVE=settings):
        return [message.hint or "" for message in run_checks() if message.id == check]


@pytest.mark.parametrize(("key", "check"), [("MODELS", "inprocserve.E006"), ("CONFIG", "inprocserve.E003")])
def test_a_config_toml_shaped_dict_is_pointed_at_model_config_merged(repository: Path, key: str, check: str) -> None:
    """A dict shaped like config.toml (what repository.md shows) got "Build it with
    inprocserve.ModelConfig(...)": the Flask plug-in's message names ModelConfig().merged({...}), which takes
    that dict as it is."""
    table = {"batching": {"max_batch_size": 8}}
    value = {"fraud": table} if key == "MODELS" else table
    (hint,) = hints({"REPOSITORY": str(repository), key: value}, check)
    assert "inprocserve.ModelConfig().merged(" in hint, hint


def test_a_required_model_not_in_the_repository_names_the_models_found(repository: Path) -> None:
    (hint,) = hints({"REPOSITORY": str(repository), "REQUIRED_MODELS": ["frad"]}, "inprocserve.E002")
    assert "Models found: fraud" in hint, hint


def test_the_status_pages_401_says_how_to_send_the_token(repository: Path) -> None:
    """A token in the query string is refused, as django.md says: the 401 said only that the page needs
    its token, which reads as a wrong token, not as one sent the wrong way."""
    from django.test import Client
    from inprocserve_django import reset_server

    token = "a-long-random-status-token"
    settings = {"REPOSITORY": str(repository), "STATUS_PAGE": True, "STATUS_PAGE_TOKEN": token}
    with override_settings(INPROCSERVE=settings):
        answer = Client().get(f"/-/inprocserve/status?token={token}")
    reset_server()
    assert answer.status_code == 401
    body = answer.content.decode()
    assert "needs its token" in body and "Authorization: Bearer" in body and "query string" in body, body


def test_a_project_without_the_middleware_is_warned_that_client_errors_become_500s(repository: Path) -> None:
    """django.md's settings put InprocserveMiddleware first; left out (an easy line to miss), a client's bad
    input reached Django uncaught, a 500 HTML page instead of a JSON 400, and no check said so."""
    from django.conf import settings as django_settings

    others = [name for name in django_settings.MIDDLEWARE if "Inprocserve" not in name]
    with override_settings(MIDDLEWARE=others):
        warned = hints({"REPOSITORY": str(repository)}, "inprocserve.W003")
    assert len(warned) == 1 and "inprocserve_django.middleware.InprocserveMiddleware" in warned[0], warned
    assert hints({"REPOSITORY": str(repository)}, "inprocserve.W003") == []  # (the test project has it)


def test_a_subclass_of_the_middleware_counts_as_the_middleware(repository: Path) -> None:
    others = [name for name in django_settings_middleware() if "Inprocserve" not in name]
    with override_settings(MIDDLEWARE=[*others, f"{__name__}.OwnMiddleware"]):
        assert hints({"REPOSITORY": str(repository)}, "inprocserve.W003") == []


def django_settings_middleware() -> list[str]:
    from django.conf import settings as django_settings

    return list(django_settings.MIDDLEWARE)


def _own_middleware() -> type:
    from inprocserve_django.middleware import InprocserveMiddleware

    class OwnMiddleware(InprocserveMiddleware):  # type: ignore[misc]
        """A project's own subclass (say, to log what it maps)."""

    return OwnMiddleware


OwnMiddleware = _own_middleware()


def test_an_unknown_key_names_the_key_it_is_close_to(repository: Path) -> None:
    """E004 listed all twenty-odd known keys; a typo's own fix (REPOSITROY: REPOSITORY) had to be found there."""
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "TIMEOUT": 1.0}):
        (message,) = [message for message in run_checks() if message.id == "inprocserve.E004"]
    assert "'TIMEOUT' (TIMEOUT_S?)" in message.msg, message.msg


urlpatterns: list[Any] = []
"""(This module as the URLconf of a project that does not include ``inprocserve_django.urls``.)"""


@pytest.mark.parametrize(
    "settings",
    [{"ADMIN_TOKEN": "a-long-random-admin-token"}, {"STATUS_PAGE": True, "STATUS_PAGE_TOKEN": "a-long-status-token"}],
)
def test_a_token_for_endpoints_no_url_serves_is_warned(repository: Path, settings: dict[str, Any]) -> None:
    """The Django counterpart of the Flask plug-in's INPROCSERVE_ENDPOINTS = False: with inprocserve_django.urls
    in no URLconf, a token set for the admin endpoints or the status page was ignored without a word, and
    whoever set it took them for on, and protected."""
    settings = {"REPOSITORY": str(repository), **settings}
    with override_settings(ROOT_URLCONF=__name__, INPROCSERVE=settings):
        warned = [message for message in run_checks() if message.id == "inprocserve.W004"]
    assert len(warned) == 1, warned
    named = "ADMIN_TOKEN" if "ADMIN_TOKEN" in settings else "STATUS_PAGE"
    assert f"INPROCSERVE['{named}']" in warned[0].msg and "inprocserve_django.urls" in warned[0].msg, warned[0].msg
    assert 'include("inprocserve_django.urls")' in (warned[0].hint or "")
    assert hints(settings, "inprocserve.W004") == []  # (the test project includes them)


def test_a_status_page_token_with_the_page_off_is_warned(repository: Path) -> None:
    """STATUS_PAGE_TOKEN without STATUS_PAGE: the page answered 404 and the token was ignored without a word, as
    the Flask plug-in's INPROCSERVE_STATUS_PAGE_TOKEN with the page off, which it refuses."""
    settings = {"REPOSITORY": str(repository), "STATUS_PAGE_TOKEN": "a-long-status-token"}
    with override_settings(INPROCSERVE=settings):
        warned = [message for message in run_checks() if message.id == "inprocserve.W005"]
    assert len(warned) == 1, warned
    assert "INPROCSERVE['STATUS_PAGE_TOKEN'] is set but INPROCSERVE['STATUS_PAGE'] is off" in warned[0].msg
    assert "STATUS_PAGE" in (warned[0].hint or "")
    assert hints({**settings, "STATUS_PAGE": True}, "inprocserve.W005") == []


@pytest.mark.parametrize("follow", ["refused", "followed"])
def test_a_linked_model_folder_is_warned_with_the_setting_that_follows_links_and_not_when_it_is_set(
    repository: Path, tmp_path: Path, follow: str
) -> None:
    """W002 for ``models/churn -> ../releases/churn`` said "pass follow_symlinks=True to the Server", a Server the
    plug-in builds: the Django user's way is ``INPROCSERVE['FOLLOW_SYMLINKS'] = True``. And with that setting
    on, the check still scanned refusing links, and warned of what the server serves."""
    save_model(build_scale_model(3.0), tmp_path / "releases", "churn", 1)
    (repository / "churn").symlink_to(tmp_path / "releases" / "churn")
    settings = {"REPOSITORY": str(repository), "FOLLOW_SYMLINKS": follow == "followed"}
    with override_settings(INPROCSERVE=settings):
        warnings = [message.msg for message in run_checks() if message.id == "inprocserve.W002"]
    if follow == "followed":
        assert warnings == []
    else:
        assert warnings == [
            f"{repository / 'churn'}: the model folder is a symbolic link; symbolic links are refused; copy the "
            "files in, or set INPROCSERVE['FOLLOW_SYMLINKS'] = True"
        ], warnings


def test_the_link_advice_put_as_the_setting_leaves_a_path_holding_the_same_words_as_it_is(
    repository: Path, tmp_path: Path
) -> None:
    """Every "pass follow_symlinks=True to the Server" of a W002 was put as the setting, the words of a folder's
    name too: the warning quoted a path that is not there. Only the advice ending the problem is the Server's."""
    words = "pass follow_symlinks=True to the Server"
    save_model(build_scale_model(3.0), tmp_path / "releases", "churn", 1)
    (repository / words).symlink_to(tmp_path / "releases" / "churn")
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        warnings = [message.msg for message in run_checks() if message.id == "inprocserve.W002"]
    assert warnings == [
        f"{repository / words}: the model folder is a symbolic link; symbolic links are refused; copy the files in, "
        "or set INPROCSERVE['FOLLOW_SYMLINKS'] = True"
    ], warnings


def test_an_empty_admin_token_with_no_url_is_warned_of_once_as_off(repository: Path) -> None:
    """``ADMIN_TOKEN: ""`` where no URLconf includes the endpoints: W006 says the admin endpoints are off; W004,
    which says a token "turns on and protects nothing", must not say the contrary beside it."""
    settings = {"REPOSITORY": str(repository), "ADMIN_TOKEN": ""}
    with override_settings(ROOT_URLCONF=__name__, INPROCSERVE=settings):
        ids = [message.id for message in run_checks() if message.id.startswith("inprocserve.")]
    assert ids == ["inprocserve.W006"], ids


SECURITY = "django.middleware.security.SecurityMiddleware"


def test_an_https_redirect_of_the_probes_is_warned_and_the_exemption_it_hints_answers_them(repository: Path) -> None:
    """With SECURE_SSL_REDIRECT, ``ready`` answered a 301 to https:// whatever the models: a probe that follows it to
    the pod's port (no TLS) fails for ever, and Kubernetes counts a redirect to another host (SECURE_SSL_HOST) as
    ready. The hint's exemption is tried through Django's request cycle: the probes answer, nothing else changes."""
    from django.conf import settings as django_settings
    from django.test import Client

    redirecting = {"MIDDLEWARE": [SECURITY, *django_settings.MIDDLEWARE], "SECURE_SSL_REDIRECT": True}
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}, **redirecting):
        (warned,) = [message for message in run_checks() if message.id == "inprocserve.W007"]
        assert Client().get("/-/inprocserve/ready").status_code == 301
    assert "/-/inprocserve/health, /-/inprocserve/ready" in warned.msg and "SECURE_SSL_HOST" in warned.msg
    assert warned.hint == (
        'Exempt the probes, and only them: SECURE_REDIRECT_EXEMPT = [r"^-/inprocserve/(health|ready)$"] '
        "(docs/django.md)."
    )
    exempt = [warned.hint.split('[r"', 1)[1].split('"]', 1)[0]]
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}, SECURE_REDIRECT_EXEMPT=exempt, **redirecting):
        assert [message for message in run_checks() if message.id == "inprocserve.W007"] == []
        client = Client()
        ready, health = client.get("/-/inprocserve/ready"), client.head("/-/inprocserve/health")
        assert (ready.status_code, ready.json()["ready"], health.status_code) == (200, True, 200)
        assert client.get("/-/inprocserve/models").status_code == 301  # (only the probes)
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}, SECURE_SSL_REDIRECT=True):
        assert [message for message in run_checks() if message.id == "inprocserve.W007"] == []  # (no middleware)
