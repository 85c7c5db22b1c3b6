"""A small Django project that ranks products with two rankers, interleaved, and learns from clicks.

The whole project (settings, URLs, views) fits in this module; ``run.py`` builds the rankers, serves the
project over HTTP and plays users who click (``run.py --asgi``: under uvicorn).

Served by a WSGI server, the project routes to synchronous views; served by an ASGI server (Django 5.0 or
later), to async views of the same URLs, which share the worker's event loop (docs/django.md). To serve it
yourself (DJANGO_RECOMMEND_REPOSITORY absolute: gunicorn's --chdir changes the working directory)::

    python examples/django_recommend/run.py --build-rankers models/
    export DJANGO_RECOMMEND_REPOSITORY=$PWD/models DJANGO_SECRET_KEY=$(openssl rand -hex 32)
    export DJANGO_RECOMMEND_SCORE_TOKEN=$(openssl rand -hex 32)   # optional: turns /score on (ASGI only)
    # export DJANGO_ALLOWED_HOSTS=api.example.com   # served under a public name: the Host names answered
    #                                               # (default: 127.0.0.1,localhost; any other Host gets a 400)
    uvicorn --factory --app-dir examples/django_recommend recommend:asgi_application --port 8000   # ASGI
    gunicorn --chdir examples/django_recommend --threads 8 'recommend:wsgi_application()'           # WSGI
    curl 'http://127.0.0.1:8000/rank?user=alice'    # a ranked page: products, positions and a click_token

One worker process each, on purpose: a page's interleaving is remembered by the process that made it, and
a click that reaches another worker is not counted (docs/rollouts.md, "In a fleet").

Clicks decide which ranker wins, so they must not be forgeable: a page never says which ranker placed an
item, and a click carries the page's ``click_token`` (the request id and the user, signed with SECRET_KEY),
checked against the user who clicks. The user here is a query parameter (``current_user``), a stand-in for
``request.user`` behind your authentication. Bad input gets a 400 with a JSON ``error``, a body over
MAX_BODY (4 KiB) a JSON 413; errors are logged to the console (``django.request``). Under ASGI,
``BodyLimit`` refuses a large body before Django reads it; under WSGI, Django refuses a Content-Length over
the limit without reading the body (DATA_UPLOAD_MAX_MEMORY_SIZE), and the server decides how much of the
rest it reads and discards: put a proxy with a body limit in front (nginx's ``client_max_body_size``).

Under ASGI, ``POST /score`` also answers ranker A's scores for products a trusted caller names (another
service), through the event loop's batcher; it is off unless DJANGO_RECOMMEND_SCORE_TOKEN is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, NamedTuple

import django
import numpy as np
from django.conf import settings

from inprocserve import web

PRODUCTS = 40
FEATURES = 6
RANKER_WEIGHTS = {
    1: [0.1, 0.2, 1.0, 0.3, 0.1, 0.4],
    2: [-0.3, 1.0, 0.3, 0.2, 0.7, 0.0],
}
"""Ranker A (v1) weighs popularity; ranker B (v2) weighs rating and discount — closer to what the simulated
users in run.py prefer."""


def catalogue(seed: int = 0) -> np.ndarray:
    """Product features: price, rating, popularity, recency, discount, margin (standardized)."""
    return np.random.default_rng(seed).standard_normal((PRODUCTS, FEATURES)).astype(np.float32)


def build_rankers(repository: Path) -> None:
    """The two rankers of RANKER_WEIGHTS. Each scores a [items, features] batch into [items, 1] scores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    for version, w in RANKER_WEIGHTS.items():
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["items", "w"], ["score"])],
            f"ranker{version}",
            [helper.make_tensor_value_info("items", TensorProto.FLOAT, ["batch", FEATURES])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
            [numpy_helper.from_array(np.array(w, np.float32).reshape(FEATURES, 1), "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        path = repository / "ranker" / str(version) / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.SerializeToString())
    (repository / "ranker" / "config.toml").write_text(
        'version_policy = "all"\n\n[rollout]\nseed = 7\n\n'
        "[rollout.interleaving]\nrankers = [1, 2]   # A = version 1, B = version 2\n"
    )


MIN_SECRET_KEY_CHARS = 50
"""Django's own check for a SECRET_KEY (``manage.py check --deploy``, security.W009), which no server runs."""


def configure(
    repository: Path,
    *,
    secret_key: str | None = None,
    debug: bool = False,
    asgi: bool = False,
    score_token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> None:
    """Settings; the SECRET_KEY (it signs the click tokens) comes from ``secret_key`` or the environment
    variable DJANGO_SECRET_KEY, and is refused if short or repetitive (``MIN_SECRET_KEY_CHARS``). Only with
    ``debug`` does a missing key fall back to a random one per process (click tokens then die with the
    process, and do not work across workers).

    ``asgi`` routes to the async views (for an ASGI server; ``asgi_application()`` sets it). ``score_token``
    (default: DJANGO_RECOMMEND_SCORE_TOKEN) turns on ``/score`` for callers that send it as a bearer token.
    ``allowed_hosts`` (default: DJANGO_ALLOWED_HOSTS, comma-separated, else 127.0.0.1 and localhost) are the
    Host names answered; a request for any other gets a 400.
    """
    global urlpatterns  # Django reads it on the first request: each process serves one kind of server
    if asgi:
        _require_async_decorators()
    secret_key = secret_key or os.environ.get("DJANGO_SECRET_KEY")
    if not secret_key:
        if not debug:
            raise RuntimeError("set DJANGO_SECRET_KEY (e.g. $(openssl rand -hex 32)): it signs the click tokens")
        secret_key = secrets.token_hex(32)
    if (
        len(secret_key) < MIN_SECRET_KEY_CHARS
        or len(set(secret_key)) < 5
        or secret_key.startswith("django-insecure-")  # startproject's development key, copied along
    ):
        # A guessable key is found offline from one click token (an HMAC the attacker can test words against),
        # and then every token, Django's sessions and anything else it signs can be forged.
        raise RuntimeError(
            f"DJANGO_SECRET_KEY has {len(secret_key)} characters, {len(set(secret_key))} of them different: it "
            f"needs {MIN_SECRET_KEY_CHARS} or more, 5 or more different, and no 'django-insecure-' prefix, as "
            "Django's own check (security.W009) says; use DJANGO_SECRET_KEY=$(openssl rand -hex 32)"
        )
    score_token = score_token or os.environ.get("DJANGO_RECOMMEND_SCORE_TOKEN")
    if (problem := web.token_problem(score_token)) is not None:
        raise RuntimeError(f"DJANGO_RECOMMEND_SCORE_TOKEN {problem} (e.g. $(openssl rand -hex 32))")
    if allowed_hosts is None:
        listed = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
        allowed_hosts = [host.strip() for host in listed.split(",") if host.strip()]
    settings.configure(
        DEBUG=debug,
        SECRET_KEY=secret_key,
        ALLOWED_HOSTS=allowed_hosts,
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["inprocserve_django"],
        MIDDLEWARE=[
            "inprocserve_django.middleware.InprocserveMiddleware",
            "django.middleware.security.SecurityMiddleware",  # nosniff and the other headers of settings.SECURE_*
            # Django checks the Host header against ALLOWED_HOSTS only when something calls get_host(), which
            # CommonMiddleware does for every request: without it ALLOWED_HOSTS was never enforced, and a
            # page for Host: attacker.example (DNS rebinding from a browser) was answered 200.
            "django.middleware.common.CommonMiddleware",
            f"{__name__}.json_not_allowed",
        ],
        APPEND_SLASH=False,  # an API: /rank/ is a 404, not a redirect (a redirected POST loses its body)
        INPROCSERVE={"REPOSITORY": str(repository)},
        RECOMMEND_SCORE_TOKEN=score_token,
        DATA_UPLOAD_MAX_MEMORY_SIZE=MAX_BODY,  # request.body refuses a larger Content-Length unread
        LOGGING={  # without it, a 500 under DEBUG=False leaves no trace anywhere
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "loggers": {"django.request": {"handlers": ["console"], "level": "WARNING"}},
        },
    )
    urlpatterns = ASGI_URLPATTERNS if asgi else WSGI_URLPATTERNS
    django.setup()


def asgi_application() -> Any:
    """The application for an ASGI server: ``uvicorn --factory recommend:asgi_application``, Django's behind
    ``BodyLimit``. Settings come from the environment (DJANGO_RECOMMEND_REPOSITORY, DJANGO_SECRET_KEY,
    DJANGO_RECOMMEND_SCORE_TOKEN) unless ``configure(..., asgi=True)`` ran first.

    Raises:
        RuntimeError: Django is older than 5.0, or a setting is missing.
    """
    _require_async_decorators()
    _configure_from_environment(asgi=True)
    from django.core.asgi import get_asgi_application

    return BodyLimit(get_asgi_application(), max_body=MAX_BODY)


def _require_async_decorators() -> None:
    if django.VERSION < (5, 0):  # older ones wrap async views in sync functions: every request a 500
        raise RuntimeError(
            f"the async views need Django 5.0 or later (csrf_exempt, require_GET and require_POST take async "
            f"views since 5.0), this is Django {django.get_version()}: upgrade Django, or serve the synchronous "
            "views with a WSGI server (wsgi_application)"
        )


def wsgi_application() -> Any:
    """The application for a WSGI server: ``gunicorn 'recommend:wsgi_application()'``; settings as for
    :func:`asgi_application`."""
    _configure_from_environment(asgi=False)
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def _configure_from_environment(*, asgi: bool) -> None:
    if settings.configured:
        if (urlpatterns is ASGI_URLPATTERNS) != asgi:
            kind = "an ASGI" if asgi else "a WSGI"
            raise RuntimeError(f"configure(..., asgi={asgi}) before serving the project with {kind} server")
        return
    repository = os.environ.get("DJANGO_RECOMMEND_REPOSITORY")
    if not repository:
        raise RuntimeError(
            "set DJANGO_RECOMMEND_REPOSITORY to the model repository "
            "(python examples/django_recommend/run.py --build-rankers models/ makes one)"
        )
    if not Path(repository).is_dir():  # else every page is a 503: no model to serve
        raise RuntimeError(
            f"DJANGO_RECOMMEND_REPOSITORY={repository} is not a folder (seen from {Path.cwd()}: give an "
            "absolute path, e.g. $PWD/models, as a server's --chdir changes the working directory)"
        )
    configure(Path(repository), asgi=asgi)


# -- views --------------------------------------------------------------------------------------------------

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async  # noqa: E402
from django.core import signing  # noqa: E402
from django.core.exceptions import RequestDataTooBig  # noqa: E402
from django.http import HttpRequest, HttpResponseBase, HttpResponseNotAllowed, JsonResponse  # noqa: E402
from django.urls import URLPattern, URLResolver, include, path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_GET, require_POST  # noqa: E402
from inprocserve_django import aget_server, apredict, get_server  # noqa: E402

import inprocserve  # noqa: E402

ITEMS = catalogue()
CANDIDATES = 15
"""Products drawn per user; a page shows 1 to CANDIDATES of them."""
CLICK_SALT = "recommend.click"
CLICK_MAX_AGE_S = 3600  # the library remembers an interleaving for an hour
MAX_BODY = 4096
"""The largest body of a click or a /score request."""
SCORE_RANKER = 1
"""/score answers with ranker A, the one the site ranked with before the experiment."""
CLICK_SHAPE = 'expected a JSON object {"click_token": str, "position": int}'
SCORE_SHAPE = f'expected a JSON object {{"products": [1 to {PRODUCTS} product ids, each from 0 to {PRODUCTS - 1}]}}'


def bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


def current_user(request: HttpRequest) -> str:
    """Who asks: a query parameter in this example; ``request.user`` behind real authentication."""
    return request.GET.get("user", "anonymous")


class Page(NamedTuple):
    """A checked page request: who asks, how many products, and the user's candidates."""

    user: str
    size: int
    candidates: np.ndarray


def page_request(request: HttpRequest) -> Page | JsonResponse:
    """The page a ``/rank`` request asks for, or the 400 to answer. The user's candidates stand in for
    candidate generation: 15 products drawn per user."""
    size = request.GET.get("size", "8")
    # isascii: str.isdigit takes "²" too; len: int() refuses a string of over 4300 digits (a ValueError)
    if not (size.isascii() and size.isdigit() and len(size) <= 9) or not 1 <= int(size) <= CANDIDATES:
        return bad_request(f"size must be a whole number from 1 to {CANDIDATES}")
    user = current_user(request)
    seed = int.from_bytes(hashlib.blake2b(user.encode(), digest_size=4).digest(), "big")  # stable per user
    candidates = np.random.default_rng(seed).choice(PRODUCTS, size=CANDIDATES, replace=False)
    return Page(user, int(size), candidates)


def page_answer(page: Page, ranked: inprocserve.InterleavedRanking) -> JsonResponse:
    """Which ranker placed which item stays on the server: a page that said so would let a script click
    for the ranker it favours."""
    token = signing.dumps({"request_id": ranked.request_id, "user": page.user}, salt=CLICK_SALT)
    products = [int(page.candidates[i]) for i in ranked.order]
    return JsonResponse({"click_token": token, "products": products, "positions": ranked.order})


class BadInput(ValueError):
    """The request's input is wrong: answered with ``status`` (400) and this message as ``error``."""

    status = 400


class BodyTooLarge(BadInput):
    """The body is over ``max_body`` bytes: answered with a 413."""

    status = 413

    def __init__(self, max_body: int = MAX_BODY) -> None:
        super().__init__(f"the body is over {max_body} bytes")


def refuse(exc: BadInput) -> JsonResponse:
    return JsonResponse({"error": str(exc)}, status=exc.status)


def json_body(request: HttpRequest, shape: str) -> Any:
    """The request's JSON body.

    Raises:
        BodyTooLarge: the body is over MAX_BODY bytes (by its Content-Length, then it is not read).
        BadInput: the body is not JSON (the message is then ``shape``).
    """
    try:
        body = request.body
    except RequestDataTooBig:  # Content-Length over DATA_UPLOAD_MAX_MEMORY_SIZE (= MAX_BODY): not read
        raise BodyTooLarge() from None
    if len(body) > MAX_BODY:
        raise BodyTooLarge()
    try:  # RecursionError too: deeply nested JSON exhausts the parser's stack
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadInput(shape) from None


def click_request(request: HttpRequest) -> tuple[str, int] | JsonResponse:
    """The page's request id and the position clicked, or the 400/403 to answer."""
    try:
        body = json_body(request, CLICK_SHAPE)
    except BadInput as exc:
        return refuse(exc)
    token, position = (body.get("click_token"), body.get("position")) if isinstance(body, dict) else (None, None)
    if not isinstance(token, str) or isinstance(position, bool) or not isinstance(position, int):
        return bad_request(CLICK_SHAPE)
    try:
        page = signing.loads(token, salt=CLICK_SALT, max_age=CLICK_MAX_AGE_S)
    except signing.BadSignature:  # forged, altered or expired (SignatureExpired is one)
        return JsonResponse({"error": "invalid or expired click_token"}, status=403)
    if page["user"] != current_user(request):
        return JsonResponse({"error": "this page was shown to another user"}, status=403)
    return page["request_id"], position


def score_request(request: HttpRequest) -> list[int]:
    """The product ids a ``/score`` request names.

    Raises:
        BadInput: anything but a JSON object {"products": [1 to PRODUCTS ids]} (BodyTooLarge: over MAX_BODY
            bytes).
    """
    body = json_body(request, SCORE_SHAPE)
    products = body.get("products") if isinstance(body, dict) else None
    if (
        not isinstance(products, list)
        or not 1 <= len(products) <= PRODUCTS
        or not all(type(product) is int and 0 <= product < PRODUCTS for product in products)  # (not bools)
    ):
        raise BadInput(SCORE_SHAPE)
    return products


def click_answer(team: str | None) -> JsonResponse:
    if team is None:
        return JsonResponse({"error": "position is not on this page, or the page is forgotten"}, status=404)
    return JsonResponse({"recorded": True})  # not which ranker: that would tell a script whom to click for


# -- synchronous views (WSGI) --------------------------------------------------------------------------------


@require_GET
def rank(request: HttpRequest) -> JsonResponse:
    """The top products for a page: the user's candidates, ranked by ranker A and ranker B, interleaved."""
    page = page_request(request)
    if isinstance(page, JsonResponse):
        return page
    ranked = get_server().interleave("ranker", {"items": ITEMS[page.candidates]}, length=page.size)
    return page_answer(page, ranked)


@csrf_exempt  # an API called by scripts; the signed token, not a cookie, ties a click to its page
@require_POST
def click(request: HttpRequest) -> JsonResponse:
    """A click on a page: {"click_token": <from /rank>, "position": <one of the page's positions>}, by the
    user the page was made for."""
    checked = click_request(request)
    if isinstance(checked, JsonResponse):
        return checked
    request_id, position = checked
    return click_answer(get_server().record_click(request_id, position, model="ranker"))


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(get_server().status()["models"]["ranker"]["rollout"]["interleaving"] or {})


# -- async views (ASGI; Django 5.0 or later: csrf_exempt and require_* wrap async views since 5.0) -----------
#
# `interleave` and `record_click` have no async variants, and block (interleave until both rankers have
# answered; record_click on the lock it shares with the threads interleaving): they run on a worker thread
# through sync_to_async, so that the event loop keeps serving meanwhile. thread_sensitive=False because both
# are thread-safe: Django's default (True) runs a request's such calls on one thread of that request's own
# (Django gives each ASGI request its own thread-sensitive context), one after the other; False lets them run
# on the executor's threads like any other call.


@require_GET
async def arank(request: HttpRequest) -> JsonResponse:
    """``rank`` for an ASGI server."""
    page = page_request(request)
    if isinstance(page, JsonResponse):
        return page
    server = await aget_server()  # built on a worker thread the first time: loading models takes a while
    interleave = sync_to_async(server.interleave, thread_sensitive=False)
    ranked = await interleave("ranker", {"items": ITEMS[page.candidates]}, length=page.size)
    return page_answer(page, ranked)


@csrf_exempt  # as for click
@require_POST
async def aclick(request: HttpRequest) -> JsonResponse:
    """``click`` for an ASGI server (the ASGI handler has read the body before the view runs)."""
    checked = click_request(request)
    if isinstance(checked, JsonResponse):
        return checked
    request_id, position = checked
    server = await aget_server()
    record_click = sync_to_async(server.record_click, thread_sensitive=False)
    return click_answer(await record_click(request_id, position, model="ranker"))


@csrf_exempt  # a service-to-service API: the bearer token, not a cookie, authenticates the caller
@require_POST
async def score(request: HttpRequest) -> JsonResponse:
    """Ranker A's score of each product a trusted caller names (a service that ranks search results or an
    e-mail with the production ranker): ``{"products": [3, 17, 5]}`` with ``Authorization: Bearer <token>``
    -> ``{"scores": [...], "version": 1}``.

    Scored with ``apredict`` on the event loop, so concurrent requests of the worker share batches. Behind a
    token because ranker A's scores, set beside a page, would tell a script which items ranker A placed there,
    and so whom to click for.
    """
    token = settings.RECOMMEND_SCORE_TOKEN
    if not token:
        return JsonResponse({"error": "/score is off: set DJANGO_RECOMMEND_SCORE_TOKEN"}, status=404)
    if not web.check_token(request.headers.get("Authorization"), token):
        response = JsonResponse({"error": "send Authorization: Bearer <DJANGO_RECOMMEND_SCORE_TOKEN>"}, status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    try:
        products = score_request(request)
    except BadInput as exc:
        return refuse(exc)
    result = await apredict(request, "ranker", {"items": ITEMS[products]}, version=SCORE_RANKER)
    return JsonResponse({"scores": result["score"][:, 0].tolist(), "version": result.version})


# -- the body limit under ASGI -------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware that answers 413, with a JSON ``error``, a request whose body is over ``max_body``
    bytes: at once when its Content-Length says so (reading none of it), and for a body streamed without
    one (chunked) as soon as more than ``max_body`` bytes of it have arrived (reading no further).

    Django's ASGI handler reads the whole body (into a temporary file past 2.5 MB) before its middleware and
    views run, so DATA_UPLOAD_MAX_MEMORY_SIZE and the views' own check come too late there: the limit is
    kept in front of it. A body within the limit is read here and handed on whole. Holds no state between
    requests: safe for concurrent ones.
    """

    def __init__(self, app: Any, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan: Django refuses it, and uvicorn (--lifespan auto) goes on
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:  # (bytes.isdigit is ASCII digits only)
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await self._refuse(send)  # what the client still sends is never read
                return
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}
        received = [whole]

        async def replay() -> Any:
            return received.pop() if received else await receive()  # then http.disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        payload = json.dumps({"error": str(BodyTooLarge(self.max_body))}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers.append((b"connection", b"close"))  # the unread rest of the body cannot precede another request
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


COMMON_URLPATTERNS: list[URLPattern | URLResolver] = [
    path("stats", stats),
    path("-/inprocserve/", include("inprocserve_django.urls")),
]
WSGI_URLPATTERNS = [path("rank", rank), path("click", click), *COMMON_URLPATTERNS]
ASGI_URLPATTERNS = [path("rank", arank), path("click", aclick), path("score", score), *COMMON_URLPATTERNS]
urlpatterns = WSGI_URLPATTERNS
"""What Django routes: ``configure(..., asgi=True)`` replaces it with ASGI_URLPATTERNS."""


# The answers Django makes itself (an unknown path, a request it refuses, a method a view does not take, an
# uncaught error) are JSON too, as every other answer of this API (with DEBUG off; Django's debug pages
# otherwise).
def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"error": "bad request"}, status=400)


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"error": "not found"}, status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": "internal error (logged on the server)"}, status=500)


def _json_if_not_allowed(response: HttpResponseBase) -> HttpResponseBase:
    if not isinstance(response, HttpResponseNotAllowed):
        return response
    answer = JsonResponse({"error": f"method not allowed: use {response['Allow']}"}, status=405)
    answer["Allow"] = response["Allow"]
    return answer


def json_not_allowed(get_response: Any) -> Any:
    """Middleware: Django's 405 (require_GET, require_POST) is an empty HTML page, and Django has no
    handler405; this answers it as JSON, keeping its Allow header. Sync and async, like the views."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            return _json_if_not_allowed(await get_response(request))

        return markcoroutinefunction(middleware)

    def sync_middleware(request: HttpRequest) -> HttpResponseBase:
        return _json_if_not_allowed(get_response(request))

    return sync_middleware


json_not_allowed.sync_capable = True  # type: ignore[attr-defined]
json_not_allowed.async_capable = True  # type: ignore[attr-defined]

handler400 = json_bad_request
handler404 = json_not_found
handler500 = json_server_error
