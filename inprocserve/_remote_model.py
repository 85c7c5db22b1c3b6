"""Where a remote model version lives: :class:`RemoteModel`, in code or read from a version's ``remote.toml``.

A version folder that holds ``remote.toml`` instead of ``model.onnx`` is served by an Open Inference Protocol
server (Triton, KServe, MLServer, or another inprocserve app) through the same ``predict`` call::

    # models/fraud/3/remote.toml
    url = "http://triton.internal:8000"
    model = "fraud"
    version = "3"
    timeout_s = 2.0
    [headers]
    X-Tenant = "shop"
    [headers_from_env]
    Authorization = "FRAUD_MODEL_TOKEN"   # the header's value is read from this environment variable,
                                          # one the server's INPROCSERVE_REMOTE_ENV lists

Pure configuration: no I/O besides reading the file, and no secret ever reaches a repr, a log or a status
(header values are shown as ``"***"``; credentials in the URL are refused).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ._config_checks import shown
from ._errors import ConfigurationError, ModelLoadError
from ._toml_file import SHOWN_UNKNOWN_KEYS, name_unknown_key, read_toml

__all__ = ["REMOTE_FILENAME", "RemoteModel", "read_remote_toml", "unknown_keys_warning"]

REMOTE_FILENAME = "remote.toml"
"""The file a version folder holds instead of ``model.onnx`` when the version is served remotely."""

DEFAULT_MAX_ROW_BYTES = 16 << 20
"""16 MiB: an FP32 image of 3 x 1024 x 1024 takes 12 MiB, a clip of 16 frames of 3 x 224 x 224 takes 9.2 MiB."""

REMOTE_ENV = "INPROCSERVE_REMOTE_ENV"
"""The environment variable that lists (comma- or space-separated) the variables ``remote.toml``'s
``[headers_from_env]`` may read. The list is the process's, set where its secrets are: a ``remote.toml`` comes
from whoever may write the repository, and names the URL the values are sent to."""

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
# Headers the client writes itself; a configured value would corrupt the request or the trace.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "inference-header-content-length", "host", "traceparent", "tracestate"}
)
_PROTOCOL_PATH = re.compile(r"/v2(?:/models(?:/.*)?)?\Z")
"""A URL path that ends in the protocol's ``/v2`` or names a model under it (``/v2/models/m/versions/3``)."""
_VERSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_TIMEOUT_S = 1e9
"""The longest ``timeout_s`` taken: sockets and thread waits take at most about 9.2e9 s (int64 nanoseconds)."""
# What a header value may hold (RFC 9110 field-value): visible ASCII, spaces and tabs, and obs-text (0x80-0xFF),
# which the HTTP client sends as single Latin-1 bytes. Nothing else can be sent: a character past Latin-1
# fails every request in the client's encoder, a line break would end the header, other controls are refused
# by servers.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _finite_seconds(value: float) -> bool:
    """Whether ``value`` is finite; an int past any float (``10**400``) is not: ``math.isfinite`` raised a bare
    ``OverflowError`` out of the configuration's check."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class _Invalid(Exception):
    """One bad key: the dataclass says it as a ConfigurationError, ``remote.toml`` as a ModelLoadError."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteModel:
    """A model version served by an Open Inference Protocol server, reached over HTTP.

    Thread-safe: immutable. Header values are secrets: they are left out of ``repr`` and shown as ``"***"``
    in status.

    Raises:
        ConfigurationError: on any invalid value; the message names the field and what to fix.
    """

    url: str
    """``http://host:port`` or ``https://host:port``, with an optional path prefix (a gateway's); no
    credentials (send them as a header)."""
    model: str
    """The model's name on the remote server."""
    version: str | None = None
    """The model's version on the remote server; ``None`` lets the server pick (its default version)."""
    timeout_s: float = 10.0
    """Cap on one call (metadata or inference), whatever the request's own deadline; sent to the server too."""
    connect_timeout_s: float = 1.0
    """Cap on opening a connection: how long a server that is down can hold a request."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    """Sent with every request (authorization, tenant); values never appear in logs or status."""
    retries: int = 2
    """Retries of a call that certainly did not run (connection refused, 503, 429), within the deadline."""
    retry_after_send: bool = False
    """Also retry after the request may have reached the server (reset connection, 502, a gateway's 503 for
    its upstream connection reset after it forwarded the request): only for models whose inference has no
    side effects worth protecting, since the server may run it twice. An answer too long for its batch is
    never sent again (it would be as long again)."""
    protocol: str = "http"
    """``"http"`` (REST with the binary tensor extension where the server offers it); gRPC is not supported."""
    concurrency: int = 4
    """Connection slots: the batcher runs this many batches on the remote server at once."""
    binary_tensors: bool | None = None
    """Send and ask for tensors in the binary extension (``None``: when the server lists it in ``GET /v2``).
    Sent as JSON, a ``BYTES`` input takes text only: ``bytes`` that are not UTF-8 are refused."""
    failure_threshold: int = 5
    """Consecutive failed calls that open the circuit breaker (calls then fail fast)."""
    cooloff_s: float = 5.0
    """How long an open circuit fails calls fast before it lets one probe through."""
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
    """The most bytes one row of an input may take, as the server's metadata declares it (dynamic dimensions
    counted as 1): a larger one fails the load. The load sends made-up rows of that size (warm-up, the batch
    axis and run-cost checks), so a metadata typo such as ``[-1, 1000000000]`` took gigabytes per worker."""

    def __post_init__(self) -> None:
        try:
            self._validate()
        except _Invalid as exc:
            raise ConfigurationError(f"RemoteModel {exc.key}: {exc.message}") from None

    def _validate(self) -> None:
        object.__setattr__(self, "url", _url(self.url))
        if not isinstance(self.model, str) or not self.model or len(self.model) > 256 or not self.model.isprintable():
            raise _Invalid("model", f"must be the model's name on the remote server, got {self.model!r}")
        version: Any = self.version  # an int is taken too: version = 3 in remote.toml
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if version is not None and (not isinstance(version, str) or not _VERSION.fullmatch(version)):
            raise _Invalid("version", f'must be a version name such as "3" (letters, digits, ._-), got {version!r}')
        object.__setattr__(self, "version", version)
        for key in ("timeout_s", "connect_timeout_s", "cooloff_s"):
            value = getattr(self, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (value > 0 and _finite_seconds(value))
            ):
                raise _Invalid(key, f"must be a finite number of seconds > 0, got {shown(value)}")
            object.__setattr__(self, key, float(value))
        if self.timeout_s > _MAX_TIMEOUT_S:
            # (it becomes a socket's timeout and the deadline watchdog's wait, which overflow the platform's
            # timers past about 9.2e9 s: the load failed with a bare OverflowError, and the watchdog died of it)
            raise _Invalid(
                "timeout_s", f"must be at most {_MAX_TIMEOUT_S:.0e} s (about 31 years), got {self.timeout_s:.15g}"
            )
        for key, low in (("retries", 0), ("concurrency", 1), ("failure_threshold", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 1024:
                raise _Invalid(key, f"must be an int from {low} to 1024, got {value!r}")
        row = self.max_row_bytes
        if isinstance(row, bool) or not isinstance(row, int) or not 1 <= row <= 1 << 40:
            raise _Invalid("max_row_bytes", f"must be an int of bytes from 1 to 2**40, got {row!r}")
        for key in ("retry_after_send",):
            if not isinstance(getattr(self, key), bool):
                raise _Invalid(key, f"must be true or false, got {getattr(self, key)!r}")
        if self.binary_tensors is not None and not isinstance(self.binary_tensors, bool):
            raise _Invalid("binary_tensors", f"must be true, false or unset (auto), got {self.binary_tensors!r}")
        if self.protocol != "http":
            raise _Invalid(
                "protocol",
                f'only "http" is supported, got {self.protocol!r} (the REST form with binary tensors; '
                "see docs/scaling.md for why not gRPC)",
            )
        object.__setattr__(self, "headers", _headers(self.headers))

    @property
    def path(self) -> str:
        """The model's path on the server: ``/v2/models/<model>[/versions/<version>]``, quoted."""
        path = f"/v2/models/{quote(self.model, safe='')}"
        return path if self.version is None else f"{path}/versions/{quote(self.version, safe='')}"

    @property
    def endpoint(self) -> str:
        """The model's URL, safe to log and show (the URL holds no credentials)."""
        return self.url + self.path

    def describe(self) -> dict[str, Any]:
        """For status pages and logs: every setting, with header values hidden."""
        described = {f.name: getattr(self, f.name) for f in fields(self)}
        described["headers"] = dict.fromkeys(self.headers, "***")
        described["endpoint"] = self.endpoint
        return described


_KEYS = frozenset({f.name for f in fields(RemoteModel)} | {"headers_from_env"})
"""The keys of a ``remote.toml``: :class:`RemoteModel`'s fields and ``[headers_from_env]``."""


def read_remote_toml(path: str | Path, *, ignored: list[str] | None = None) -> RemoteModel:
    """Read a version's ``remote.toml``.

    Keys are :class:`RemoteModel`'s fields (``url`` and ``model`` required); ``[headers]`` holds header
    values, ``[headers_from_env]`` names the environment variable each header's value is read from (so
    tokens stay out of the repository).

    With ``ignored`` (what a server reads), a key this release does not know is appended to it, named with
    the key it is close to (``retires (retries?)``), and left out, not refused, as ``config.toml``'s are: on a
    repository shared by hosts of two releases (a rolling upgrade), a key the newer one reads failed the
    version on every worker of the older one that loaded it (a recycled worker, a restart, a hot reload). The
    first :data:`SHOWN_UNKNOWN_KEYS` are named, then how many more (``"79980 more"``). Without ``ignored``,
    such a key is a ``ModelLoadError``.

    Raises:
        ModelLoadError: the file is unreadable or not TOML, a key is missing (or unknown, without
            ``ignored``), a value is invalid, or a named environment variable is unset; the message names the
            file and the key.
    """
    path = Path(path)
    try:
        document = read_toml(path)
    except ConfigurationError as exc:
        raise ModelLoadError(str(exc)) from None
    unknown = sorted(set(document) - _KEYS)
    if unknown:
        if ignored is None:
            raise ModelLoadError(f"{path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(_KEYS))}")
        ignored.extend(name_unknown_key("", key, _KEYS) for key in unknown[:SHOWN_UNKNOWN_KEYS])
        if len(unknown) > SHOWN_UNKNOWN_KEYS:
            ignored.append(f"{len(unknown) - SHOWN_UNKNOWN_KEYS} more")
        document = {key: value for key, value in document.items() if key in _KEYS}
    for required in ("url", "model"):
        if required not in document:
            raise ModelLoadError(f'{path}: key {required!r} is missing (for example {required} = "...")')
    arguments = dict(document)
    from_env = arguments.pop("headers_from_env", {})
    if not isinstance(from_env, dict):
        raise ModelLoadError(f"{path}: key 'headers_from_env' must be a table of header = \"ENV_VARIABLE\"")
    headers = arguments.get("headers", {})
    if not isinstance(headers, dict):
        raise ModelLoadError(f"{path}: key 'headers' must be a table of header = \"value\"")
    headers = dict(headers)
    readable = _readable_variables(arguments.get("url")) if from_env else frozenset()
    for name, variable in from_env.items():
        if not isinstance(variable, str) or variable not in readable:
            # Any variable would do otherwise: a remote.toml dropped into the repository (which a hot reload
            # loads) sent the process's DATABASE_URL or cloud keys to the URL it names. (Said the same way
            # whether the variable is set or not, so the file's author learns nothing of the environment.)
            raise ModelLoadError(
                f"{path}: key 'headers_from_env.{name}': environment variable {str(variable)[:100]!r} is not one a "
                f"remote.toml may read: list it in {REMOTE_ENV} in the server's environment (names separated by "
                "commas or spaces; one written NAME@https://host:port is read only by a remote.toml whose url has "
                "that origin)"
            )
        if variable not in os.environ:
            raise ModelLoadError(f"{path}: key 'headers_from_env.{name}': environment variable {variable!r} is not set")
        headers[name] = os.environ[variable]
    arguments["headers"] = headers
    try:
        model = RemoteModel.__new__(RemoteModel)
        for f in fields(RemoteModel):
            default: Any = f.default_factory() if callable(f.default_factory) else f.default
            object.__setattr__(model, f.name, arguments.get(f.name, default))
        model._validate()
    except _Invalid as exc:
        raise ModelLoadError(f"{path}: key {exc.key!r} {exc.message}") from None
    return model


def unknown_keys_warning(path: Path, ignored: list[str]) -> str:
    """The warning for the keys of the ``remote.toml`` at ``path`` that :func:`read_remote_toml` left out
    (its ``ignored``): shown as the model's ``config_warning`` in status, the status page and ``validate``."""
    return (
        f"{path}: this release of inprocserve does not know {', '.join(ignored)}, and serves the version "
        f"without them (written for a newer release? if not, a typo); the keys it knows are "
        f"{', '.join(sorted(_KEYS))}"
    )


def _readable_variables(url: object) -> frozenset[str]:
    """The environment variables a ``remote.toml`` whose ``url`` is this may read: those :data:`REMOTE_ENV`
    lists (itself never). An entry ``NAME@https://host:port`` is read only by a file whose URL has that
    origin: a plain ``NAME`` limits which secret a file dropped into the repository can send, not where to;
    bound, the token reaches only its model server."""
    origin = _origin(url)
    readable = set()
    for entry in os.environ.get(REMOTE_ENV, "").replace(",", " ").split():
        name, bound, to = entry.partition("@")
        if bound and _origin(to) is None:  # (it would never match: say so rather than refuse the name unexplained)
            raise ModelLoadError(
                f"{REMOTE_ENV} entry {entry[:200]!r} binds {name[:100]!r} to what is not an http(s) URL: write "
                "NAME@https://host:port"
            )
        if not bound or (origin is not None and _origin(to) == origin):
            readable.add(name)
    return frozenset(readable) - {REMOTE_ENV, ""}


def _origin(url: object) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL, the port made explicit; None if it is not one."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port if port is not None else (443 if scheme == "https" else 80)


def _url(raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise _Invalid("url", f'must be a string such as "http://host:8000", got {raw!r}')
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise _Invalid("url", f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _Invalid("url", f"must start with http:// or https://, got scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        # Never echo the URL here: it holds the secret.
        raise _Invalid("url", "holds credentials; put them in a header instead (headers = {Authorization = ...})")
    if not parts.hostname:
        raise _Invalid("url", f"has no host, got {raw!r}")
    if parts.query or parts.fragment:
        raise _Invalid("url", f"must not have a query or fragment, got {raw!r}")
    if port == 0:
        raise _Invalid("url", f"has port 0, got {raw!r}")
    path = parts.path.rstrip("/")
    if (protocol := _PROTOCOL_PATH.search(path)) is not None:
        # The model's path is put after it: a model's URL pasted here asked for .../v2/models/m/v2/models/m, a
        # 404 at load that said only "is the model loaded there?". Not stripped: what follows /v2 (another
        # model's name, a version) may not be what model and version say.
        base = f"{parts.scheme}://{parts.netloc}{path[: protocol.start()]}"
        raise _Invalid(
            "url",
            f"is a protocol path ({path[protocol.start() :][:200]!r}); give the server's base URL, {base!r}, and "
            "the model's name and version as model and version",
        )
    return f"{parts.scheme}://{parts.netloc}{path}"


def _headers(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise _Invalid("headers", f"must be a mapping of header name to value, got {type(raw).__name__}")
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise _Invalid("headers", f"{name!r} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise _Invalid("headers", f"{name!r} is set by the client itself; remove it")
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            # The value is a secret: say what is wrong with it, never what it is, nor where.
            raise _Invalid(
                "headers",
                f"the value of {name!r} must be a string HTTP can carry: visible ASCII, spaces and tabs (Latin-1 "
                "letters are sent as single bytes), without line breaks, control characters, or characters past "
                "U+00FF (encode such a value as the server expects, as base64 or percent-encoding)",
            )
        headers[name] = value
    return headers
