"""A small Django project that ranks products with two rankers, interleaved, and learns from clicks.

The whole project (settings, URLs, views) fits in this module; ``run.py`` builds the rankers, serves the
project over HTTP and plays users who click.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def configure(repository: Path) -> None:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["inprocserve_django"],
        MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"],
        INPROCSERVE={"REPOSITORY": str(repository)},
    )
    django.setup()


# -- views --------------------------------------------------------------------------------------------------

from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from inprocserve_django import get_server  # noqa: E402

ITEMS = catalogue()


def rank(request: HttpRequest) -> JsonResponse:
    """The top products for a page: the user's candidates (a stand-in for candidate generation: 15
    products drawn per user), ranked by ranker A and ranker B, interleaved."""
    user = request.GET.get("user", "anonymous")
    seed = int.from_bytes(hashlib.blake2b(user.encode(), digest_size=4).digest(), "big")  # stable per user
    candidates = np.random.default_rng(seed).choice(PRODUCTS, size=15, replace=False)
    ranked = get_server().interleave("ranker", {"items": ITEMS[candidates]}, length=int(request.GET.get("size", 8)))
    products = [int(candidates[i]) for i in ranked.order]
    return JsonResponse(
        {"request_id": ranked.request_id, "products": products, "positions": ranked.order, "teams": ranked.teams}
    )


@csrf_exempt
def click(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    team = get_server().record_click(body["request_id"], body["position"], model="ranker")
    return JsonResponse({"credited": team})


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(get_server().status()["models"]["ranker"]["rollout"]["interleaving"] or {})


urlpatterns = [
    path("rank", rank),
    path("click", click),
    path("stats", stats),
    path("-/inprocserve/", include("inprocserve_django.urls")),
]

if os.environ.get("DJANGO_RECOMMEND_REPOSITORY") and not settings.configured:
    configure(Path(os.environ["DJANGO_RECOMMEND_REPOSITORY"]))
