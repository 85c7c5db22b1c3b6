import json

import numpy as np
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from inprocserve_django import apredict, predict


def score(request: HttpRequest) -> JsonResponse:
    rows = json.loads(request.body)["rows"]
    result = predict(request, "scale", {"x": rows})
    return JsonResponse({"y": result["y"].tolist(), "version": result.version, "variant": result.variant})


async def ascore(request: HttpRequest) -> JsonResponse:
    rows = np.asarray(json.loads(request.body)["rows"], dtype=np.float32)
    result = await apredict(request, "scale", {"x": rows})
    return JsonResponse({"y": result["y"].tolist(), "version": result.version})


def user_loaded(request: HttpRequest) -> JsonResponse:
    """Whether anything evaluated request.user (AuthenticationMiddleware caches it when it is loaded)."""
    return JsonResponse({"loaded": hasattr(request, "_cached_user")})


def unknown(request: HttpRequest) -> JsonResponse:
    predict(request, "nope", [[1, 2, 3, 4]])
    return JsonResponse({})


urlpatterns = [
    path("score", score),
    path("ascore", ascore),
    path("unknown", unknown),
    path("user-loaded", user_loaded),
    path("-/inprocserve/", include("inprocserve_django.urls")),
    path("", include("inprocserve_django.v2_urls")),
    path("api/ml/", include("inprocserve_django.v2_urls")),  # the protocol under a prefix too
]
