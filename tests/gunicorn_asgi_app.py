"""A minimal ASGI application for gunicorn's ``asgi`` worker (tests/test_gunicorn_asgi.py): ``POST /score``
awaits ``server.apredict`` on the worker's event loop; each worker builds and warms its server in the
``post_worker_init`` hook (registered below; gunicorn_asgi_conf.py imports the hook)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

import inprocserve

_server: inprocserve.Server | None = None


def server() -> inprocserve.Server:
    global _server
    if _server is None:
        _server = inprocserve.Server(repository=os.environ["INPROCSERVE_TEST_REPOSITORY"])
    return _server


inprocserve.build_after_fork(server, background=False)  # (run in each worker by the post_worker_init hook)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/score":
        rows = np.asarray(json.loads(body)["rows"], dtype=np.float32)
        answer = await server().apredict("scale", {"x": rows})
        document = {"y": answer["y"].tolist(), "pid": os.getpid()}
    else:
        document = {"pid": os.getpid()}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(document).encode()})
