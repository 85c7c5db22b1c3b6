"""The ``INPROCSERVE`` settings dict, merged over defaults and cached until settings change."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    "REPOSITORY": None,  # folder of <model>/<version>/model.onnx
    "CONFIG": None,  # inprocserve.ModelConfig: defaults for every model
    "MODELS": {},  # name -> inprocserve.ModelConfig
    "FLAGS": None,  # an inprocserve.FlagProvider
    "FLAG_TIMEOUT_S": 0.05,
    "POLL_INTERVAL_S": None,
    "FOLLOW_SYMLINKS": False,  # accept symlinked model/version folders and files (docs/repository.md)
    "USER_HEADER": "X-User-Id",  # used for the rollout context when no user is logged in
    "DEADLINE_HEADER": "X-Request-Timeout-Ms",  # remaining budget sent by the caller or proxy
    "TIMEOUT_S": None,  # default budget of a request
    "RETRY_AFTER_S": 1,
    "REQUIRED_MODELS": [],  # models /ready waits for (default: every model found)
}


@lru_cache(maxsize=1)
def settings() -> dict[str, Any]:
    """``settings.INPROCSERVE`` over the defaults (cached; cleared on ``setting_changed``)."""
    user = getattr(django_settings, "INPROCSERVE", {}) or {}
    return {**DEFAULTS, **user}


def unknown_keys() -> list[str]:
    user = getattr(django_settings, "INPROCSERVE", {}) or {}
    return sorted(set(user) - set(DEFAULTS))
