"""App config: wires signals and checks; loads nothing (``ready()`` runs for every manage.py command)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "INPROCSERVE":
        from .conf import settings
        from .server import reset_server

        settings.cache_clear()
        reset_server()


class InprocserveConfig(AppConfig):
    name = "inprocserve_django"
    verbose_name = "inprocserve"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        setting_changed.connect(_on_setting_changed, dispatch_uid="inprocserve_setting_changed")
