"""The plug-in's blueprints are registered once, by ``Inprocserve.init_app``, on its own app.

Taken from ``app.blueprints`` and nested in a team's own blueprint, registered again under another name, or
registered on another app, a blueprint of the plug-in was a broken copy: its paths not where its views and
routing hooks look for them (HTML 404s and 405s, the protocol's 404 for every path), or views that find no
extension on that app (HTML 500s). Refused at registration instead, with what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint
from flask.blueprints import BlueprintSetupState


def register_once(blueprint: Blueprint, config: Mapping[str, Any], refusal: Callable[[str], str]) -> None:
    """Record on ``blueprint`` (before its routes, so that nothing is added first) a check that raises
    ``ValueError(refusal(where))`` when it is registered a second time, nested, or on an app whose config is not
    ``config`` (the one ``init_app`` was given); ``where`` says which ("as 'ops.inprocserve'", "on app 'admin'")."""

    @blueprint.record
    def registered_once(state: BlueprintSetupState) -> None:
        elsewhere = state.app.config is not config
        if elsewhere or not state.first_registration:
            raise ValueError(refusal(f"on app {state.app.name!r}" if elsewhere else f"as {state.name!r}"))
