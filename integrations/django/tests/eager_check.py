"""Run by the Django eager-mode test in a fresh interpreter: django.setup() with INPROCSERVE["EAGER"]."""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings

settings.configure(
    **{
        name: getattr(__import__("testproject_settings"), name)
        for name in ("SECRET_KEY", "INSTALLED_APPS", "MIDDLEWARE", "ROOT_URLCONF", "DATABASES", "USE_TZ")
    },
    INPROCSERVE={"REPOSITORY": sys.argv[1], "EAGER": True, "FOLLOW_SYMLINKS": sys.argv[2:] == ["follow"]},
)
try:
    django.setup()  # the eager check runs in AppConfig.ready()
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
from inprocserve_django import server  # noqa: E402

before = {"onnxruntime": "onnxruntime" in sys.modules, "onnx": "onnx" in sys.modules}
server.warm_after_fork()  # what each forked worker runs right after the fork
print(json.dumps({"before": before, "models": server.get_server().models}))
