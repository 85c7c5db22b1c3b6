"""The status page view (``INPROCSERVE["STATUS_PAGE"] = True``), served at ``status`` by ``inprocserve_django.urls``.

The page itself is :func:`inprocserve.render_status_page`. This view only guards it: a request must carry
``INPROCSERVE["STATUS_PAGE_TOKEN"]``, either as ``Authorization: Bearer <token>`` (scripts, or a proxy that
adds the header) or as HTTP Basic credentials with the token as the password (a person in a browser: a
wrong or missing token answers 401 with a ``WWW-Authenticate: Basic`` challenge, so the browser asks for
it). Tokens are compared in constant time. A token in the query string is not accepted: it would end up in
access logs and history. With the page off, or no token set (system check ``inprocserve.E007``), it is 404.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from inprocserve import web

from .conf import settings
from .middleware import not_logged_per_request
from .server import get_server
from .views import answered_with, only

__all__ = ["status_page"]


@csrf_exempt  # (its token authorizes it, never a cookie: another method is a 405, not CSRF's 403)
@answered_with(web.ANSWER_HEADERS)  # (its JSON 405; the page and its 401 have the page's own, nosniff among them)
@only("GET", "HEAD")  # as the Flask plug-in's page (another method: a JSON 405)
def status_page(request: HttpRequest) -> HttpResponse:
    config = settings()
    token = config["STATUS_PAGE_TOKEN"]
    if not config["STATUS_PAGE"] or not isinstance(token, str) or not token:
        raise Http404("the inprocserve status page is off")
    if not web.check_token(request.headers.get("Authorization"), token, basic=True):
        status, text, headers = web.status_page_unauthorized()  # (the page's headers: the 401 had none of them)
        response = HttpResponse(text, status=status, content_type="text/plain")
        for name, value in headers.items():
            response[name] = value
        return response
    status, html, headers = web.status_page(get_server, retry_after_s=config["RETRY_AFTER_S"])
    response = HttpResponse(html, status=status, content_type="text/html; charset=utf-8")
    for name, value in headers.items():
        response[name] = value
    # (a 503, the server closed or not built here: the library logs why, at most once a minute; a close is no error)
    return not_logged_per_request(response) if status == 503 else response
