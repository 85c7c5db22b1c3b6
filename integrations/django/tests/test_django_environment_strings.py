"""Number settings read from the environment as a team writes them, ``"TIMEOUT_S": os.environ.get("TIMEOUT",
"60")``: a string, refused (system checks E011 and E012), with a hint that says to convert it; and the
settings an empty string turns off, ``"ADMIN_TOKEN": os.environ.get("ADMIN_TOKEN", "")``: warned of (W006)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import Client, override_settings

from inprocserve.testing import build_scale_model, save_model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    save_model(build_scale_model(2.0), tmp_path, "fraud", 1)
    return tmp_path


@pytest.mark.parametrize(
    ("key", "value", "convert"),
    [
        ("TIMEOUT_S", "60", "float"),
        ("POLL_INTERVAL_S", "60", "float"),
        ("FLAG_TIMEOUT_S", "0.05", "float"),
        ("RETRY_AFTER_S", "1", "float"),
        ("SHADOW_BUDGET", "0.02", "float"),
        ("SHADOW_QUEUE", "256", "int"),
    ],
)
def test_a_number_setting_given_as_a_string_is_refused_with_the_conversion(
    repository: Path, key: str, value: str, convert: str
) -> None:
    # The hint named the default alone ("The default is None (see docs/django.md)."), and "got '60'" read as a
    # number to whoever had written os.environ.get(...).
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), key: value}):
        with pytest.raises(ImproperlyConfigured) as refused:  # (as a WSGI or ASGI server loads the app)
            Client().get("/-/inprocserve/health")
    said = str(refused.value)
    assert f"INPROCSERVE['{key}']" in said, said
    assert f"A value read from the environment is a string: convert it, {convert}(os.environ['...'])" in said, said


def test_a_number_out_of_range_says_nothing_of_strings(repository: Path) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "TIMEOUT_S": -1}):
        with pytest.raises(ImproperlyConfigured) as refused:
            Client().get("/-/inprocserve/health")
    assert "INPROCSERVE['TIMEOUT_S']" in str(refused.value) and "environment" not in str(refused.value)


@pytest.mark.parametrize("key", ["ADMIN_TOKEN", "USER_HEADER", "DEADLINE_HEADER"])
def test_an_empty_string_that_turns_a_setting_off_is_warned_of_and_none_is_not(repository: Path, key: str) -> None:
    # os.environ.get("INPROCSERVE_ADMIN_TOKEN", "") of a deployment that forgot the variable: the admin endpoints
    # (the user header, the deadline header) were off without a word, where a blank " " token is error E010
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), key: ""}):
        with pytest.raises(SystemCheckError) as warned:  # (what `manage.py check --fail-level WARNING` fails on)
            call_command("check", fail_level="WARNING")
        # a warning: the server still starts, and an empty token still opens nothing
        response = Client().post("/-/inprocserve/reload", headers={"Authorization": "Bearer "})
    said = str(warned.value)
    assert f"(inprocserve.W006) INPROCSERVE['{key}'] is '' (an empty string)" in said, said
    assert "os.environ.get(name, '')" in said and "None says off on purpose" in said, said
    assert response.status_code == 404, response.content
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), key: None}):
        call_command("check", fail_level="WARNING")  # None: off on purpose, and said so
