"""inprocserve: serve ONNX models inside a Flask or Django process.

Request coalescing, hot reload and clear errors, with no extra service to run::

    import inprocserve

    server = inprocserve.Server(repository="models/")
    result = server.predict("fraud", {"features": rows}, context={"user_id": user.id})
    result["probability"], result.version
"""

from __future__ import annotations

import importlib as _importlib
import logging as _logging
import types as _types
import typing as _typing

from ._config import (
    BanditConfig,
    BatchingConfig,
    CacheConfig,
    CanaryConfig,
    DriftConfig,
    InputBounds,
    InterleavingConfig,
    ModelConfig,
    PaddingConfig,
    PoolConfig,
    RolloutConfig,
    ShadowConfig,
    VariantConfig,
    VersionPolicy,
    WarmupConfig,
)
from ._errors import (
    ConfigurationError,
    ConfigurationTypeError,
    ContextRefusedError,
    ControlFileUnavailableError,
    ControlStateUnknownError,
    DeadlineExceededError,
    InferenceError,
    InprocserveError,
    InputTooLargeError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    NothingToRollBackError,
    OutOfMemoryError,
    OverloadedError,
    PromotionRefusedError,
    QueueFullError,
    RemoteUnavailableError,
    RunTimeLimitError,
    ServerClosedError,
)
from ._flags import EnvFlags, FileFlags, FlagError, FlagProvider, InMemoryFlags, OpenFeatureFlags
from ._headers import parse_timeout_ms, parse_user_id
from ._prediction import Prediction
from ._prefork import build_after_fork, check_repository
from ._remote_model import RemoteModel
from ._reports import InterleavedRanking, PromotionReport
from ._server import Server
from ._shadow import ShadowComparison
from ._status_page import STATUS_PAGE_CSP, render_status_page

if _typing.TYPE_CHECKING:
    from . import testing as testing  # (for type checkers: see __getattr__ below)
    from . import v2 as v2

__version__ = "0.1.0"

__all__ = [
    "BanditConfig",
    "BatchingConfig",
    "CacheConfig",
    "CanaryConfig",
    "ConfigurationError",
    "ConfigurationTypeError",
    "ContextRefusedError",
    "ControlFileUnavailableError",
    "ControlStateUnknownError",
    "DeadlineExceededError",
    "DriftConfig",
    "EnvFlags",
    "FileFlags",
    "FlagError",
    "FlagProvider",
    "InMemoryFlags",
    "InferenceError",
    "InprocserveError",
    "InputBounds",
    "InputTooLargeError",
    "InterleavedRanking",
    "InterleavingConfig",
    "InvalidInputError",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFoundError",
    "NothingToRollBackError",
    "OpenFeatureFlags",
    "OutOfMemoryError",
    "OverloadedError",
    "PaddingConfig",
    "PoolConfig",
    "Prediction",
    "PromotionRefusedError",
    "PromotionReport",
    "QueueFullError",
    "RemoteModel",
    "RemoteUnavailableError",
    "RolloutConfig",
    "RunTimeLimitError",
    "STATUS_PAGE_CSP",
    "Server",
    "ServerClosedError",
    "ShadowComparison",
    "ShadowConfig",
    "VariantConfig",
    "VersionPolicy",
    "WarmupConfig",
    "__version__",
    "build_after_fork",
    "check_repository",
    "parse_timeout_ms",
    "parse_user_id",
    "render_status_page",
]

# Exported classes and functions say where users import them from (``inprocserve.InvalidInputError``,
# not ``inprocserve._errors.InvalidInputError``) in reprs, tracebacks and docs. Pickles stay valid:
# pickle finds a class by this name, and every name here is exported.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        if getattr(_obj, "__module__", "").startswith("inprocserve._"):
            _obj.__module__ = __name__
del _name, _obj

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

# Public subpackages that ``import inprocserve`` does not import (each costs tens of milliseconds, and most
# processes never use them), reachable as attributes all the same: ``inprocserve.v2.Limits(...)`` in a
# Django settings module or a Flask app factory (docs/protocol.md) raised AttributeError after a plain
# ``import inprocserve``. (``inprocserve.web`` is imported by the package itself.)
_LAZY_SUBMODULES = frozenset({"testing", "v2"})


def __getattr__(name: str) -> _types.ModuleType:
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (what tab completion offers): the exports, the subpackages and the version."""
    return sorted({*__all__, *_LAZY_SUBMODULES, "web", "__version__"})


del annotations  # (the ``__future__`` import's name: nothing of the package's public face)
