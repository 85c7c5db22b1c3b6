"""A Flask app serving the Open Inference Protocol in its own process, for the remote backend's tests.

Run as ``python tests/remote_app.py REPOSITORY PORT`` (PORT 0: any free port); prints ``PORT <n>`` once it
listens on 127.0.0.1. A WSGI wrapper records what the remote backend sends (``traceparent``, the ``timeout``
parameter) for ``GET /test/recorded``, and holds an inference request for ``X-Test-Delay-S`` seconds when asked to, so
deadline tests have a slow server without a slow model.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

from flask import Flask
from inprocserve_flask import Inprocserve
from werkzeug.serving import make_server

import inprocserve

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class Recorder:
    """WSGI middleware: remembers each inference request's trace header and parameters."""

    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.seen: list[dict[str, Any]] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/test/recorded":
            with self._lock:
                body = json.dumps(self.seen).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if environ["PATH_INFO"].endswith("/infer"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = BytesIO(body)
            json_length = int(environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH") or len(body))
            document = json.loads(body[:json_length])
            with self._lock:
                self.seen.append(
                    {
                        "path": environ["PATH_INFO"],
                        "traceparent": environ.get("HTTP_TRACEPARENT"),
                        "parameters": document.get("parameters", {}),
                        "binary": "HTTP_INFERENCE_HEADER_CONTENT_LENGTH" in environ,
                    }
                )
            delay = environ.get("HTTP_X_TEST_DELAY_S")
            if delay:
                time.sleep(min(float(delay), 30.0))
        return self._app(environ, start_response)


def main() -> None:
    repository, port = sys.argv[1], int(sys.argv[2])
    app = Flask(__name__)
    app.config.update(
        INPROCSERVE_REPOSITORY=repository,
        INPROCSERVE_MODEL_CONFIG=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()),
        INPROCSERVE_V2_PROTOCOL=True,
    )
    Inprocserve(app)
    app.wsgi_app = Recorder(app.wsgi_app)  # type: ignore[method-assign]
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
