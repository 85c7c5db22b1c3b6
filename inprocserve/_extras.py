"""Optional dependencies: import one, or say which extra installs it.

Every feature that needs a package the core does not depend on asks for it here, so a missing package
always ends in the same message: what needs it, and the ``pip install 'inprocserve[EXTRA]'`` that fixes it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

EXTRAS: dict[str, str] = {
    "quantize": "INT8 quantization (python -m inprocserve quantize): onnx",
    "otel": "an OpenTelemetry SDK and OTLP exporter to send the library's spans and metrics",
    "openfeature": "the OpenFeature SDK, for OpenFeatureFlags",
    "testing": "onnx, for the model builders of inprocserve.testing",
    "remote": "urllib3, the HTTP client of remote models (RemoteModel, remote.toml)",
}
"""Extra name -> what it installs, as the docs and error messages describe it."""


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise an ``ImportError`` naming the extra that installs it.

    Args:
        module: the module to import, e.g. ``"onnx"``.
        extra: the ``inprocserve`` extra that installs it (a key of ``EXTRAS``).
        feature: what needs it, as the user knows it, e.g. ``"quantize"``.

    Raises:
        ImportError: the module (or one it imports) is missing; ``name`` is the missing module.
        ValueError: ``extra`` is not one of the project's extras (a bug in the caller).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        raise ImportError(f"{feature} needs {missing}: pip install 'inprocserve[{extra}]'", name=missing) from exc
