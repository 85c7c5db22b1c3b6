"""Former home of the onnxruntime code, kept so existing imports keep working.

The onnxruntime backend lives in ``_ort_backend.py`` and its runtime-free rules in ``_ort_rules.py``; the
runners lent to workers in ``_pool.py``.
"""

from __future__ import annotations

from ._ort_backend import onnxruntime_error_types, session_options
from ._ort_rules import (
    RUN_ERROR_MAP,
    onnxruntime_version,
    resolve_providers,
    thread_budget,
    translate_run_error,
    usable_cores,
)

__all__ = [
    "RUN_ERROR_MAP",
    "onnxruntime_error_types",
    "onnxruntime_version",
    "resolve_providers",
    "session_options",
    "thread_budget",
    "translate_run_error",
    "usable_cores",
]
