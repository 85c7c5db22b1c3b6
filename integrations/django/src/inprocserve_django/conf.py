"""The ``INPROCSERVE`` settings dict, merged over defaults and cached until settings change."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from inprocserve import web

DEFAULTS: dict[str, Any] = {
    "REPOSITORY": None,  # folder of <model>/<version>/model.onnx
    "CONFIG": None,  # inprocserve.ModelConfig: defaults for every model
    "MODELS": {},  # name -> inprocserve.ModelConfig
    "FLAGS": None,  # an inprocserve.FlagProvider
    "FLAG_TIMEOUT_S": 0.05,
    "POLL_INTERVAL_S": None,
    "CONTROL_INTERVAL_S": 0.5,  # how often each worker re-reads the fleet's control file
    "EAGER": False,  # check the repository at start-up; build and warm in each worker right after the fork
    "ADMIN_TOKEN": None,  # set it to enable the admin endpoints (and paths in /models)
    "FOLLOW_SYMLINKS": False,  # accept symlinked model/version folders and files (docs/repository.md)
    "USER_HEADER": "X-User-Id",  # used for the rollout context when no user is logged in
    "DEADLINE_HEADER": "X-Request-Timeout-Ms",  # remaining budget sent by the caller or proxy
    "TIMEOUT_S": None,  # default budget of a request
    "RETRY_AFTER_S": 1,
    "REQUIRED_MODELS": [],  # models /ready waits for (default: every model found)
    "STATUS_PAGE": False,  # serve the HTML status page at <prefix>status (needs STATUS_PAGE_TOKEN)
    "STATUS_PAGE_TOKEN": None,  # a long random string; send it as a Bearer token or Basic password
    "V2_PROTOCOL": False,  # serve the Open Inference Protocol (include inprocserve_django.v2_urls)
    "V2_LIMITS": None,  # an inprocserve.v2.Limits: caps on protocol requests
    # the server's shadow arguments and defaults (docs/rollouts.md, "Shadow traffic")
    "SHADOW_BUDGET": web.SHADOW_SETTINGS["shadow_budget"],  # share of wall-clock time, in (0, 1]
    "SHADOW_QUEUE": web.SHADOW_SETTINGS["shadow_queue"],  # copies waiting for the shadow thread
    "SHADOW_QUEUE_BYTES": web.SHADOW_SETTINGS["shadow_queue_bytes"],  # bytes they may hold
    "ON_SHADOW": web.SHADOW_SETTINGS["on_shadow"],  # callable(ShadowComparison) or its dotted path
}


@lru_cache(maxsize=1)
def settings() -> dict[str, Any]:
    """``settings.INPROCSERVE`` over the defaults (cached; cleared on ``setting_changed``)."""
    return {**DEFAULTS, **_user_settings()}


def unknown_keys() -> list[str]:
    return sorted(set(_user_settings()) - set(DEFAULTS))


def _user_settings() -> Mapping[str, Any]:
    # Only a missing setting is the defaults: ``or {}`` took an empty list, string or tuple (and None) for them,
    # and the check said W001 "REPOSITORY is not set" to a project whose mistake was the setting's type.
    user = getattr(django_settings, "INPROCSERVE", _UNSET)
    if user is _UNSET:
        return {}
    if not isinstance(user, Mapping):  # (system check inprocserve.E012 reports it at start-up)
        raise ImproperlyConfigured(
            f"INPROCSERVE must be a dict of settings, such as {{'REPOSITORY': BASE_DIR / 'models'}} ({{}} for the "
            f"defaults), not {_a(user)}"
        )
    return user


_UNSET = object()


def _a(value: object) -> str:
    """``value``'s type with its article (``a list``, ``an int``), or ``None``."""
    if value is None:
        return "None"
    kind = type(value).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
