"""App config: wires signals and checks; loads nothing (``ready()`` runs for every manage.py command)."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed

logger = logging.getLogger(__name__)


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
        from . import checks  # (importing it registers the system checks)

        setting_changed.connect(_on_setting_changed, dispatch_uid="inprocserve_setting_changed")
        from django.core.exceptions import ImproperlyConfigured

        from .conf import settings

        try:
            config = settings()
        except ImproperlyConfigured:  # INPROCSERVE is not a dict: system check E012 says so
            return
        # (a value other than True or False, such as "false" read from the environment, is check error E012:
        # reported by the checks, never taken for on)
        if config["EAGER"] is True:
            # Check now (no onnxruntime: this may be a pre-forking master) so a broken repository fails
            # the start-up (not that of a gunicorn worker replacing an earlier one: see web.check_repository_at_start);
            # each worker builds and warms its own server right after the fork.
            import inprocserve
            from inprocserve import web

            refused = checks.start_check_errors(config)
            if refused:  # (the check refused them naming the core's arguments, or none, not the settings)
                raise ImproperlyConfigured(
                    "INPROCSERVE is not valid for EAGER's start-up check:\n" + checks.listed(refused)
                )
            from .server import warm_after_fork

            if config["REPOSITORY"] is not None:
                problems = web.check_repository_at_start(
                    config["REPOSITORY"],
                    config=config["CONFIG"],
                    models=config["MODELS"],
                    follow_symlinks=config["FOLLOW_SYMLINKS"],  # (linked releases: checked too)
                )
                # What the workers will serve around (a version the control file or a rollout names that is
                # not there, a policy selecting nothing, stray files): said once here, at start-up, before
                # each worker says it again.
                for problem in problems:  # (a link's advice is the setting, not a Server the plug-in builds)
                    problem = web.replace_link_advice(problem, checks.LINK_SETTING)
                    logger.warning("repository check before the workers start: %s", problem)
            inprocserve.build_after_fork(warm_after_fork)
