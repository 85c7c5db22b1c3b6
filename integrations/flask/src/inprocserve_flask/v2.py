"""The Open Inference Protocol (KServe v2 REST) at the application root, for standard clients.

Turned on with ``INPROCSERVE_V2_PROTOCOL = True``; ``init_app`` then registers this blueprint. The
protocol itself lives in :mod:`inprocserve.v2`; this module only adapts Flask's request to it and fills
in the app's rollout context (``INPROCSERVE_CONTEXT``, default :func:`default_context`) and the
request's time budget (the ``timeout`` view decorator, the deadline header, ``INPROCSERVE_TIMEOUT_S``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import PathConverter

from inprocserve import v2, web

from ._registration import register_once

__all__ = ["blueprint"]


_CONVERTER = "inprocserve_v2_path"


class _AnyPath(PathConverter):
    """werkzeug's ``path``, newlines included: its ``.`` stops at one, so a path with a newline
    (``/v2/models/a%0Ab/infer``) matched no route, and Flask answered its HTML 404 page where the protocol
    answers every other error with its JSON ``{"error": ...}``. A leading slash too (``/v2//models/m/ready``,
    which the routes do not merge): werkzeug answered it with an HTML 308 to the path with one slash, where the
    Django plug-in answers the protocol's JSON 404, as Flask does for ``/v2/models/m//ready``."""

    regex = "(?s:.+?)"
    part_isolating = False  # (it spans slashes; werkzeug reads a regex without "/" as one part)


_CONTROL_CONVERTER = "inprocserve_v2_control"


class _ControlFirst(PathConverter):
    """The rest of a path that goes on from ``/v2`` with a control character, not a slash (``/v2%0A``): it matched
    neither ``/v2`` nor ``/v2/<path>``, so Flask answered its HTML 404 page; the protocol answers it its JSON 404."""

    regex = "[\\x00-\\x1f\\x7f](?s:.*)"
    part_isolating = False  # (it spans slashes: /v2%0A/models/m/ready; werkzeug reads a regex without "/" as one part)


def blueprint(config: Mapping[str, Any]) -> Blueprint:
    """The ``/v2`` routes, answering for the current app's server."""
    from . import _remaining_budget, _state, _too_large_message, default_context

    eager = config["INPROCSERVE_EAGER"]
    endpoints = v2.Endpoints(
        lambda: _state().server,
        limits=config["INPROCSERVE_V2_LIMITS"],
        retry_after_s=config["INPROCSERVE_RETRY_AFTER_S"],
        warming=lambda: eager and _state().holder.building,  # probes answer 503 during the warm-up, as /ready
    )
    make_context = config["INPROCSERVE_CONTEXT"] or default_context
    not_ready_headers = {"Retry-After": web.retry_after(config["INPROCSERVE_RETRY_AFTER_S"])}
    routes = Blueprint("inprocserve_v2", __name__)

    # the protocol answers a wrong method with a JSON 405, and OPTIONS with the Allow of the path (Flask's own
    # OPTIONS answer listed every method here: GET for infer, POST for ready)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    # (before the routes: raised before any of them is added) Nested ("ml.inprocserve_v2") or registered again
    # under a prefix, a copy that answered every path with the protocol's 404 (it reads the request's whole path,
    # and standard clients look for /v2 at the root); on another app, an HTML 500 for every /v2 path.
    register_once(
        routes,
        config,
        lambda where: (
            "the /v2 protocol routes are registered by Inprocserve.init_app, once, at the root "
            "(INPROCSERVE_V2_PROTOCOL = True), where standard clients look for them; they cannot be registered "
            f"again or nested in another blueprint (here {where}): to serve the app under a prefix, "
            "mount the whole app there (the WSGI server's SCRIPT_NAME); for another app, call Inprocserve(app) "
            "on it"
        ),
    )

    # (recorded before the routes, so that the converter is there when they are added to the app)
    @routes.record_once
    def add_converter(state: BlueprintSetupState) -> None:
        state.app.url_map.converters.setdefault(_CONVERTER, _AnyPath)
        state.app.url_map.converters.setdefault(_CONTROL_CONVERTER, _ControlFirst)

    # (merge_slashes=False: the protocol answers a path with an empty segment, a JSON 404, never a 308 elsewhere)
    # The control-character rule is added last (decorators apply bottom up): url_for builds with the first rule of
    # the endpoint that takes its arguments, and werkzeug does not check a converter's regex when it builds, so
    # url_for("inprocserve_v2.protocol", rest="models/m") gave /v2models/m while that rule came first.
    @routes.route(f"/v2<{_CONTROL_CONVERTER}:rest>", methods=methods, merge_slashes=False)
    @routes.route("/v2", methods=methods, strict_slashes=False, merge_slashes=False)
    @routes.route(f"/v2/<{_CONVERTER}:rest>", methods=methods, merge_slashes=False)
    def protocol(rest: str = "") -> Response:
        response = answer()
        # Every answer, JSON or binary tensors, errors included, as the plug-in's other endpoints': a browser made
        # to fetch /v2/... never reads one as HTML (an error quoting the path or a tensor's name, or an output's
        # bytes, would run as a page of the app's origin). (Here, not in an after_request: _routing_error's 405
        # calls this view before routing, and no blueprint's after_request runs for it.)
        for name, value in web.ANSWER_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def answer() -> Response:
        closed = _state().refused()
        if closed is not None:  # (else answered as a server that could not start: "its log says why")
            body = json.dumps({"error": str(closed)})
            return Response(body, status=503, headers=not_ready_headers, content_type="application/json")
        if web.body_end_unknown(request.environ):  # (read as empty, it was refused as malformed JSON)
            return Response(json.dumps({"error": web.LENGTH_REQUIRED}), status=411, content_type="application/json")
        try:
            answer = endpoints.handle(
                request.method,
                request.path,
                dict(request.headers),
                # a broken chunked body is a 400, not a 500; Flask's own answers (413 over MAX_CONTENT_LENGTH) stay
                web.body_reader(request.stream.read, passing=(HTTPException,)),
                context=make_context,
                budget_s=_remaining_budget,
            )
        except RequestEntityTooLarge:  # (over MAX_CONTENT_LENGTH: werkzeug's HTML page, not the protocol's JSON)
            return Response(json.dumps({"error": _too_large_message()}), status=413, content_type="application/json")
        return Response(answer.body, status=answer.status, headers=answer.headers)

    return routes
