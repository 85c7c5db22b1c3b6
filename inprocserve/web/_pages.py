"""The status page as an HTTP answer, and its 401."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._errors import ServerClosedError
from ._answers import retry_after
from ._process import NO_SERVER, server_or_none

if TYPE_CHECKING:
    from .._server import Server

# The types of the page and of its 401, in the headers given with them: a framework that sets none of its own
# (WSGI, Starlette's Response) sent them untyped.
_HTML = "text/html; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


def status_page(
    server_factory: Callable[[], Server], *, title: str | None = None, retry_after_s: float = 5
) -> tuple[int, str, dict[str, str]]:
    """The status page (see :func:`~inprocserve.render_status_page`, without file-system paths) as an HTTP
    status, HTML and headers, the app's server built by ``server_factory()`` if it is not yet (pass a holder's
    :meth:`ProcessLocalServer.get`). A worker whose server cannot be built answers 503 with a page saying
    :data:`NO_SERVER`, where it answered a 500 and logged a traceback at each load; a 503 says ``Retry-After``
    ``retry_after_s`` (the plug-ins pass their ``RETRY_AFTER_S``, as for every other 503). The caller checks the
    page's token first (:func:`check_token` with ``basic=True``; :func:`status_page_unauthorized` if it says no).

    Returns:
        ``(status, html, headers)``, the whole answer: send the HTML encoded as UTF-8, with these headers, which
        include its ``Content-Type`` (a framework that sets none, WSGI or Starlette's ``Response``, sent the
        page untyped, and with ``nosniff`` a browser showed it as text).

    A server that cannot be built, or that the app closed for good, is the 503, not an error raised.
    """
    from .._status_page import (  # (it imports inprocserve.web, whose package imports this module)
        PAGE_HEADERS,
        render_status_page,
    )

    headers = {**PAGE_HEADERS, "Content-Type": _HTML}
    try:
        built = server_or_none(server_factory, "status page")
    except ServerClosedError as exc:
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>inprocserve status</title></head>'
            f"<body><p>{html.escape(str(exc))}</p></body></html>"
        )
        return 503, page, {**headers, "Retry-After": retry_after(retry_after_s)}
    if built is None:
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>inprocserve status</title></head>'
            f"<body><p>{NO_SERVER}</p></body></html>"
        )
        return 503, page, {**headers, "Retry-After": retry_after(retry_after_s)}
    status = built.status(include_paths=False)
    page = render_status_page(status) if title is None else render_status_page(status, title=title)
    return 200, page, headers


_STATUS_PAGE_REALM = 'Basic realm="inprocserve status", charset="UTF-8"'
"""(The ``WWW-Authenticate`` challenge of :func:`status_page_unauthorized`: a browser asks for the token.)"""


def status_page_unauthorized() -> tuple[int, str, dict[str, str]]:
    """The status page's answer to a request without its token (:func:`check_token` with ``basic=True`` said
    no): a 401 saying how to send the token (as ``Bearer``, or as the password of HTTP Basic credentials; never
    in the query string), with a ``WWW-Authenticate: Basic`` challenge, so that a browser asks for it, and the
    page's own headers (stored by no cache, never sniffed, framed by no page), which :func:`status_page` gives
    its other answers.

    Returns:
        ``(401, text, headers)``, the whole answer: send the plain text encoded as UTF-8, with these headers,
        which include its ``Content-Type``.
    """
    from .._status_page import (  # (it imports inprocserve.web, whose package imports this module)
        PAGE_HEADERS,
        TOKEN_NEEDED,
    )

    return 401, TOKEN_NEEDED, {**PAGE_HEADERS, "Content-Type": _TEXT, "WWW-Authenticate": _STATUS_PAGE_REALM}
