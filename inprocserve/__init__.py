"""inprocserve: serve ONNX models inside a Flask or Django process.

Request coalescing, hot reload and clear errors, with no extra service to run::

    import inprocserve

    server = inprocserve.Server(repository="models/")
    result = server.predict("fraud", {"features": rows}, context={"user_id": user.id})
    result["probability"], result.version
"""

from __future__ import annotations

import logging

from ._config import BatchingConfig, ModelConfig, PaddingConfig, PoolConfig, VersionPolicy, WarmupConfig
from ._errors import (
    ConfigurationError,
    DeadlineExceededError,
    InferenceError,
    InprocserveError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
    QueueFullError,
    ServerClosedError,
)
from ._prediction import Prediction
from ._server import Server

__version__ = "0.1.0"

__all__ = [
    "BatchingConfig",
    "ConfigurationError",
    "DeadlineExceededError",
    "InferenceError",
    "InprocserveError",
    "InvalidInputError",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFoundError",
    "OverloadedError",
    "PaddingConfig",
    "PoolConfig",
    "Prediction",
    "QueueFullError",
    "Server",
    "ServerClosedError",
    "VersionPolicy",
    "WarmupConfig",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
