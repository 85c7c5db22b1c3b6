"""A small Django project that ranks products with two rankers, interleaved, and learns from clicks.

The whole project (settings, URLs, views) fits in this module; ``run.py`` builds the rankers, serves the
project over HTTP and plays users who click.

Clicks decide which ranker wins, so they must not be forgeable: a page never says which ranker placed an
item, and a click carries the page's ``click_token`` (the request id and the user, signed with SECRET_KEY),
checked against the user who clicks. The user here is a query parameter (``current_user``), a stand-in for
``request.user`` behind your authentication. Bad input gets a 400 with a JSON ``error``; errors are logged
to the console (``django.request``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import django
import numpy as np
from django.conf import settings

PRODUCTS = 40
FEATURES = 6


def catalogue(seed: int = 0) -> np.ndarray:
    """Product features: price, rating, popularity, recency, discount, margin (standardized)."""
    return np.random.default_rng(seed).standard_normal((PRODUCTS, FEATURES)).astype(np.float32)


def build_rankers(repository: Path) -> None:
    """Ranker A (v1) weighs popularity; ranker B (v2) weighs rating and discount — closer to what the
    simulated users in run.py prefer. Each scores a [items, features] batch into [items, 1] scores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = {
        1: [0.1, 0.2, 1.0, 0.3, 0.1, 0.4],
        2: [-0.3, 1.0, 0.3, 0.2, 0.7, 0.0],
    }
    for version, w in weights.items():
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


def configure(repository: Path, *, secret_key: str | None = None, debug: bool = False) -> None:
    """Settings; the SECRET_KEY (it signs the click tokens) comes from ``secret_key`` or the environment
    variable DJANGO_SECRET_KEY. Only with ``debug`` does a missing key fall back to a random one per process
    (click tokens then die with the process, and do not work across workers)."""
    secret_key = secret_key or os.environ.get("DJANGO_SECRET_KEY")
    if not secret_key:
        if not debug:
            raise RuntimeError("set DJANGO_SECRET_KEY (e.g. $(openssl rand -hex 32)): it signs the click tokens")
        secret_key = secrets.token_hex(32)
    settings.configure(
        DEBUG=debug,
        SECRET_KEY=secret_key,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["inprocserve_django"],
        MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"],
        INPROCSERVE={"REPOSITORY": str(repository)},
        LOGGING={  # without it, a 500 under DEBUG=False leaves no trace anywhere
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "loggers": {"django.request": {"handlers": ["console"], "level": "WARNING"}},
        },
    )
    django.setup()


# -- views --------------------------------------------------------------------------------------------------

from django.core import signing  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_GET, require_POST  # noqa: E402
from inprocserve_django import get_server  # noqa: E402

ITEMS = catalogue()
CANDIDATES = 15
"""Products drawn per user; a page shows 1 to CANDIDATES of them."""
CLICK_SALT = "recommend.click"
CLICK_MAX_AGE_S = 3600  # the library remembers an interleaving for an hour
MAX_CLICK_BODY = 4096


def bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


def current_user(request: HttpRequest) -> str:
    """Who asks: a query parameter in this example; ``request.user`` behind real authentication."""
    return request.GET.get("user", "anonymous")


@require_GET
def rank(request: HttpRequest) -> JsonResponse:
    """The top products for a page: the user's candidates (a stand-in for candidate generation: 15
    products drawn per user), ranked by ranker A and ranker B, interleaved. Which ranker placed which
    item stays on the server: a page that said so would let a script click for the ranker it favours."""
    size = request.GET.get("size", "8")
    if not size.isdigit() or not 1 <= int(size) <= CANDIDATES:
        return bad_request(f"size must be a whole number from 1 to {CANDIDATES}")
    user = current_user(request)
    seed = int.from_bytes(hashlib.blake2b(user.encode(), digest_size=4).digest(), "big")  # stable per user
    candidates = np.random.default_rng(seed).choice(PRODUCTS, size=CANDIDATES, replace=False)
    ranked = get_server().interleave("ranker", {"items": ITEMS[candidates]}, length=int(size))
    token = signing.dumps({"request_id": ranked.request_id, "user": user}, salt=CLICK_SALT)
    products = [int(candidates[i]) for i in ranked.order]
    return JsonResponse({"click_token": token, "products": products, "positions": ranked.order})


@csrf_exempt  # an API called by scripts; the signed token, not a cookie, ties a click to its page
@require_POST
def click(request: HttpRequest) -> JsonResponse:
    """A click on a page: {"click_token": <from /rank>, "position": <one of the page's positions>}, by the
    user the page was made for."""
    if len(request.body) > MAX_CLICK_BODY:
        return bad_request(f"the body is over {MAX_CLICK_BODY} bytes")
    try:  # RecursionError too: deeply nested JSON exhausts the parser's stack
        body = json.loads(request.body)
    except (ValueError, RecursionError):
        return bad_request('expected a JSON object {"click_token": str, "position": int}')
    token, position = (body.get("click_token"), body.get("position")) if isinstance(body, dict) else (None, None)
    if not isinstance(token, str) or isinstance(position, bool) or not isinstance(position, int):
        return bad_request('expected a JSON object {"click_token": str, "position": int}')
    try:
        page = signing.loads(token, salt=CLICK_SALT, max_age=CLICK_MAX_AGE_S)
    except signing.BadSignature:  # forged, altered or expired (SignatureExpired is one)
        return JsonResponse({"error": "invalid or expired click_token"}, status=403)
    if page["user"] != current_user(request):
        return JsonResponse({"error": "this page was shown to another user"}, status=403)
    team = get_server().record_click(page["request_id"], position, model="ranker")
    if team is None:
        return JsonResponse({"error": "position is not on this page, or the page is forgotten"}, status=404)
    return JsonResponse({"recorded": True})  # not which ranker: that would tell a script whom to click for


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(get_server().status()["models"]["ranker"]["rollout"]["interleaving"] or {})


urlpatterns = [
    path("rank", rank),
    path("click", click),
    path("stats", stats),
    path("-/inprocserve/", include("inprocserve_django.urls")),
]

if os.environ.get("DJANGO_RECOMMEND_REPOSITORY") and not settings.configured:  # under a WSGI/ASGI server
    configure(Path(os.environ["DJANGO_RECOMMEND_REPOSITORY"]))
