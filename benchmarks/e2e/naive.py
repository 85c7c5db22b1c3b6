"""The "naive" variant's model state, shared by the Flask and Django apps of the end-to-end benchmark: one
``onnxruntime.InferenceSession`` per worker process with onnxruntime's default options, built on first use
and shared by every request of the process (``InferenceSession.run`` is thread-safe)."""

from __future__ import annotations

import os
import threading
from typing import Any

_lock = threading.Lock()
_session: Any = None


def naive_session() -> Any:
    """This process's session for ``E2E_MODEL`` from ``E2E_REPOSITORY`` (version 1), built once."""
    global _session
    session = _session
    if session is None:
        with _lock:
            if _session is None:
                import onnxruntime as ort

                path = os.path.join(os.environ["E2E_REPOSITORY"], os.environ["E2E_MODEL"], "1", "model.onnx")
                _session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            session = _session
    return session


def built_session() -> Any:
    """The session if this process built it already, else ``None`` (an event loop must not block on a build)."""
    return _session
