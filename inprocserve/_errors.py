"""The one exception hierarchy of inprocserve.

::

    InprocserveError
    ├── ConfigurationError        (+ValueError)   bad config values or config.toml
    │   ├── ConfigurationTypeError (+TypeError)   a setting of the wrong kind (a dict for a ModelConfig)
    │   └── ControlFileUnavailableError           the control file or its lock cannot be used
    ├── ModelNotFoundError        (+LookupError)  unknown model or version
    ├── ModelLoadError                            a model file that cannot become a session
    ├── InferenceError                            onnxruntime failed while running a request
    │   ├── InvalidInputError     (+ValueError)   the request does not match the model's signature
    │   │   ├── InputTooLargeError                its run needs more memory than this host has
    │   │   └── ContextRefusedError               OpenFeatureFlags cannot read the request's context
    │   ├── OutOfMemoryError                      a run's allocation failed on a host short of memory
    │   ├── RunTimeLimitError                     a run passed its model's time limit (pool.max_run_s)
    │   └── RemoteUnavailableError                a remote model server is down, refused, or failing (5xx)
    ├── OverloadedError                           shed instead of queueing without bound
    │   └── QueueFullError
    ├── DeadlineExceededError     (+TimeoutError) the request's deadline passed before it ran
    ├── ServerClosedError                         the server (or version) no longer takes requests
    ├── ControlStateUnknownError                  a worker that has never read its damaged control file
    ├── NothingToRollBackError    (+ValueError)   rollback() of a model with no switch recorded to undo
    └── PromotionRefusedError                     a guarded promotion found the candidate out of bounds

Every error carries the ``model`` and ``version`` it concerns (``None`` where it does not apply) and
survives pickling, so it can cross a process boundary (gunicorn workers, multiprocessing tests).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "ConfigurationTypeError",
    "ContextRefusedError",
    "ControlFileUnavailableError",
    "ControlStateUnknownError",
    "DeadlineExceededError",
    "InferenceError",
    "InprocserveError",
    "InputTooLargeError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NothingToRollBackError",
    "OutOfMemoryError",
    "OverloadedError",
    "PromotionRefusedError",
    "QueueFullError",
    "RemoteUnavailableError",
    "RunTimeLimitError",
    "ServerClosedError",
]


class InprocserveError(Exception):
    """Base class of every error the library raises on purpose.

    Attributes:
        model: The model name the error concerns, or ``None``.
        version: The model version the error concerns, or ``None``.
    """

    def __init__(self, message: str, *, model: str | None = None, version: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.model = model
        self.version = version

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only context would be lost by BaseException's default pickling.
        return (_rebuild, (type(self), self.message, self.model, self.version, self.__dict__))

    def __str__(self) -> str:
        return self.message


def _rebuild(
    cls: type[InprocserveError], message: str, model: str | None, version: int | None, state: dict[str, Any]
) -> InprocserveError:
    error = cls.__new__(cls)
    InprocserveError.__init__(error, message, model=model, version=version)
    error.__dict__.update(state)
    return error


def failure_text(error: BaseException, model: str, version: int) -> str:
    """``error``'s message for a sentence that already names ``model`` and ``version``: without the lead
    that names them again ("model 'm' version 1: ", "model 'm' version 1 failed to run: "), which a message
    nested in another (a warm-up's failed run in a load failure) repeated up to three times."""
    text = str(error)
    lead = f"model {model!r} version {version}"
    if text.startswith(lead):
        for rest in (": ", " failed to run: "):
            if text.startswith(rest, len(lead)):
                return text[len(lead) + len(rest) :]
    return text


class ConfigurationError(InprocserveError, ValueError):
    """A configuration value (in code or in ``config.toml``) is invalid."""


class ConfigurationTypeError(ConfigurationError, TypeError):
    """A setting of the wrong kind: a dict of flag values for ``flags=``, a provider's class for an instance, a
    ``config.toml``-shaped dict for ``config=``. A ``TypeError`` too, as it was before it had a class of its own."""


class ControlFileUnavailableError(ConfigurationError):
    """The control file or its lock cannot be opened, written or taken (a file-system error, or another
    writer held the lock longer than its timeout): nothing was written; retry, or fix the folder."""


class ModelNotFoundError(InprocserveError, LookupError):
    """No servable model or version answers to the requested name."""


class ModelLoadError(InprocserveError):
    """A model file is missing, corrupt, not ONNX, or failed to build a session or warm up."""


class InferenceError(InprocserveError):
    """onnxruntime failed while running a request that passed validation."""


class InvalidInputError(InferenceError, ValueError):
    """The request's inputs do not match the model's signature; the message says what to fix."""


class InputTooLargeError(InvalidInputError):
    """The request's run asked onnxruntime for more memory than this host has at all (or for a size past any
    number of bytes): no retry can succeed, the input must shrink. The message says how many bytes, and which
    inputs to bound (``[inputs.NAME] max`` in the model's ``config.toml``)."""


class ContextRefusedError(InvalidInputError):
    """:class:`~inprocserve.OpenFeatureFlags`' getters refused the ``context`` they were given (a key that is not
    a string, a value that cannot be read as the plain value it holds): the request's mistake, whoever made the
    read (a provider of the application's own that hands its reads to one). A prediction raises it as the
    :class:`InvalidInputError` naming the model; any other ``InvalidInputError`` a flag provider raises is the
    provider's own failure, which the rollout absorbs."""


class OutOfMemoryError(InferenceError):
    """onnxruntime could not allocate memory for a run, of a size this host could hold when its memory is
    free (or of a size onnxruntime does not say): the host's fault as much as the request's, so a 5xx."""


class RunTimeLimitError(InferenceError):
    """onnxruntime stopped a run that passed its model's limit on one run (``pool.max_run_s``), which no
    caller chose: not the request's deadline (that is :class:`DeadlineExceededError`), but the server's bound
    on what one run may cost. A merged batch cut so is bisected, so its requests that run in time are
    answered. The message names the limit and how to change it."""


class RemoteUnavailableError(InferenceError):
    """A remote model server could not answer: connection refused or reset, a 5xx, a read timeout that is
    not the request's own deadline, or its circuit breaker is open after repeated failures. Retry later."""


class OverloadedError(InprocserveError):
    """The request was shed because the server is at its configured capacity; retry later."""


class QueueFullError(OverloadedError):
    """The batching queue already holds ``max_queue_rows`` rows."""


class DeadlineExceededError(InprocserveError, TimeoutError):
    """The request's deadline passed before its answer was ready; it was not run, or its answer dropped."""


class ServerClosedError(InprocserveError):
    """The server is closed (or closing) and takes no new requests."""


class VersionRetiredError(ServerClosedError):
    """This version stopped taking requests (unloaded or replaced); the server routes the request again. A run
    still in flight when the version's retirement gave up waiting for it is stopped with it. (Internal: a
    caller sees it as the :class:`ServerClosedError` it is.)"""


class ControlStateUnknownError(InprocserveError):
    """This worker has never read its repository's control file, which exists but cannot be read or parsed
    (a hand edit, a sync caught half-way): it does not know the fleet's switches, canaries and kill
    switches, and refuses to route requests rather than undo them. It serves once its watcher reads the
    file (every ``control_interval_s``); retry later, or fix the file."""


class NothingToRollBackError(InprocserveError, ValueError):
    """:meth:`Server.rollback` of a model whose control state records no previous stable version: no switch
    from one version to another was made, so there is no version to go back to. Nothing was changed; to serve
    another version, switch to it. (A ``ValueError`` too, as it was before it had a class of its own.)"""


class PromotionRefusedError(InprocserveError):
    """A guarded promotion compared the candidate with the serving version and refused to switch.

    Attributes:
        report: What was compared and why it failed (samples, max_abs_diff, label_agreement, reason).
    """

    def __init__(
        self,
        message: str,
        *,
        report: dict[str, Any] | None = None,
        model: str | None = None,
        version: int | None = None,
    ) -> None:
        super().__init__(message, model=model, version=version)
        self.report = report or {}
