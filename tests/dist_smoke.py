"""Run inside a fresh venv holding only the built wheels and their dependencies (tests/test_dist.py).

Predicts once through the core, once through a Flask app and once through a Django project, each over
its framework's real request cycle, and prints what it saw as JSON. Argument: a model repository with
``scale`` version 1 (y = 2x, x[batch, 4]).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPOSITORY = Path(sys.argv[1])
ROWS = [[1.0, 2.0, 3.0, 4.0]]


def core() -> dict[str, Any]:
    import inprocserve

    with inprocserve.Server(repository=REPOSITORY) as server:
        result = server.predict("scale", np.asarray(ROWS, np.float32))
        return {"y": result["y"].tolist(), "version": result.version, "file": inprocserve.__file__}


def flask_app() -> dict[str, Any]:
    from flask import Flask, request
    from inprocserve_flask import Inprocserve, predict

    app = Flask("smoke")
    app.config["INPROCSERVE_REPOSITORY"] = str(REPOSITORY)
    extension = Inprocserve(app)

    @app.post("/score")
    def score() -> dict[str, Any]:
        result = predict("scale", {"x": np.asarray(request.get_json()["rows"], np.float32)})
        return {"y": result["y"].tolist(), "version": result.version}

    try:
        response = app.test_client().post("/score", json={"rows": ROWS})
        ready = app.test_client().get("/-/inprocserve/ready")
        return {"status": response.status_code, **response.get_json(), "ready": ready.get_json()["ready"]}
    finally:
        extension.close(app)


def score_view(request: Any) -> Any:
    from django.http import JsonResponse
    from inprocserve_django import predict

    result = predict(request, "scale", {"x": np.asarray(json.loads(request.body)["rows"], np.float32)})
    return JsonResponse({"y": result["y"].tolist(), "version": result.version})


def django_project() -> dict[str, Any]:
    import django
    from django.conf import settings
    from django.urls import include, path

    settings.configure(
        SECRET_KEY="smoke-test-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=["inprocserve_django"],
        MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"],
        ROOT_URLCONF=__name__,
        INPROCSERVE={"REPOSITORY": REPOSITORY},
    )
    django.setup()
    global urlpatterns
    urlpatterns = [path("score", score_view), path("-/inprocserve/", include("inprocserve_django.urls"))]
    from django.core.management import call_command
    from django.test import Client
    from inprocserve_django import reset_server

    call_command("check")  # the app's system checks pass on this configuration
    try:
        response = Client().post("/score", data=json.dumps({"rows": ROWS}), content_type="application/json")
        ready = Client().get("/-/inprocserve/ready")
        return {"status": response.status_code, **response.json(), "ready": ready.json()["ready"]}
    finally:
        reset_server()


urlpatterns: list[Any] = []

if __name__ == "__main__":
    print(json.dumps({"core": core(), "flask": flask_app(), "django": django_project()}))
