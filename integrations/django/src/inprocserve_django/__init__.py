"""Django app for inprocserve.

::

    INSTALLED_APPS = [..., "inprocserve_django"]
    MIDDLEWARE = [..., "inprocserve_django.middleware.InprocserveMiddleware"]
    INPROCSERVE = {"REPOSITORY": BASE_DIR / "models"}

    from inprocserve_django import predict, apredict

    def score(request):
        result = predict(request, "fraud", {"x": rows})
        return JsonResponse({"probability": result["y"][:, 1].tolist()})
"""

from __future__ import annotations

from .server import OutsideRequestError, aget_server, apredict, close_server, get_server, predict, reset_server

__all__ = ["OutsideRequestError", "aget_server", "apredict", "close_server", "get_server", "predict", "reset_server"]
