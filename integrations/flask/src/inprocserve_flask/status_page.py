"""The status page route: ``GET {INPROCSERVE_URL_PREFIX}/status``, off unless ``INPROCSERVE_STATUS_PAGE``.

The page itself is :func:`inprocserve.render_status_page`. This module only guards it: a request must carry
the token, either as ``Authorization: Bearer <token>`` (scripts, or a proxy that adds the header) or as HTTP
Basic credentials with the token as the password (a person in a browser: a wrong or missing token answers
401 with a ``WWW-Authenticate: Basic`` challenge, so the browser asks for it). Tokens are compared in
constant time. A token in the query string is not accepted: it would end up in access logs and history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, current_app, request

import inprocserve
from inprocserve import web

__all__ = ["add_status_page"]


def add_status_page(blueprint: Blueprint, config: Mapping[str, Any], server: Callable[[], inprocserve.Server]) -> None:
    """Add the status route to ``blueprint`` if ``INPROCSERVE_STATUS_PAGE`` is on.

    Raises:
        inprocserve.ConfigurationError: the page is on but neither ``INPROCSERVE_STATUS_PAGE_TOKEN`` nor
            ``INPROCSERVE_ADMIN_TOKEN`` is set (the page is never served without a token).
    """
    if not config["INPROCSERVE_STATUS_PAGE"]:
        return
    token = config["INPROCSERVE_STATUS_PAGE_TOKEN"] or config["INPROCSERVE_ADMIN_TOKEN"]
    if not isinstance(token, str) or not token:
        raise inprocserve.ConfigurationError(
            "INPROCSERVE_STATUS_PAGE is on but no token is set: set INPROCSERVE_STATUS_PAGE_TOKEN "
            "(or INPROCSERVE_ADMIN_TOKEN) to a long random string"
        )

    # merge_slashes=False, as on every other route of the plug-in: werkzeug answered /-/inprocserve//status with an
    # HTML 308 to /status, where every other path under the prefix with an empty segment is the JSON 404
    @blueprint.get("/status", merge_slashes=False)
    def status_page() -> Response:
        if not web.check_token(request.headers.get("Authorization"), token, basic=True):
            status, text, headers = web.status_page_unauthorized()  # (the page's headers: the 401 had none)
            response = Response(text, status, mimetype="text/plain")
            response.headers.update(headers)
            return response
        status, html, headers = web.status_page(
            server,
            title=f"inprocserve status · {current_app.name}",
            retry_after_s=config["INPROCSERVE_RETRY_AFTER_S"],
        )
        response = Response(html, status, mimetype="text/html")
        response.headers.update(headers)
        return response
