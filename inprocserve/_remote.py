"""A :class:`~inprocserve._backend.Backend` whose model runs on an Open Inference Protocol server.

Triton, KServe, MLServer and the inprocserve plug-ins all speak the protocol's REST form; the batcher in
front of this backend is the same as for onnxruntime, so requests are validated, coalesced and batched
locally and each batch is **one** inference call. What this module adds on top of the HTTP client
(:mod:`inprocserve._oip_client`) and the codec (:mod:`inprocserve.v2`):

* the signature, from the remote model's metadata (``-1`` dimensions are dynamic);
* deadlines, sent as the protocol's ``timeout`` parameter (microseconds) and enforced locally over the whole
  call (the HTTP client's watchdog shuts the socket when it runs out);
* retries only where they cannot run a request twice (connection refused, 503, 429, but a gateway's 503 for
  an upstream reset after it forwarded the request; metadata GETs; never a certificate not trusted), with
  jittered exponential backoff that honours a short ``Retry-After``, and always within the deadline;
* a circuit breaker (:mod:`inprocserve._circuit`) so a server that is down, or hung, fails calls fast;
* the W3C ``traceparent`` of the batch's span, so the remote server's spans join the trace;
* fork safety: no connection crosses a fork.

Errors: 400/422 -> :class:`InvalidInputError` (the batcher bisects to the bad request), unless the model's
``/ready`` then says it is not ready (a model still loading: :class:`RemoteUnavailableError`); 404 ->
:class:`ModelLoadError` in :meth:`prepare`, :class:`InferenceError` in :meth:`run`; 504 and timeouts ->
:class:`DeadlineExceededError`; 5xx, a redirect (never followed), refused or reset connections, an answer cut
short (one without a length, ended by a close, that is not whole), an open circuit ->
:class:`RemoteUnavailableError`; a call in flight when :meth:`RemoteBackend.close` ends it, or a shadow call
when its server closes (``_stop_signal``) -> :class:`ServerClosedError` (not counted against the server).
"""

from __future__ import annotations

import datetime
import email.utils
import itertools
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Span

from . import _fork, _stop_signal
from ._backend import Backend, whole_batch
from ._circuit import CircuitBreaker
from ._errors import (
    DeadlineExceededError,
    InferenceError,
    InprocserveError,
    InvalidInputError,
    ModelLoadError,
    RemoteUnavailableError,
    ServerClosedError,
    VersionRetiredError,
)
from ._log_limit import LogLimit
from ._oip_client import MAX_RESPONSE_BYTES, HttpClient, HttpResponse, TransportError
from ._remote_model import DEFAULT_MAX_ROW_BYTES, RemoteModel
from ._signature import Signature, TensorSpec
from ._stop_signal import THIS_THREAD
from .v2._client_codec import decode_checked_response, encode_infer_request
from .v2._codec import Limits, TensorHeader
from .v2._datatypes import DATATYPES, onnx_of_datatype

__all__ = ["RemoteBackend", "RemoteSlot", "signature_from_metadata"]

logger = logging.getLogger(__name__)


def _gevent_stop_signal() -> None:
    """gevent patched the process after this module was imported: read its module's renewed ``THIS_THREAD``,
    one per greenlet (its module's hook ran before this one: see _stop_signal)."""
    global THIS_THREAD
    THIS_THREAD = _stop_signal.THIS_THREAD


_fork.on_monkey_patch(_gevent_stop_signal)

_E = TypeVar("_E", bound=InprocserveError)

_BACKOFF_S = 0.05  # first retry waits up to this (full jitter), doubling each time
_BACKOFF_CAP_S = 1.0
_HUNG_FACTOR = 4.0  # a call cut short by its caller's deadline after this many times the usual answer time,
_HUNG_FLOOR_S = 0.1  # and after at least this long, may say the server hangs
_TYPICAL_WEIGHT = 0.2  # of each new answer time in the running average of answer times
# The remote server is trusted to answer with its model's outputs: only the protocol's shape is checked.
_RESPONSE_LIMITS = Limits(max_elements=1 << 40, max_tensors=1 << 16)
# How long an answer may be, when the signature fixes how many numbers a batch's outputs hold: generous for a
# number in JSON (a float64's longest is 24 characters; some servers indent), and room for the document around
# and for outputs the metadata does not declare (a server answers every output of its model).
_ANSWER_BYTES_PER_ELEMENT = 128
_ANSWER_SLACK_BYTES = 4 << 20
# A protocol document (server or model metadata, readiness) is a few kilobytes, a hundred for a model of
# thousands of tensors; one past this is refused as it is read (a gigabyte of JSON held a load for a minute).
_DOCUMENT_MAX_BYTES = 16 << 20


class _CutShort(Exception):
    """An answer whose end was the connection's close (no length said) that is not a whole answer: cut short."""


@dataclass(frozen=True, slots=True)
class RemoteSlot:
    """A runner: one of the backend's connection slots, owned by one batcher worker."""

    index: int


def signature_from_metadata(
    document: object, *, where: str, binary: bool = True, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
) -> Signature:
    """Build a :class:`Signature` from a model metadata document (``GET /v2/models/<name>``).

    ``binary``: tensors are sent in the binary extension, where a ``BYTES`` element carries any bytes (an
    encoded image, say). Without it (``False``) they are sent as JSON, whose strings carry text only: a
    ``BYTES`` input then takes text, and ``bytes`` that are UTF-8 text, as an ONNX string tensor does; other
    bytes are refused before they are queued (sent, each byte that is not UTF-8 became U+FFFD, so two
    different images reached the model server as the same input).

    ``max_row_bytes``: the most one row of an input may take (its fixed dimensions; dynamic ones count as
    1, as in the rows the load makes up). The load sends such rows, several at once, before it can serve: an
    input declared ``[-1, 100000000]`` took the load 6.1 GiB and 24 s, and at ``1e9`` a row every worker
    would be killed for its memory as it started.

    An output listed with an ONNX sequence or map type (what an inprocserve server lists for a ZipMap's maps,
    which the protocol cannot carry) is left out, with a warning: the version serves the other outputs.

    Raises:
        ModelLoadError: the document lists no inputs or no tensor outputs, or a tensor with an unknown datatype or a
            malformed shape, or an input whose row takes more than ``max_row_bytes``; ``where`` (the
            endpoint) starts the message.
    """
    if not isinstance(document, dict):
        raise ModelLoadError(f"{where}: the model metadata is not a JSON object")
    specs: dict[str, list[TensorSpec]] = {}
    skipped: list[str] = []
    for kind in ("inputs", "outputs"):
        entries = document.get(kind)
        if not isinstance(entries, list) or not entries:
            raise ModelLoadError(
                f"{where}: the model metadata lists no {kind}; declare them on the server (MLServer: "
                f"'{kind}' in model-settings.json; Triton: config.pbtxt; KServe's Python server: the model's "
                f"get_{kind[:-1]}_types())"
            )
        specs[kind] = []
        for entry in entries:
            name = entry.get("name") if isinstance(entry, dict) else None
            datatype = entry.get("datatype") if isinstance(entry, dict) else None
            shape = entry.get("shape") if isinstance(entry, dict) else None
            onnx_type = onnx_of_datatype(datatype) if isinstance(datatype, str) else None
            if kind == "outputs" and isinstance(name, str) and name and _is_not_a_tensor(datatype):
                # A ZipMap's maps (what skl2onnx's classifiers answer) are listed by an inprocserve server as
                # their ONNX type, seq(map(...)), and never sent: leave the output out, serve the others.
                skipped.append(f"{name} ({datatype})")
                continue
            if not isinstance(name, str) or not name or onnx_type is None or not isinstance(shape, list):
                raise ModelLoadError(
                    f"{where}: {kind} entry {str(entry)[:200]} needs a name, a datatype among "
                    f"{', '.join(DATATYPES)} and a shape list"
                )
            if any(isinstance(d, bool) or not isinstance(d, int) or d < -1 for d in shape):
                raise ModelLoadError(f"{where}: tensor {name!r} has shape {shape}; dimensions must be ints >= -1")
            dims = tuple(None if d == -1 else d for d in shape)
            assert isinstance(datatype, str)
            if kind == "inputs":
                _check_row_bytes(name, datatype, shape, where=where, max_row_bytes=max_row_bytes)
            # a BYTES tensor carries any bytes to a model server (an image, say), not only UTF-8 text, when
            # tensors are sent as binary; as JSON, only text
            raw_bytes = binary and datatype == "BYTES"
            specs[kind].append(TensorSpec(name, onnx_type, DATATYPES[datatype], dims, raw_bytes=raw_bytes))
    if skipped:
        if not specs["outputs"]:
            raise ModelLoadError(
                f"{where}: the model's outputs ({', '.join(skipped)}) are all values the protocol cannot carry "
                "(no tensor); export the model with tensor outputs (skl2onnx: options={'zipmap': False})"
            )
        logger.warning(
            "%s: outputs %s are not tensors, which the protocol cannot carry; this version answers without them",
            where,
            ", ".join(skipped),
        )
    return Signature(specs["inputs"], specs["outputs"])


def _is_not_a_tensor(datatype: object) -> bool:
    """Whether a metadata datatype is an ONNX sequence or map type (``seq(map(int64,tensor(float)))``), which
    an inprocserve server lists for a ZipMap output and no server sends."""
    return isinstance(datatype, str) and datatype.startswith(("seq(", "map(", "opt("))


def _check_row_bytes(name: str, datatype: str, shape: list[int], *, where: str, max_row_bytes: int) -> None:
    elements = math.prod(d for d in shape if d != -1)  # (a Python int: no overflow, whatever the document says)
    row_bytes = elements * DATATYPES[datatype].itemsize  # (BYTES: numpy's object pointers, 8 bytes each)
    if row_bytes > max_row_bytes:
        raise ModelLoadError(
            f"{where}: input {name!r} is declared of shape {shape} ({datatype}): one row of it takes {row_bytes} "
            f"bytes, more than max_row_bytes = {max_row_bytes}; fix the shape in the server's metadata, or, if "
            "rows that large are meant, raise max_row_bytes in remote.toml (the load sends several such rows)"
        )


class RemoteBackend:
    """One model version served by an Open Inference Protocol server.

    Thread-safe: the batcher's workers call :meth:`run` concurrently, each with its own :class:`RemoteSlot`;
    the connection pool holds ``remote.concurrency`` connections, one per worker, so a worker never waits for
    another's connection.

    Args:
        model: The local model name (errors and spans carry it).
        version: The local version number.
        remote: Where the model runs.
        clock: Monotonic seconds, for deadlines and the circuit breaker (a ``ManualClock`` in tests).
        sleep: Waits between retries (``time.sleep``).
        rng: Draws the retry jitter.
    """

    def __init__(
        self,
        model: str,
        version: int,
        remote: RemoteModel,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(remote, RemoteModel):
            raise TypeError(f"remote must be an inprocserve.RemoteModel, got {type(remote).__name__}")
        self.model = model
        self.version = version
        self.remote = remote
        self._clock = clock
        self._closing = threading.Event()  # set by close(): ends a wait before a retry at once
        self._sleep = self._closing.wait if sleep is None else sleep
        self._rng = rng or random.Random()
        self._slots = [RemoteSlot(i) for i in range(remote.concurrency)]
        self._lock = threading.Lock()
        self._client: HttpClient | None = None
        self._signature: Signature | None = None
        self._binary = bool(remote.binary_tensors)
        self._circuit_log = LogLimit(clock=clock)  # when the circuit opening was last logged
        self._breaker = self._new_breaker()
        self._closed = False
        self._calls = 0
        self._failures = 0
        self._retries = 0
        self._last_error: str | None = None
        self._typical_s: float | None = None  # running average of how long answered calls took
        self._answered_at = float("-inf")  # when the last call was answered (clock time)
        self._converted_outputs: set[str] = set()  # outputs answered in another width (logged once each)
        self._hang_counted_at = float("-inf")  # when a caller-bound timeout last counted as a hang
        self._new_request_ids()
        # Keys of the remote.toml it was read from that this release left out (set by the factory that read
        # it): shown as the model's config_warning for as long as this version is loaded.
        self.config_warning: str | None = None
        _fork.register(self)

    # -- Backend ---------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return "remote"

    @property
    def concurrency(self) -> int:
        return self.remote.concurrency

    @property
    def providers(self) -> list[str]:
        return [f"remote:{self.remote.endpoint}"]

    @property
    def signature(self) -> Signature | None:
        """The remote model's inputs and outputs, once :meth:`prepare` has read its metadata."""
        return self._signature

    def prepare(self, warmup: Callable[[Any], None] | None = None, *, probe_rows: int = 1) -> Signature:
        """Read the remote model's metadata and check that it is ready; run ``warmup`` on every slot.

        Raises:
            ModelLoadError: the server is unreachable, has no such model or version, its metadata is not
                usable, or the model is not ready.
            ServerClosedError: :meth:`close` was called.
        """
        del probe_rows  # nothing to tune: the remote server batches as it is configured to
        self._check_open()
        remote = self.remote
        if remote.binary_tensors is None:
            server = self._get_json("/v2", missing_ok=True)
            extensions = server.get("extensions") if isinstance(server, dict) else None
            self._binary = isinstance(extensions, list) and "binary_tensor_data" in extensions
        signature = signature_from_metadata(
            self._get_json(remote.path),
            where=remote.endpoint,
            binary=self._binary,
            max_row_bytes=remote.max_row_bytes,
        )
        self._get_json(remote.path + "/ready", body=False)  # 200 means ready (Triton's body is empty)
        with self._lock:
            self._signature = signature
        if warmup is not None:
            for slot in self._slots:
                warmup(slot)
        return signature

    def runners(self) -> list[Any]:
        # No I/O, in a forked child too: a slot is a permit, and connections are opened on first use.
        return list(self._slots)

    def run(
        self,
        runner: Any,
        feeds: Mapping[str, np.ndarray],
        *,
        timeout_s: float | None = None,
        parent: Span | None = None,
    ) -> list[np.ndarray]:
        """Send one batch as one inference request; return its outputs in signature order.

        Raises:
            InvalidInputError: the server refused these values (400/422, its model ready), or ``feeds`` lacks one of the
                signature's inputs (the batcher never sends such feeds).
            DeadlineExceededError: ``timeout_s`` (or ``remote.timeout_s``) ran out, or the server said 504.
            RemoteUnavailableError: refused or reset connection, a 5xx, a redirect (301, 302, 307, 308: not
                followed), a 400/422 from a model that is not ready (loading), or the circuit is open.
            InferenceError: 404, or an answer that is not the model's outputs (or outputs in another width
                whose values the declared type cannot hold).
            ServerClosedError: :meth:`close` was called, before the call or while it was in flight.
        """
        del runner  # the pool hands out connections; the slot only bounds how many run at once
        self._check_open()
        signature = self._signature
        if signature is None:  # used without prepare() (the Server always prepares at load)
            try:
                signature = self.prepare()
            except ModelLoadError as exc:  # run() raises InferenceError subclasses only
                raise self._error(RemoteUnavailableError, str(exc)) from None
        remote = self.remote
        caller_binds = timeout_s is not None and timeout_s < remote.timeout_s
        limit_s = remote.timeout_s if timeout_s is None else min(timeout_s, remote.timeout_s)
        if limit_s <= 0:
            raise self._deadline("the deadline had passed before the remote call")
        ticket = self._breaker.acquire()
        if ticket is None:
            raise RemoteUnavailableError(
                f"model {self.model!r} version {self.version}: {remote.endpoint} failed "
                f"{self._breaker.consecutive_failures} calls in a row (last: {self._last_error}); failing fast "
                f"for {self._breaker.retry_in_s():.1f} s more before trying again",
                model=self.model,
                version=self.version,
            )
        try:
            return self._call(signature, feeds, limit_s=limit_s, caller_binds=caller_binds, parent=parent)
        finally:
            if ticket == "probe":  # a probe that ended without a verdict (any exception) must not stay out
                self._breaker.release()

    def _call(
        self,
        signature: Signature,
        feeds: Mapping[str, np.ndarray],
        *,
        limit_s: float,
        caller_binds: bool,
        parent: Span | None,
    ) -> list[np.ndarray]:
        remote = self.remote
        deadline = self._clock() + limit_s
        missing = [spec.name for spec in signature.inputs if spec.name not in feeds]
        if missing:  # the batcher feeds what the signature names: only a caller of run() itself gets here
            raise self._error(
                InvalidInputError,
                f"no value for input(s) {', '.join(map(repr, missing))}; the remote model takes "
                f"{', '.join(spec.describe() for spec in signature.inputs)}",
                count=False,
            )
        ordered = {spec.name: feeds[spec.name] for spec in signature.inputs}
        first = next(iter(ordered.values()), None)
        rows = 1 if first is None or first.ndim == 0 else first.shape[0]  # a scalar input is one row
        max_bytes = _answer_cap(signature, rows)
        trace_headers: dict[str, str] = {}
        # (no request span, INVALID_SPAN: the caller's own trace context, if this runs on its thread)
        propagate.inject(
            trace_headers,
            context=None if parent is None or parent is INVALID_SPAN else trace.set_span_in_context(parent),
        )
        with self._lock:
            self._calls += 1
        request_id = f"{self._id_prefix}-{next(self._ids)}"  # (the same for each attempt: one request)
        stop = THIS_THREAD.signal  # (the shadow thread's: see _stop_signal)
        attempt = 0
        while True:
            if stop is not None and stop.stopped:  # the server closed: a shadow call is not retried
                raise self._closed_error(in_flight=attempt > 0)
            remaining = deadline - self._clock()
            if remaining <= 0:  # spent on retries, each failure judged already: no sign of a hang here
                raise self._timed_out(caller_binds=caller_binds, limit_s=limit_s, sent_at=None)
            try:
                body, headers = encode_infer_request(
                    ordered,
                    binary=self._binary,
                    binary_output=self._binary,
                    request_id=request_id,
                    parameters={"timeout": max(1, int(remaining * 1e6))},
                )
            except InvalidInputError as exc:  # bytes JSON cannot carry: the batcher bisects to the request
                raise self._error(
                    InvalidInputError,
                    f"{exc} ({self.remote.endpoint} is sent JSON tensors: binary_tensors = true sends binary "
                    "ones, if the server takes the binary tensor extension)",
                    count=False,
                ) from None
            sent_at = self._clock()
            try:
                response = self._http().request(
                    "POST",
                    remote.path + "/infer",
                    body=body,
                    headers={**headers, **trace_headers},
                    timeout_s=remaining,
                    max_bytes=MAX_RESPONSE_BYTES if max_bytes is None else max_bytes,
                )
            except TransportError as exc:
                if self._closed or (stop is not None and stop.stopped):
                    # close() ended the call (or its pool), or the server's close its shadow call: that says
                    # nothing about the remote server
                    raise self._closed_error(in_flight=True) from None
                # (not a certificate the system does not trust: refused the same way again)
                retry = (not exc.sent or (remote.retry_after_send and not exc.too_long)) and not exc.lasting
                if retry and self._backoff(attempt, deadline):
                    attempt += 1
                    continue
                if exc.timed_out:
                    raise self._timed_out(
                        caller_binds=caller_binds, limit_s=limit_s, sent_at=sent_at, deadline=deadline
                    ) from None
                if exc.too_long and max_bytes is not None:
                    raise self._unavailable(
                        f"{exc}, more than the declared outputs of a batch of {rows} rows can take"
                    ) from None
                raise self._unavailable(str(exc)) from None
            if response.status == 200:
                self._answered_in(sent_at)
                cut = False
                try:
                    return self._outputs(signature, response, rows, deadline=deadline, limit_s=limit_s)
                except _CutShort as exc:  # a transport failure, as a connection reset mid-answer is
                    cut = True  # (no success first: a server cutting every answer never opened the circuit)
                    if remote.retry_after_send and self._backoff(attempt, deadline):
                        attempt += 1
                        continue
                    raise self._unavailable(str(exc)) from None
                except InferenceError as exc:  # the server ran the rows: sending them again would run them again
                    raise whole_batch(exc) from exc.__cause__
                finally:
                    if not cut:  # answered: the server is up, whatever the answer holds
                        self._breaker.success()
            reset = response.status == 503 and _upstream_reset(response)
            if response.status in (429, 503) and (not reset or remote.retry_after_send):
                retry_after = _retry_after(response)
                if self._backoff(attempt, deadline, at_least_s=retry_after):
                    attempt += 1
                    continue
            if reset and not remote.retry_after_send:
                raise self._unavailable(
                    f"{remote.endpoint}/infer answered 503: {_message(response)} (a gateway whose connection to the "
                    "model server was reset after it forwarded the request: the model may have run, so the "
                    "request is not sent again; retry_after_send = true allows it)"
                )
            if response.status in (400, 422) and not self._model_ready(deadline):
                # The model did not run: the server refused it for not being loaded (MLServer answers 400 "Model
                # x is not ready yet." while it loads one, as after a restart: it serves HTTP before its models
                # are loaded). Taken for the inputs' fault, each batch was bisected down to single requests,
                # every caller was told its inputs were bad (an HTTP 400), and the circuit took the server for
                # up. It is the server's unavailability: retried as a 503 is, and counted for the circuit.
                if self._backoff(attempt, deadline):
                    attempt += 1
                    continue
                raise self._unavailable(
                    f"{remote.endpoint}/infer answered {response.status}: {_message(response)} (and "
                    f"{remote.endpoint}/ready says the model is not ready)"
                )
            raise self._refused(response, caller_binds=caller_binds, sent_at=sent_at, deadline=deadline)

    def health(self) -> str | None:
        if self._closed:
            return "closed"
        if self._breaker.state != "open":
            return None
        return (
            f"the remote server {self.remote.endpoint} is failing ({self._breaker.consecutive_failures} calls in a "
            f"row failed, last: {self._last_error}); calls fail fast for {self._breaker.retry_in_s():.1f} s more"
        )

    def status(self) -> dict[str, Any]:
        with self._lock:
            counters = {"calls": self._calls, "failures": self._failures, "retries": self._retries}
            last_error = self._last_error
            typical = self._typical_s
        return {
            "kind": "remote",
            "remote": self.remote.describe(),
            "binary_tensors": self._binary,
            "circuit": self._breaker.state,
            "consecutive_failures": self._breaker.consecutive_failures,
            "circuit_opened": self._breaker.times_opened,
            "last_error": last_error,
            "usual_answer_ms": None if typical is None else round(typical * 1e3, 3),
            **counters,
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        self._closing.set()
        if client is not None:
            client.close()

    # -- pieces ----------------------------------------------------------------------------------------

    def _new_request_ids(self) -> None:
        """Each inference call is sent with an ``id`` (``<prefix>-<n>``, the prefix drawn per backend and per
        process): the protocol's ``id`` is optional, but a server may echo it where its response requires one.
        A KServe model that answers with ``InferResponse(response_id=payload.id, ...)`` (as its examples do)
        answered every request without an ``id`` 500, a pydantic error (``id: Input should be a valid
        string``), when the answer was JSON: with JSON tensors, every call failed and opened the circuit."""
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)

    def _new_breaker(self) -> CircuitBreaker:
        return CircuitBreaker(
            failure_threshold=self.remote.failure_threshold,
            cooloff_s=self.remote.cooloff_s,
            clock=self._clock,
            on_open=self._circuit_opened,
            on_close=self._circuit_closed,
        )

    # A server that is down fails every call, and each fails at once while the circuit is open: nothing was
    # logged at all, so the fault showed only in status and metrics. The circuit opening is logged (once a
    # minute while failed probes keep opening it again), and its closing once.

    def _circuit_opened(self, failures: int) -> None:
        skipped = self._circuit_log.due()
        if skipped is None:
            return
        reopened = f"; it opened {skipped} more times since the last such line" if skipped else ""
        logger.warning(
            "model %r version %s: the remote server %s failed %d calls in a row (last: %s); calls to it fail fast "
            "for %g s at a time, then one probes it%s",
            self.model,
            self.version,
            self.remote.endpoint,
            failures,
            self._last_error,
            self.remote.cooloff_s,
            reopened,
        )

    def _circuit_closed(self) -> None:
        if self._circuit_log.ended():
            logger.info(
                "model %r version %s: the remote server %s answers again",
                self.model,
                self.version,
                self.remote.endpoint,
            )

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error(in_flight=False)

    def _closed_error(self, *, in_flight: bool) -> ServerClosedError:
        what = (
            "the remote backend was closed while this call was in flight, and ended it (the server may have run it)"
            if in_flight
            else "the remote backend is closed"
        )
        # (a call ended in flight: its version was retired, so a shadow copy of it is dropped, not counted as
        # the shadow version's error, as onnxruntime's runs stopped by a retirement are)
        kind = VersionRetiredError if in_flight else ServerClosedError
        return kind(f"model {self.model!r} version {self.version}: {what}", model=self.model, version=self.version)

    def _http(self) -> HttpClient:
        with self._lock:
            if self._client is None:
                self._check_open()
                remote = self.remote
                self._client = HttpClient(
                    remote.url,
                    max_connections=remote.concurrency,
                    connect_timeout_s=remote.connect_timeout_s,
                    headers=remote.headers,
                )
            return self._client

    def _get_json(self, path: str, *, missing_ok: bool = False, body: bool = True) -> Any:
        """GET a protocol document (``body=False``: only its 200 matters); GETs are idempotent, so every
        transport failure and 503 is retried, but for a document too long (it would be as long again) or a
        certificate the system does not trust (refused the same way again)."""
        where = self.remote.url + path
        deadline = self._clock() + self.remote.timeout_s
        attempt = 0
        while True:
            try:
                response = self._http().request(
                    "GET", path, timeout_s=max(0.001, deadline - self._clock()), max_bytes=_DOCUMENT_MAX_BYTES
                )
            except TransportError as exc:
                if self._closed:
                    raise self._closed_error(in_flight=True) from None
                if not (exc.too_long or exc.lasting) and self._backoff(attempt, deadline):
                    attempt += 1
                    continue
                hint = (
                    " (a protocol document takes a few kilobytes: is the URL the model server's?)"
                    if exc.too_long
                    else ""
                )
                raise ModelLoadError(f"{where}: {exc}{hint}", model=self.model, version=self.version) from None
            retry_after = _retry_after(response)
            if response.status == 503 and self._backoff(attempt, deadline, at_least_s=retry_after):
                attempt += 1
                continue
            if response.status == 200 and not body:
                return None
            if response.status == 200:
                try:
                    return json.loads(response.body)
                except (ValueError, RecursionError):
                    if missing_ok:  # an optional document (GET /v2 behind a gateway that serves a page)
                        return None
                    raise ModelLoadError(
                        f"{where}: the answer is not JSON", model=self.model, version=self.version
                    ) from None
            if missing_ok and response.status in (400, 404):
                return None
            hint = " (is the model loaded there, under this name and version?)" if response.status == 404 else ""
            if 300 <= response.status < 400:
                hint = _redirect_advice(response)
            if response.status == 501 and self.remote.version is not None:
                # KServe's Python model server (0.21) answers 501 "Model versioning not supported yet." to every
                # path under /versions/: it serves one version of a model, reached without one.
                hint = " (the server serves no model versions, as KServe's Python model server: leave version out)"
            raise ModelLoadError(
                _hidden(f"{where} answered {response.status}: {_message(response)}{hint}", self.remote.headers),
                model=self.model,
                version=self.version,
            )

    def _model_ready(self, deadline: float) -> bool:
        """Whether the remote model says it is ready (``GET .../ready`` answered 200), asked after the server
        refused a call's inputs: a server may refuse a model it is still loading so (MLServer's 400). ``True``
        when it cannot tell within the deadline (the refusal then stands as the inputs')."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            return True
        try:
            response = self._http().request(
                "GET", self.remote.path + "/ready", timeout_s=remaining, max_bytes=_DOCUMENT_MAX_BYTES
            )
        except TransportError:
            return True
        return response.status == 200

    def _backoff(self, attempt: int, deadline: float, *, at_least_s: float | None = None) -> bool:
        """Wait before retry ``attempt + 1`` if retries are left and the wait leaves time for the call.
        ``at_least_s`` is the server's ``Retry-After``: the wait honours it up to the backoff's cap (1 s);
        a longer one is not waited for (a batch worker asleep for it would stall the model's queue)."""
        if attempt >= self.remote.retries:
            return False
        wait = self._rng.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_S * 2**attempt))
        if at_least_s is not None:
            if at_least_s > _BACKOFF_CAP_S:
                return False
            wait = max(wait, at_least_s)
        if self._clock() + wait >= deadline:
            return False
        with self._lock:
            self._retries += 1
        self._sleep(wait)
        if self._closed:  # close() ended the wait: the call ends here, as one in flight
            raise self._closed_error(in_flight=True)
        return True

    def _outputs(
        self, signature: Signature, response: HttpResponse, rows: int, *, deadline: float, limit_s: float
    ) -> list[np.ndarray]:
        """The answer's outputs, decoded within the call's deadline: an answer whose shapes fit the batch (a
        dynamic non-batch axis: ``BYTES`` declared ``[-1, -1]``) may still hold millions of elements, and a
        one-row call answered with 4 million text elements took 1.9 s to decode past a 0.5 s deadline. The
        decoding stops when the deadline passes (checked every 65,536 text elements): a
        :class:`DeadlineExceededError`, the batch's every caller's."""
        answered_shapes: list[str] = []

        def checkpoint() -> None:
            if self._clock() > deadline:
                raise self._deadline(
                    f"the answer of {self.remote.endpoint} came within the request's {limit_s:.3g} s, but its "
                    f"outputs ({', '.join(answered_shapes) or 'not read yet'}) took longer than that to decode; "
                    "decoding stopped (an output with a dynamic axis answered that large: give the request a "
                    "longer deadline, or fix what the model answers)"
                )

        def check(answered: Sequence[TensorHeader]) -> set[str]:
            # Before any data is decoded (decoding BYTES costs about 1 us per element, holding the GIL, past the
            # deadline): an answer whose declared shapes cannot fit this batch is refused on its header, and
            # outputs the metadata does not declare are never decoded (they were dropped after decoding).
            declared = {spec.name: spec for spec in signature.outputs}
            answered_shapes[:] = [f"{h.name!r} of shape {list(h.shape)}" for h in answered if h.name in declared][:8]
            for header in answered:
                spec = declared.get(header.name)
                if spec is not None:
                    self._check_answered_shape(spec, header.shape, rows, batchable=signature.batchable)
            return set(declared)

        try:
            decoded = decode_checked_response(
                response.body, response.headers, limits=_RESPONSE_LIMITS, check=check, checkpoint=checkpoint
            )
        except InvalidInputError as exc:  # the server's answer is broken, not the request: no bisecting
            if response.ended_by_close and _cut_short(response):
                # No length said (HTTP/1.0, or Connection: close): the close ended the body, and an answer cut
                # short by one looks whole. Unreadable so, it was taken for the model's fault (an InferenceError,
                # the circuit told the server was fine); with a Content-Length or chunks, urllib3 finds the cut
                # and it is a transport failure (RemoteUnavailableError, counted for the circuit): so is this.
                raise _CutShort(
                    f"the connection closed before the answer's end (it said no Content-Length, so its end is the "
                    f"close, and what came is not a whole inference response: {exc})"
                ) from None
            raise self._bad_answer(f"the answer is not an inference response: {exc}") from None
        asked, answered = self.remote.version, decoded.model_version
        if asked is not None and answered and not _same_version(answered, asked):
            # A gateway between that routes by model name only (a rewrite that drops /versions/N) has the
            # server's default version answer: a canary pinned to a version was served by another, silently.
            raise self._error(
                InferenceError,
                f"the answer of {self.remote.endpoint} was answered by model version {answered[:64]!r}, not the "
                f"{asked!r} asked for; does a proxy or gateway between route by the model's name only?",
            )
        outputs: list[np.ndarray] = []
        for spec in signature.outputs:
            array = decoded.outputs.get(spec.name)
            if array is None:
                has = ", ".join(map(repr, decoded.outputs)) or "none of those the metadata declares"
                raise self._bad_answer(f"the answer has no output {spec.name!r} (it has {has})")
            if signature.batchable and (array.ndim == 0 or array.shape[0] != rows):
                raise self._bad_answer(f"output {spec.name!r} has shape {array.shape} for a batch of {rows} rows")
            if spec.dtype is not None and array.dtype != spec.dtype and _same_kind(array.dtype, spec.dtype):
                array = self._converted(spec, array)
            mismatch = _unlike(spec, array)
            if mismatch:
                raise self._bad_answer(
                    f"output {spec.name!r} is {mismatch}, but the server's metadata declares "
                    f"{spec.describe()}; fix the model's declared outputs on the server, or its answers",
                )
            outputs.append(array)
        return outputs

    def _check_answered_shape(self, spec: TensorSpec, shape: tuple[int, ...], rows: int, *, batchable: bool) -> None:
        """Refuse an output whose declared shape cannot be this batch's answer (the checks ``_outputs`` makes of
        the decoded array, on the shape alone)."""
        if batchable and (not shape or shape[0] != rows):
            raise self._bad_answer(f"output {spec.name!r} has shape {shape} for a batch of {rows} rows")
        if spec.shape is not None and (
            len(shape) != len(spec.shape)
            or any(isinstance(want, int) and want != got for want, got in zip(spec.shape, shape, strict=True))
        ):
            raise self._bad_answer(
                f"output {spec.name!r} is of shape {list(shape)}, but the server's metadata declares "
                f"{spec.describe()}; fix the model's declared outputs on the server, or its answers",
            )

    def _converted(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        """An output of another width of the declared kind (FP64 declared as FP32: common with MLServer's
        scikit-learn runtime) is converted to the declared type, so callers get what the signature says;
        logged once per output, since the metadata should say what the model answers.

        Only when the declared type holds the values: an integer past its range would wrap around, and a
        finite float past its range would become infinity, both silently. Those fail the call instead."""
        assert spec.dtype is not None
        converted, overflow = _narrowed(array, spec.dtype)
        if overflow is not None:
            raise self._error(
                InferenceError,
                f"output {spec.name!r} is answered as {array.dtype} with {overflow}: converted to the "
                f"declared {spec.dtype} they would change; declare the type the model answers in the server's "
                f"metadata (it says {spec.describe()}), or make the model answer values that fit",
            )
        if spec.name not in self._converted_outputs:
            self._converted_outputs.add(spec.name)
            logger.warning(
                "model %r version %s: %s answers output %r as %s, but its metadata declares %s; converting it "
                "(declare the type the model answers on the server to avoid the copy)",
                self.model,
                self.version,
                self.remote.endpoint,
                spec.name,
                array.dtype,
                spec.dtype,
            )
        return converted

    def _half_hint(self) -> str:
        """Advice for a refusal of FP16 tensors sent as JSON numbers, which KServe's server refuses ("Sending
        FP16 data via JSON is not supported"): without it, the only hint for a refused warm-up was a warm-up
        file, and the version never loaded. The binary extension carries them (KServe takes it, unlisted)."""
        signature = self._signature
        if self._binary or signature is None:
            return ""
        halves = [spec.name for spec in signature.inputs if spec.onnx_type == "tensor(float16)"]
        if not halves:
            return ""
        return (
            f"; FP16 tensors ({', '.join(map(repr, halves))}) went as JSON numbers, which some servers refuse "
            "(KServe's): set binary_tensors = true in this version's remote.toml"
        )

    def _refused(
        self, response: HttpResponse, *, caller_binds: bool, sent_at: float, deadline: float | None = None
    ) -> Exception:
        status = response.status
        detail = f"{self.remote.endpoint}/infer answered {status}: {_message(response)}"
        if status in (400, 422):
            self._breaker.success()  # the server is up; the request was wrong
            return self._error(
                InvalidInputError, f"the remote server refused the inputs: {detail}{self._half_hint()}", count=False
            )
        if status == 504:  # the server ran out of the time it was sent: judged as a timeout here is
            late = self._error(DeadlineExceededError, detail)  # (first: the circuit's line names it)
            if self._counts_against_server(caller_binds=caller_binds, sent_at=sent_at, until=deadline):
                self._breaker.failure()
            else:
                self._breaker.release()
            return late
        if status == 429:  # up, but shedding load: not a failure, and the next call may probe
            self._breaker.release()
            wait = _retry_after(response)
            when = "" if wait is None else f" (it asks for {wait:.3g} s before the next call)"
            return self._error(RemoteUnavailableError, f"{self.remote.endpoint} is overloaded: {detail}{when}")
        if status >= 500:
            return self._unavailable(detail)
        if 300 <= status < 400:
            # The model is not served at the configured url (a balancer or gateway sends it elsewhere): the
            # remote is not serving, as a 5xx says. Counted as a success, a balancer answering every call with
            # a redirect never opened the circuit, and each call waited for its answer.
            return self._unavailable(detail + _redirect_advice(response))
        self._breaker.success()
        error = self._error(InferenceError, detail)
        # refused whoever sent it (401, 403, 404 ...): no part of the batch would pass; only one too large
        # for the server (413) may pass in halves
        return error if status == 413 else whole_batch(error)

    def _timed_out(
        self, *, caller_binds: bool, limit_s: float, sent_at: float | None, deadline: float | None = None
    ) -> DeadlineExceededError:
        endpoint = self.remote.endpoint
        if not caller_binds:
            error = self._deadline(f"no answer from {endpoint} within its timeout_s of {limit_s:.3g} s")
            self._breaker.failure()  # the server is slower than its own timeout_s allows
            return error
        if sent_at is not None and self._counts_against_server(caller_binds=True, sent_at=sent_at, until=deadline):
            error = self._deadline(
                f"no answer from {endpoint} within the request's {limit_s:.3g} s, and none to any call since it "
                f"was sent, though its answers take {(self._typical_s or 0) * 1e3:.3g} ms: counted as a failure "
                "of the server"
            )
            self._breaker.failure()
            return error
        self._breaker.release()  # the caller's budget ran out first: that says nothing about the server
        return self._deadline(f"no answer from {endpoint} within the request's {limit_s:.3g} s")

    def _counts_against_server(self, *, caller_binds: bool, sent_at: float, until: float | None = None) -> bool:
        """Whether a call that ran out of time (or was answered 504) says the server is failing.

        Out of the server's own ``timeout_s``: yes. Out of a caller's shorter deadline, only when the server
        looks hung: it has answered calls before (a cold server may just be slow at first), this call waited
        at least ``_HUNG_FACTOR`` times its usual answer time and ``_HUNG_FLOOR_S``, no call was answered
        since this one was sent, and this one was sent after the last hang counted (the calls caught in one
        stall count once, not once each). So a hung server opens the circuit after ``failure_threshold``
        such timeouts in a row, while callers in a hurry, or one short stall, do not open it for everyone.
        ``until``: the call's deadline. It waited until then, not until its timeout was handled: on a loaded
        machine a 0.05 s deadline handled 0.1 s after the send was counted as the server's hang.
        """
        if not caller_binds:
            return True
        now = self._clock()
        waited = (now if until is None else min(now, until)) - sent_at
        with self._lock:
            typical = self._typical_s
            if typical is None or waited < max(_HUNG_FACTOR * typical, _HUNG_FLOOR_S):
                return False
            if self._answered_at >= sent_at or sent_at < self._hang_counted_at:
                return False
            self._hang_counted_at = now
            return True

    def _answered_in(self, sent_at: float) -> None:
        now = self._clock()
        elapsed_s = now - sent_at
        with self._lock:
            typical = self._typical_s
            self._typical_s = elapsed_s if typical is None else typical + _TYPICAL_WEIGHT * (elapsed_s - typical)
            self._answered_at = max(self._answered_at, now)

    def _deadline(self, message: str) -> DeadlineExceededError:
        return self._error(DeadlineExceededError, message)

    def _unavailable(self, message: str) -> RemoteUnavailableError:
        error = self._error(RemoteUnavailableError, f"{self.remote.endpoint} is unavailable: {message}")
        self._breaker.failure()
        return error

    def _bad_answer(self, message: str) -> InferenceError:
        """The error of an answer that cannot be the model's (status 200, its content wrong): the model's
        :class:`InferenceError`, naming the server that answered so (the load balancer's pod, a gateway's route),
        which the message did not: a server whose answers are broken could not be told from the model."""
        return self._error(InferenceError, f"{message} (answered by {self.remote.endpoint})")

    def _error(self, kind: type[_E], message: str, *, count: bool = True) -> _E:
        message = _hidden(message, self.remote.headers)
        with self._lock:
            if count:
                self._failures += 1
            self._last_error = message[:300]
        return kind(f"model {self.model!r} version {self.version}: {message}", model=self.model, version=self.version)

    def _after_fork_in_child(self) -> None:
        # The parent's sockets and lock are not ours: forget them (never close: that would touch the
        # parent's connections); the first call here opens its own. The signature stays the parent's: it
        # is the one the version validates requests against and its batcher was built for, so reading the
        # metadata again could only make the two disagree (a remote redeployed with other inputs since),
        # and the read would run on a caller's thread, outside its deadline. A remote that changed since
        # shows as the server refusing the requests, as it would in the parent.
        self._lock = threading.Lock()
        self._new_request_ids()  # (the parent's prefix would repeat its ids here)
        closing = threading.Event()
        if self._closed:
            closing.set()
        if self._sleep == self._closing.wait:
            self._sleep = closing.wait
        self._closing = closing
        if self._client is not None:
            self._client.forget()
        self._client = None
        self._circuit_log = LogLimit(clock=self._clock)
        self._breaker = self._new_breaker()


if TYPE_CHECKING:  # mypy checks that RemoteBackend keeps the Backend protocol

    def _conforms(backend: RemoteBackend) -> Backend:
        return backend


def _answer_cap(signature: Signature, rows: int) -> int | None:
    """The most bytes an answer to a batch of ``rows`` rows may take, when the signature fixes how many
    numbers its outputs hold (no text output, every dimension but the batch axis fixed); ``None`` otherwise
    (the client's cap on any answer applies).

    An answer is decoded after it is read, outside the call's deadline: without this, a server answering a
    one-row call with 40 MB of JSON held its callers 9 s past a 0.5 s deadline and took a gigabyte of memory
    to find that the answer had the wrong number of rows.
    """
    elements = 0
    for spec in signature.outputs:
        if spec.dtype is None or spec.dtype.kind == "O" or spec.shape is None:
            return None
        count = 1
        for index, dim in enumerate(spec.shape):
            if index == 0 and signature.batchable:
                dim = rows  # (the batch axis, dynamic)
            if not isinstance(dim, int) or dim < 0:
                return None
            count *= dim
        elements += count
    return elements * _ANSWER_BYTES_PER_ELEMENT + _ANSWER_SLACK_BYTES


def _same_version(answered: str, asked: str) -> bool:
    """Whether an answer's ``model_version`` is the version asked for (``"03"`` is ``"3"``: Triton numbers)."""
    if answered.isascii() and answered.isdigit() and asked.isascii() and asked.isdigit():
        return int(answered) == int(asked)
    return answered == asked


def _same_kind(answered: np.dtype[Any], declared: np.dtype[Any]) -> bool:
    """Floats of two widths, or signed (or unsigned) integers of two widths: the same values, but for range."""
    return answered.kind == declared.kind and answered.kind in "fiu"


def _narrowed(array: np.ndarray, dtype: np.dtype[Any]) -> tuple[np.ndarray, str | None]:
    """``array`` (of the same kind as ``dtype``, in another width) as ``dtype``, and what of it ``dtype``
    cannot hold (``None`` when it holds every value). Floats narrowed lose precision, as expected; only finite
    values that became infinite count."""
    with np.errstate(over="ignore", invalid="ignore"):  # what overflowed is found below, and reported
        converted = array.astype(dtype)
    if array.size == 0 or array.dtype.itemsize <= dtype.itemsize:
        return converted, None
    if dtype.kind in "iu":
        if np.array_equal(converted, array):  # compared at the wider type: a wrapped value differs
            return converted, None
        info = np.iinfo(dtype)
        return converted, f"values from {array.min()} to {array.max()}, past {dtype}'s {info.min} to {info.max}"
    grown = np.isinf(converted) & np.isfinite(array)
    if not grown.any():
        return converted, None
    return converted, (
        f"finite values up to {np.abs(array[grown]).max():.6g} in magnitude, past {dtype}'s largest "
        f"{np.finfo(dtype).max:.6g}"
    )


def _unlike(spec: TensorSpec, array: np.ndarray) -> str | None:
    """How an answered output differs from its declared element type and fixed dimensions, or ``None``."""
    if spec.dtype is not None and array.dtype != spec.dtype:
        return f"of numpy type {array.dtype}"
    if spec.shape is None:
        return None
    if array.ndim != len(spec.shape) or any(
        isinstance(want, int) and want != got for want, got in zip(spec.shape, array.shape, strict=True)
    ):
        return f"of shape {list(array.shape)}"
    return None


def retry_after_seconds(value: str | None, *, date: str | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (RFC 9110: a count of seconds or an HTTP date);
    ``None`` when absent or not understood (hostile values included: no exception, no huge number).

    An HTTP date is on the server's clock, so it is measured from the answer's ``Date`` header (``date``,
    the same clock) when that is a valid date, and from this host's clock only without one: measured from
    this host's, a server whose clock ran 3 s ahead turned "retry in 1 s" into 4 s (too long: the call
    failed), and one running behind into no wait at all."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= 9 else 1e9
    when = _http_date(value)
    if when is None:
        return None
    now = None if date is None else _http_date(date)
    return max(0.0, (when - (now or datetime.datetime.now(datetime.UTC))).total_seconds())


def _http_date(value: str) -> datetime.datetime | None:
    """An HTTP date with its zone, or ``None`` (not one, or without a zone)."""
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return None if when.tzinfo is None else when


def _retry_after(response: HttpResponse) -> float | None:
    """The seconds ``response``'s ``Retry-After`` asks for (see :func:`retry_after_seconds`)."""
    return retry_after_seconds(response.headers.get("retry-after"), date=response.headers.get("date"))


_PARSED_AGAIN_BYTES = 1 << 20
"""The longest JSON :func:`_cut_short` parses to tell a cut document from a malformed one (a failure's path)."""


def _cut_short(response: HttpResponse) -> bool:
    """Whether an answer that ended where its connection closed (no length said), and could not be decoded,
    holds less than it declares: cut short by the close (a transport failure), not a whole answer that is
    wrong (the server's :class:`InferenceError`, its message kept: a failure answered with status 200)."""
    body = response.body
    raw = response.headers.get("inference-header-content-length", "").strip()
    length = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None
    if length is not None and length > len(body):
        return True
    document_bytes = body if length is None else body[:length]
    if not document_bytes.rstrip().endswith(b"}"):  # (a whole JSON object ends so)
        return True
    if len(document_bytes) > _PARSED_AGAIN_BYTES:
        return False
    try:
        document = json.loads(document_bytes)
    except (ValueError, RecursionError):
        return True
    outputs = document.get("outputs") if isinstance(document, dict) else None
    if length is None or not isinstance(outputs, list):
        return False
    sizes = (
        output.get("parameters", {}).get("binary_data_size") if isinstance(output, dict) else None for output in outputs
    )
    return sum(size for size in sizes if isinstance(size, int)) > len(body) - length


_SENT_NOWHERE = ("connection failure", "connection timeout", "overflow", "refused stream")
"""Envoy's reset reasons for a request it never forwarded: it could not connect (``connection failure``,
``remote connection failure``, ``connection timeout``), its circuit breaker shed it (``overflow``), or the
server refused the HTTP/2 stream unprocessed (``remote refused stream reset``)."""


def _upstream_reset(response: HttpResponse) -> bool:
    """Whether a 503 is a gateway's for a connection to the model server reset after it forwarded the request,
    so the model may have run: Envoy's (Istio's, most service meshes') ``upstream connect error or
    disconnect/reset before headers. reset reason: connection termination`` (or ``remote reset``, ...). Not
    for one it never forwarded (:data:`_SENT_NOWHERE`), nor for a 503 of another kind (a server shedding load,
    a model still loading, Envoy's ``no healthy upstream``): those cannot have run."""
    text = response.body[:4096].decode("utf-8", "replace").lower()
    if "reset before headers" not in text:
        return False
    reason = text.rpartition("reset reason:")[2]
    return not any(never_sent in reason for never_sent in _SENT_NOWHERE)


def _redirect_advice(response: HttpResponse) -> str:
    """What a redirect's error adds to its status and message: where it pointed (its ``Location``), and what to
    change. Never followed: the request, and the ``headers`` of remote.toml (its ``Authorization``), go to the
    configured server only; the page of a redirect said only "answered 307", not where to, nor what to change."""
    location = response.headers.get("location", "")[:200]
    to = f" to {location}" if location else ""
    return f" (a redirect{to}, not followed: set url in remote.toml to where the model is served)"


def _message(response: HttpResponse) -> str:
    """The server's error message: ``{"error": ...}`` (the protocol), ``{"detail": ...}`` (FastAPI), or text."""
    try:
        document = json.loads(response.body)
    except (ValueError, RecursionError):  # not JSON, or a hostile one (nested too deeply, huge integers)
        document = None
    if isinstance(document, dict):
        for key in ("error", "detail"):
            if key in document:
                return str(document[key])[:500]
    if document is None:  # an error answer is read to 64 KiB only: a longer message is cut, so not JSON
        start = _MESSAGE_START.match(response.body[:4096])
        if start is not None:
            return _json_string_start(start.group(1))[:500]
    return response.body[:200].decode("utf-8", "replace") or "(no body)"


_SECRET_MIN_CHARS = 8
"""A header value (or a word of one, the token of ``Bearer <token>``) at least this long is hidden where the
server's text quotes it back; a shorter one is too short to be a secret (and would hide common words)."""


def _hidden(text: str, headers: Mapping[str, str]) -> str:
    """``text`` with the values of ``headers`` (and their words) replaced by ``***``. A server's message is
    shown in errors (the body of a web client's 503), status, the health reason and the circuit's warning: a
    gateway that quoted the request's ``Authorization`` header back put its token in all of them."""
    secrets = set()
    for value in headers.values():
        secrets.add(value.strip())
        secrets.update(value.split())
    for secret in sorted((s for s in secrets if len(s) >= _SECRET_MIN_CHARS), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


_MESSAGE_START = re.compile(rb'\s*\{\s*"(?:error|detail)"\s*:\s*"((?:[^"\\]|\\.)*)')
"""The start of ``{"error": "...`` (or ``"detail"``), the string's characters as far as they were read."""


def _json_string_start(raw: bytes) -> str:
    """The characters of a JSON string cut anywhere, in a UTF-8 sequence or an escape included."""
    text = raw.decode("utf-8", "ignore")
    for cut in range(min(6, len(text)) + 1):  # an escape is at most 6 characters (\uXXXX)
        try:
            return str(json.loads('"' + text[: len(text) - cut] + '"', strict=False))
        except ValueError:
            continue
    return text
