"""The protocol's REST endpoints for a :class:`~inprocserve.Server`, independent of any web framework.

The Flask and Django plug-ins hand each request under ``/v2`` to :meth:`Endpoints.handle` with the
method, path, headers, a way to read the body, and the app's rollout context and time budget; they
get back a :class:`Response` to send. So both plug-ins answer alike, and an inference goes through
``Server.predict`` like any other request: validation, coalescing, rollouts, deadlines, telemetry.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._brief import brief
from .._errors import (
    DeadlineExceededError,
    InferenceError,
    InprocserveError,
    InvalidInputError,
    ModelNotFoundError,
    ServerClosedError,
)
from .._log_limit import LogLimit, since
from .._model import ModelVersion
from .._registry import Routes
from .._server import Server
from .._signature import Signature, convertible
from ..web import ERROR_STATUS, NO_SERVER, _control_unknown, body_cut_short, retry_after, server_or_none
from ._codec import (
    HEADER_LENGTH,
    Limits,
    RequestedOutput,
    TensorHeader,
    _header,
    _is_tensor,
    carried_outputs,
    decode_infer_request,
    encode_infer_response,
    json_too_large,
    uncarried_output,
)
from ._datatypes import DATATYPES, datatype_of_onnx

__all__ = ["Endpoints", "Response", "model_metadata", "server_metadata", "server_readiness"]

logger = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data", "parameters")
_READ_CHUNK = 1 << 20
_WARMING = "this worker is warming up (loading and warming its models after the fork)"
# The errors another worker (or this one, later) may answer: 503 with Retry-After, as the plug-ins answer them
_UNAVAILABLE = tuple(error for error, status in ERROR_STATUS.items() if status == 503)


@dataclass(frozen=True, slots=True)
class Response:
    """What to send back: status code, body bytes and headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
        body = json.dumps(document, separators=(",", ":")).encode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})


def server_metadata() -> dict[str, Any]:
    """``GET /v2``: the server's name, version and protocol extensions."""
    from .. import __version__

    return {"name": "inprocserve", "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(server: Server, name: str, version: int | None = None) -> dict[str, Any]:
    """``GET /v2/models/<name>[/versions/<version>]``: versions, platform, inputs and outputs.

    Without ``version`` the signature is the default (stable) version's. Dynamic dimensions are -1.

    Raises:
        ModelNotFoundError: the model, or that version of it, is not servable.
        ServerClosedError: the server is closed (its models are not gone: the endpoints answer 503).
    """
    servable = server.models.get(name)
    status = server._brief_status([name], signatures=True)  # (an unauthenticated endpoint: no paths)
    if status["closed"]:  # (a closed server has no models left: each was "unknown", a 404)
        raise ServerClosedError("the server is closed", model=name, version=version)
    model = status["models"].get(name)
    if not servable or model is None:
        known = ", ".join(sorted(server.models)) or "none"
        raise ModelNotFoundError(f"unknown model {brief(name)} (servable models: {known})", model=name)
    number = model["default_version"] if version is None else version
    entry = model["versions"].get(str(number))
    if number not in servable or entry is None or entry.get("signature") is None:
        raise ModelNotFoundError(
            f"model {brief(name)} has no servable version {number} (servable: {', '.join(map(str, servable))})",
            model=name,
            version=version,
        )
    signature = entry["signature"]
    return {
        "name": name,
        "versions": [str(v) for v in servable],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(spec) for spec in signature["inputs"]],
        "outputs": [_tensor_metadata(spec) for spec in signature["outputs"]],
    }


def server_readiness(server: Server, required: Sequence[str] | None = None) -> dict[str, str]:
    """Why the server is not ready (model name -> reason; empty when ready).

    Ready means open, with at least one model, and every model in ``required`` (default: every model
    found) servable.
    """
    state = server.readiness(required)
    if state.closed:
        return {"": "the server is closed"}
    if not state.models:
        return {"": "no model is loaded"}
    return dict(state.reasons)


class Endpoints:
    """Answers the protocol's REST requests for the server that ``server()`` returns.

    Thread-safe: holds configuration only; every call works on its own request.

    Args:
        server: Returns the app's server (the plug-ins build theirs lazily, once per process).
        limits: Caps on request bodies (default :class:`Limits`).
        required_models: Models ``/v2/health/ready`` waits for (default: every model found).
        retry_after_s: The ``Retry-After`` of a 503.
        warming: Whether this process is building its server right now (the plug-ins' eager warm-up after
            a fork, which ``server()`` would wait for): the readiness endpoints then answer 503 at once, as
            the plug-ins' own ``/ready`` does, instead of holding the probe (and a worker thread) until
            the models are loaded and warm. Other requests still wait for the server.
    """

    def __init__(
        self,
        server: Callable[[], Server],
        *,
        limits: Limits | None = None,
        required_models: Sequence[str] = (),
        retry_after_s: float = 1,
        warming: Callable[[], bool] | None = None,
    ) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be an inprocserve.v2.Limits, got {type(limits).__name__}")
        self._server = server
        self._limits = limits or Limits()
        self._required = tuple(required_models)
        self._retry_after = retry_after(retry_after_s)
        self._warming = warming
        # a model that fails every run fails every request: its 500s are logged once a minute per model
        self._failures = LogLimit()

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        read: Callable[[int], bytes],
        *,
        context: Callable[[], Mapping[str, Any]] = dict,
        budget_s: Callable[[], float | None] = lambda: None,
    ) -> Response:
        """Answer one request.

        Args:
            method: The HTTP method.
            path: The path from the mount point, such as ``/v2/models/fraud/infer``.
            headers: The request headers.
            read: Reads up to ``n`` more bytes of the body (``b""`` at its end).
            context: The app's rollout context for this request (its ``user_id`` wins over the
                request's ``user_id`` parameter).
            budget_s: The app's remaining time budget for this request, or ``None``.

        Errors become ``{"error": "..."}`` with 400 (bad request), 404 (unknown model, version or
        path), 405, 503 (overloaded, closed, not ready, a remote model's server unavailable, a worker that
        has not read the fleet's control file, a server that cannot be built in this process) or 504
        (deadline); an inference that fails inside onnxruntime is a 500 with its message, any other failure
        a 500 with a fixed one (it may name the server's files: the log has it).
        """
        try:
            return self._route(method.upper(), path, headers, read, context, budget_s)
        except _NoServer:  # (logged with its cause, which names files: the log's business, not the client's)
            return Response.json(503, {"error": NO_SERVER}, {"Retry-After": self._retry_after})
        except InvalidInputError as exc:
            return _error(400, exc)
        except ModelNotFoundError as exc:
            return _error(404, exc)
        except _UNAVAILABLE as exc:
            return _error(503, exc, {"Retry-After": self._retry_after})
        except DeadlineExceededError as exc:
            return _error(504, exc)
        except InprocserveError as exc:
            skipped = self._failures.due(getattr(exc, "model", None))
            if skipped is not None:
                logger.warning(
                    "Open Inference Protocol request %s %s failed: %s%s", method, brief(path), exc, since(skipped)
                )
            if isinstance(exc, InferenceError):  # onnxruntime's own words on this request (docs/protocol.md)
                return _error(500, exc)
            # anything else (a version that cannot load, a configuration) may name the server's files
            return Response.json(500, {"error": "the server failed on this request; its log says why"})

    def _route(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        read: Callable[[int], bytes],
        context: Callable[[], Mapping[str, Any]],
        budget_s: Callable[[], float | None],
    ) -> Response:
        parts = path.strip("/").split("/")
        if parts[0] != "v2":
            return _not_found(path)
        rest = parts[1:]
        if rest == [] or rest in (["health", "live"], ["health", "ready"]):
            refused = _method_refused(method, _READ)
            if refused is not None:
                return refused
            if rest == []:
                return Response.json(200, server_metadata())
            if rest[1] == "live":
                return Response.json(200, {"live": True})  # the process answers; models are /ready's business
            if self._is_warming():
                problems = {"": _WARMING}
            else:
                try:
                    problems = server_readiness(self._served(), self._required)
                except _NoServer:  # (the readiness document still, "ready" included: docs/protocol.md)
                    return Response.json(503, {"ready": False, "error": NO_SERVER}, {"Retry-After": self._retry_after})
            if problems:
                reasons = "; ".join(f"{name}: {why}" if name else why for name, why in problems.items())
                return Response.json(
                    503, {"ready": False, "error": f"not ready: {reasons}"}, {"Retry-After": self._retry_after}
                )
            return Response.json(200, {"ready": True})
        if len(rest) < 2 or rest[0] != "models" or not rest[1]:
            return _not_found(path)
        name = rest[1]
        tail = rest[2:]
        version = None
        if tail[:1] == ["versions"]:
            if len(tail) < 2:
                return _not_found(path)
            try:
                version = _version(tail[1])
            except InprocserveError as exc:
                if tail[2:] == ["infer"]:  # an inference refused: recorded as predict records its refusals
                    self._served()._refused_early(name, None, exc, time.perf_counter())
                raise
            tail = tail[2:]
        if tail == []:
            refused = _method_refused(method, _READ)
            if refused is not None:
                return refused
            return Response.json(200, model_metadata(self._served(), name, version))
        if tail == ["ready"]:
            refused = _method_refused(method, _READ)
            if refused is not None:
                return refused
            return self._model_ready(name, version)
        if tail == ["infer"]:
            refused = _method_refused(method, _INFER)
            if refused is not None:
                return refused
            return self._infer(name, version, headers, read, context, budget_s)
        return _not_found(path)

    def _served(self) -> Server:
        """The app's server, or :class:`_NoServer` if it cannot be built in this process."""
        server = server_or_none(self._server, "Open Inference Protocol request")
        if server is None:
            raise _NoServer
        return server

    def _is_warming(self) -> bool:
        return self._warming is not None and bool(self._warming())

    def _model_ready(self, name: str, version: int | None) -> Response:
        document: dict[str, Any] = {"name": name}
        if version is not None:
            document["version"] = str(version)
        if self._is_warming():  # (whether the model exists is known once the server is built)
            return Response.json(
                503,
                {**document, "ready": False, "error": f"model {brief(name)} is not ready: {_WARMING}"},
                {"Retry-After": self._retry_after},
            )
        try:
            server = self._served()
        except _NoServer:
            return Response.json(
                503, {**document, "ready": False, "error": NO_SERVER}, {"Retry-After": self._retry_after}
            )
        servable = server.models.get(name)
        status = server._brief_status([name])  # load errors without file paths
        if status["closed"]:  # (a closed server has no models left: the model was "unknown", a 404)
            error = f"model {brief(name)} is not ready: the server is closed"
            return Response.json(503, {**document, "ready": False, "error": error}, {"Retry-After": self._retry_after})
        model = status["models"].get(name)
        unhealthy = {} if model is None else model.get("unhealthy") or {}
        asked = str(version if version is not None else model["answering_version"] if model else None)
        refused = None if version is not None else _control_unknown(status)  # (a pinned version is served)
        if servable and (version is None or version in servable) and asked not in unhealthy and refused is None:
            return Response.json(200, {**document, "ready": True})
        if model is None:
            raise _unknown_model(server, name)
        if refused is not None:
            reason = refused
        elif asked in unhealthy:  # served, but its remote server is down
            reason = f"version {asked}: {unhealthy[asked]}"
        elif version is not None:
            entry = model["versions"].get(str(version))
            if entry is None:  # not on disk, or left out by the version policy: nothing to wait for
                raise ModelNotFoundError(f"model {brief(name)} has no version {version}", model=name, version=version)
            reason = str(entry.get("error") or f"version {version} is {entry.get('state', 'not servable')}")
        else:
            reason = _first_error(model)
        return Response.json(
            503,
            {**document, "ready": False, "error": f"model {brief(name)} is not ready: {reason}"},
            {"Retry-After": self._retry_after},
        )

    def _infer(
        self,
        name: str,
        version: int | None,
        headers: Mapping[str, str],
        read: Callable[[int], bytes],
        context: Callable[[], Mapping[str, Any]],
        budget_s: Callable[[], float | None],
    ) -> Response:
        server = self._served()
        started = time.perf_counter()
        try:
            check = _signature_check(server, name, version)  # an unknown model or version: before the body
            body = self._read_body(headers, read)
            request = decode_infer_request(body, headers, limits=self._limits, check=check)
            if request.outputs:
                _check_outputs(server, name, version, request.outputs)
        except InprocserveError as exc:  # refused before predict: recorded as predict records its refusals
            server._refused_early(name, version, exc, started)
            raise
        routing = dict(context())
        if request.user_id is not None and "user_id" not in routing:
            routing["user_id"] = request.user_id
        budget = budget_s()
        if request.timeout_s is not None:
            budget = request.timeout_s if budget is None else min(budget, request.timeout_s)
        if budget is not None and budget <= 0:
            spent = DeadlineExceededError(
                f"model {brief(name)}: the request's time budget was spent before inference",
                model=name,
                version=version,
            )
            server._refused_early(name, version, spent, started)
            # (this frame joins its traceback: its local would hold it in a cycle with the decoded inputs)
            try:
                raise spent
            finally:
                del spent
        try:
            # (the versions before the run: one unloaded or replaced while it ran is still known for its outputs)
            before = server._registry.routes.get(name)
            # (what the answer check finds the answering copy cannot carry, for the encoder: that copy is known
            # there, and may be unloaded by the time the answer is encoded)
            found: dict[str, dict[str, str]] = {}
            answer_check: Callable[[Mapping[str, Any], int, ModelVersion | None], None]
            if request.outputs:
                # outputs that the version the request is routed to (known once it ran) may lack, or may not
                # carry: its answer is checked before it is recorded, so that a refused one counts as refused.
                # (A pinned version's too: checked against it before the run, it may be reloaded by hand, an
                # output of it now float8, a ZipMap's maps or gone, as the request is routed.)
                answer_check = functools.partial(
                    _check_answer_outputs, server, name, before, found, request.outputs, pinned=version is not None
                )
            else:
                # every output the protocol can carry: an answer with none (only float8 tensors, or a ZipMap's
                # sequence of maps) is refused, and counted as refused, not as answered
                answer_check = functools.partial(_check_answer_carried, server, name, before, found)
            prediction = server._predict_checked(
                name, request.inputs, version=version, context=routing, timeout_s=budget, check=answer_check
            )
        except InvalidInputError as exc:
            raise _explain_bytes(exc, server, name, version, request.datatypes) from None
        body, response_headers = encode_infer_response(
            prediction,
            request.outputs,
            binary=request.binary_output,
            request_id=request.id,
            parameters={"inprocserve_variant": prediction.variant, "inprocserve_request_id": prediction.request_id},
            uncarried=found["uncarried"]
            if "uncarried" in found
            else _uncarried(server, name, prediction.version, before, prediction),
        )
        return Response(200, body, response_headers)

    def _read_body(self, headers: Mapping[str, str], read: Callable[[int], bytes]) -> bytes:
        limit = self._limits.max_body_bytes
        too_large = _too_large
        if _header(headers, HEADER_LENGTH) is None and self._limits.max_json_bytes < limit:
            limit = self._limits.max_json_bytes  # (all JSON: refused before it is read, not once parsed)
            too_large = json_too_large
        declared = _header(headers, "Content-Length")
        if declared is not None and not declared.strip():  # (a WSGI server's empty CONTENT_LENGTH: no header)
            declared = None
        declared_bytes = None if declared is None else _decimal(declared.strip())
        if declared is not None and declared_bytes is None:  # ("-1", "abc", "+86": some servers pass them on)
            raise InvalidInputError(
                f"Content-Length {declared[:40]!r} is not a number of bytes; send the body's length"
            )
        if declared_bytes is not None and declared_bytes > limit:
            raise too_large(declared_bytes, limit)
        chunks: list[bytes] = []
        total = 0
        while True:  # bounded: each pass reads at least one byte, and stops past the limit
            chunk = read(min(_READ_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise too_large(total, limit)
        cut_short = body_cut_short(total, declared_bytes)  # (else a binary section that does not add up, say)
        if cut_short is not None:
            raise cut_short
        body = b"".join(chunks)
        encoding = (_header(headers, "Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding == "x-gzip":  # (gzip's older name: RFC 9110 asks recipients to take it as gzip)
            encoding = "gzip"
        if encoding not in ("gzip", "deflate"):
            raise InvalidInputError(f"Content-Encoding {brief(encoding)} is not supported; use gzip, deflate or none")
        inflater = zlib.decompressobj(_RAW_DEFLATE if encoding == "deflate" and _raw(body) else _ZLIB_OR_GZIP)
        try:
            inflated = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise InvalidInputError(f"the {encoding} request body cannot be decompressed: {exc}") from None
        if len(inflated) > limit or inflater.unconsumed_tail:
            raise too_large(len(inflated), limit)
        if not inflater.eof:
            raise InvalidInputError(f"the {encoding} request body is truncated")
        if inflater.unused_data:  # another gzip member, or anything else: never silently dropped
            raise InvalidInputError(
                f"the {encoding} request body has {len(inflater.unused_data)} bytes after the end of its compressed "
                "data; send exactly one compressed stream (one gzip member)"
            )
        return inflated


_ZLIB_OR_GZIP = 47  # 32 + 15: zlib or gzip framing, told apart by the header
_RAW_DEFLATE = -15  # a deflate stream without zlib's header and checksum


def _raw(body: bytes) -> bool:
    """A ``deflate`` body that opens with neither a zlib header nor gzip's magic bytes: raw deflate, which
    some clients send for ``deflate`` (RFC 9110 means the zlib format; browsers have taken both since the
    confusion began). A zlib header is a deflate method byte and a check that makes the two bytes a multiple
    of 31; gzip under the wrong name was taken before and still is."""
    if len(body) < 2 or body[:2] == b"\x1f\x8b":
        return False
    return body[0] & 0x0F != 8 or (body[0] << 8 | body[1]) % 31 != 0


def _unknown_model(server: Server, name: str) -> ModelNotFoundError:
    known = ", ".join(sorted(server.models)) or "none"
    return ModelNotFoundError(f"unknown model {brief(name)} (servable models: {known})", model=name)


def _version(raw: str) -> int:
    number = _decimal(raw)
    if number is None or number < 1 or number >= _PAST_18_DIGITS:
        raise InvalidInputError(f"model version must be a positive integer of at most 18 digits, got {raw[:40]!r}")
    return number


_PAST_18_DIGITS = 10**18


def _decimal(text: str) -> int | None:
    """``text`` as a non-negative integer if it is ASCII digits only (``str.isdigit`` also takes "²"), leading
    zeros aside; one of more than 18 digits is :data:`_PAST_18_DIGITS` (a value no limit here allows, and
    Python refuses to convert thousands of digits)."""
    if not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0")
    return int(digits or "0") if len(digits) <= 18 else _PAST_18_DIGITS


def _signature_check(server: Server, name: str, version: int | None) -> Callable[[Sequence[TensorHeader]], None]:
    """A check of a request's tensor headers against the signatures of the versions that may answer it (the
    pinned one, or every servable version: the rollout picks one), run before any tensor data is decoded.

    It refuses only what ``Server.predict`` would refuse anyway for every such version (names, datatypes that
    cannot be converted safely, ranks, fixed dimensions, rows), with the same kind of message, so a hostile
    or mistaken request costs no decoding; the data itself is still validated by ``predict``.

    Raises:
        ModelNotFoundError: the model, or the pinned version, is not servable (``ServerClosedError`` when
            the server is closed), as ``predict`` would.
    """
    routes = server._registry.routes.get(name)  # a snapshot, read without a lock (as predict reads it)
    if routes is None:
        raise server._not_found(name, version)
    if version is not None and version not in routes.versions:
        raise server._not_found(name, version)

    def check(tensors: Sequence[TensorHeader]) -> None:
        # Routed again once the headers are read: a reload during a slow upload may have replaced a version.
        now = server._registry.routes.get(name)
        if now is None:
            return  # unloaded meanwhile: predict says so
        if version is not None:
            pinned = now.versions.get(version)
            if pinned is None:
                return
            candidates = [pinned]
        else:
            candidates = [now.default, *(v for v in now.versions.values() if v is not now.default)]
        first: InvalidInputError | None = None
        for target in candidates:
            signature = target.signature
            if signature is None:  # not known here: predict decides
                return
            problem = _mismatch(signature, tensors, target.max_request_rows)
            if problem is None:
                return
            if first is None:
                first = InvalidInputError(
                    f"model {brief(name)} version {target.version}: {problem}", model=name, version=target.version
                )
        assert first is not None
        # (this frame joins its traceback: its local would hold it in a cycle with the frames that called this
        # one, and the request's body they read, until the collector's next full pass)
        try:
            raise first
        finally:
            del first

    return check


def _check_outputs(server: Server, name: str, version: int | None, requested: Sequence[RequestedOutput]) -> None:
    """Refuse a requested output that no version that may answer has, before the model runs: the answer
    would be refused anyway, after a run it cost and a latency it recorded.

    Raises:
        InvalidInputError: names the output and the model's outputs.
    """
    routes = server._registry.routes.get(name)
    if routes is None:
        return  # unloaded meanwhile: predict says so
    pinned = None if version is None else routes.versions.get(version)
    answering = _answering(routes) if version is None else None
    candidates = [pinned] if pinned is not None else [answering] if answering is not None else routes.versions.values()
    names: dict[str, None] = {}
    tensors: set[str] = set()
    uncarried: dict[str, str] = {}  # (refused here only where no version that may answer carries it)
    carried: set[str] = set()
    for target in candidates:
        if target.signature is None:  # not known here: the answer decides
            return
        for spec in target.signature.outputs:
            names[spec.name] = None
            if spec.onnx_type is None or spec.onnx_type.startswith("tensor("):
                tensors.add(spec.name)
            if spec.onnx_type is not None and _uncarried_type(spec.onnx_type):
                uncarried[spec.name] = spec.onnx_type
            else:
                carried.add(spec.name)
    for output in requested:
        if output.name not in names:
            having = [
                other.version
                for other in routes.versions.values()
                if other.signature is not None and any(spec.name == output.name for spec in other.signature.outputs)
            ]
            where = pin = ""
            if having:  # (another loaded version has it: say which answers, and which to pin)
                pin = f"; pin version {having[-1]}, which has it (/v2/models/{name}/versions/N)"
                if answering is not None:
                    where = f" (version {answering.version} answers requests that name none)"
            raise InvalidInputError(
                f"output {brief(output.name)} is not an output of model {brief(name)}{where}; "
                f"outputs: {', '.join(names)}{pin}",
                model=name,
                version=version,
            )
        if output.name in uncarried and output.name not in carried:
            raise uncarried_output(output.name, name, uncarried[output.name])
        if output.name not in tensors:
            raise _not_a_tensor(output.name, name, version)


def _not_a_tensor(output: str, name: str, version: int | None) -> InvalidInputError:
    return InvalidInputError(
        f"output {brief(output)} of model {brief(name)} is a sequence or map (an ONNX ZipMap, say), "
        "which the protocol cannot carry; ask for the model's tensor outputs with 'outputs'",
        model=name,
        version=version,
    )


def _check_answer_outputs(
    server: Server,
    name: str,
    before: Routes | None,
    found: dict[str, dict[str, str]],
    requested: Sequence[RequestedOutput],
    outputs: Mapping[str, Any],
    version: int,
    answering: ModelVersion | None,
    *,
    pinned: bool = False,
) -> None:
    """Refuse a requested output that the version routed to (under a canary or flags) does not have, naming
    that version and one to pin: refused as "not an output of model", a client that another user's same
    request got answered for had nothing to go on; or one it has that the protocol cannot carry (float8, a
    ZipMap's sequence of maps: another version may have it as FP32). ``Server._predict_checked`` calls it on
    the answer of ``version`` before the request is recorded (refused after its run, it was recorded as
    answered). ``pinned``: the request named the version (reloaded by hand as it was routed, it lacks the
    output now): the message says so, not that the version was decided request by request.

    Raises:
        InvalidInputError: names the output, the version that answered and the versions that have it; or the
            output and its type.
    """
    missing = next((output.name for output in requested if output.name not in outputs), None)
    if missing is None:
        uncarried = found["uncarried"] = _uncarried(server, name, version, before, outputs, answering)
        for output in requested:
            if output.name in uncarried:
                raise uncarried_output(output.name, name, uncarried[output.name])
            if not _is_tensor(outputs[output.name]):
                raise _not_a_tensor(output.name, name, version)
        return
    routes = server._registry.routes.get(name)
    having = [
        other.version
        for other in (() if routes is None else routes.versions.values())
        if other.signature is not None and any(spec.name == missing for spec in other.signature.outputs)
    ]
    pin = "" if not having else f"; pin version {having[-1]}, which has it (/v2/models/{name}/versions/N)"
    why = "reloaded as this request was routed" if pinned else "the version is decided request by request"
    raise InvalidInputError(
        f"output {brief(missing)} is not an output of model {brief(name)} version {version}, which "
        f"answered this request ({why}); outputs: {', '.join(outputs)}{pin}",
        model=name,
        version=version,
    )


def _check_answer_carried(
    server: Server,
    name: str,
    before: Routes | None,
    found: dict[str, dict[str, str]],
    outputs: Mapping[str, Any],
    version: int,
    answering: ModelVersion | None,
) -> None:
    """Refuse the answer of ``version`` to a request that names no outputs when it has none the protocol can
    send (a version whose outputs are float8 tensors or a ZipMap's sequence of maps), before the request is
    recorded: the response encoder refused it after it was recorded as answered.

    Raises:
        InvalidInputError: the answer's outputs, none of which the protocol can carry.
    """
    uncarried = found["uncarried"] = _uncarried(server, name, version, before, outputs, answering)
    carried_outputs(outputs, uncarried, name)


def _uncarried_type(onnx_type: str) -> bool:
    """Whether ``onnx_type`` is a tensor type the protocol has no datatype for (float8: onnxruntime answers its
    bits as ``uint8``, bfloat16, int4)."""
    return onnx_type.startswith("tensor(") and datatype_of_onnx(onnx_type) not in DATATYPES


def _uncarried(
    server: Server,
    name: str,
    version: int,
    before: Routes | None,
    answer: Mapping[str, Any],
    answering: ModelVersion | None = None,
) -> dict[str, str]:
    """The outputs of the version that answered whose tensor type the protocol has no datatype for, with their
    ONNX type: left out of an answer that names no outputs, refused by name, never sent as their bits.

    ``answering``: the loaded copy that ran the request, where ``Server._predict_checked`` knows it: its
    signature is the answer's, and alone decides (a version loaded and unloaded again while the request ran is
    in neither reading of the routes). Without it (``None``: unloaded or replaced since), the routes decide:

    ``before``, the model's routes read before the request ran. The version is looked up there and in the
    routes now, and an output either has as such a type is one: unloaded or replaced while the request ran (a
    hot reload), it was found in neither, or as its replacement, and a float8 output went out as ``UINT8``
    bits (onnxruntime answers float8 as ``uint8``, so the answer's dtypes cannot tell).

    But an output that ``answer`` (the answer itself) has as anything but ``uint8``, onnxruntime's only dtype for
    these types (it fails the run of any other: bfloat16, int4, float8e5m2), is not one: the copy that answered
    has it as a type the protocol carries. Version 1 reloaded by hand with y as FLOAT in place of float8 while
    the request was routed, the copy read before had y as float8, and the new copy's FP32 y was left out of the
    answer, or refused by name."""
    uncarried: dict[str, str] = {}
    if answering is not None and answering.version == version and answering.signature is not None:
        copies: Iterable[ModelVersion | None] = (answering,)  # (the copy that ran it: its outputs are the answer's)
    else:
        copies = (
            None if routes is None else routes.versions.get(version)
            for routes in (before, server._registry.routes.get(name))
        )
    for target in copies:
        signature = None if target is None else target.signature
        if signature is not None:
            for spec in signature.outputs:
                if spec.onnx_type is not None and _uncarried_type(spec.onnx_type) and _bits(answer.get(spec.name)):
                    uncarried.setdefault(spec.name, spec.onnx_type)
    return uncarried


def _bits(value: object) -> bool:
    """Whether an output's value may be the raw bits of a type the protocol has no datatype for (``uint8``, as
    onnxruntime answers float8), or is absent from the answer."""
    return value is None or not isinstance(value, np.ndarray) or value.dtype == np.uint8


def _answering(routes: Routes) -> ModelVersion | None:
    """The version that answers every request naming none, where no flag, draw or key decides it (no rollout:
    the stable version named, else the latest); ``None`` where the decision is the request's (a canary,
    flags): then an output some loaded version has is checked against the one that answered, after it ran."""
    state = routes.state
    if not (state.latest or state.trivial):
        return None
    try:
        decision = routes.router.decide(routes.versions, routes.default.version, None, state)
    except Exception:  # (a worker that refuses every request: predict says why)
        return None
    return routes.versions.get(decision.version) or routes.default  # (as predict routes)


def _mismatch(signature: Signature, tensors: Sequence[TensorHeader], max_rows: int) -> str | None:
    """Why ``signature.validate`` would refuse arrays of these names, datatypes and shapes whatever their
    values, or ``None``. Mirrors its checks (and ``_signature._coerce``'s dtype rule) on headers only."""
    by_name = {tensor.name: tensor for tensor in tensors}
    if len(by_name) != len(signature.inputs) or not signature.input_names.issuperset(by_name):
        missing = sorted(signature.input_names - set(by_name))
        unknown = sorted(set(by_name) - signature.input_names)
        parts = [f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []
        parts += [f"unknown input(s) {', '.join(map(brief, unknown))}"] if unknown else []
        return f"{'; '.join(parts)}; the model takes {', '.join(spec.describe() for spec in signature.inputs)}"
    rows = -1
    for spec in signature.inputs:
        tensor = by_name[spec.name]
        wanted = datatype_of_onnx(spec.onnx_type)
        takes = f"the model takes {wanted} with shape {_dims(spec.shape)}"
        if spec.is_string != (tensor.datatype == "BYTES"):
            advice = "send text as BYTES" if spec.is_string else f"send numbers as {wanted}"
            return f"input {spec.name!r} was sent as {tensor.datatype}, but {takes}; {advice}"
        expected = spec.dtype
        given = DATATYPES[tensor.datatype]
        if not spec.is_string and expected is not None and given != expected and not convertible(given, expected):
            return (
                f"input {spec.name!r} was sent as {tensor.datatype}, which cannot be converted to {wanted} "
                f"without losing meaning ({takes}); send {wanted}"
            )
        shape = tensor.shape
        if spec.shape is not None:
            if len(shape) != len(spec.shape):
                return f"input {spec.name!r}: expected {len(spec.shape)} dimensions ({takes}), got shape {list(shape)}"
            for axis, size in enumerate(spec.shape):
                if isinstance(size, int) and size >= 0 and shape[axis] != size:
                    return (
                        f"input {spec.name!r}: expected size {size} on axis {axis} ({takes}), got shape {list(shape)}"
                    )
        if shape:
            # (the rows are read as validate reads them: from the input whose axis 0 the outputs name where the
            # inputs need not share it; the first input's, a table of entries declared first was taken for the
            # rows, and a request that predict serves was refused over max_request_rows, or as one of 0 rows)
            if rows < 0:
                if signature._rows_from is None or spec.name == signature._rows_from:
                    rows = shape[0]
            elif signature._same_rows and shape[0] != rows:
                return (
                    f"input {spec.name!r}: has {shape[0]} rows but the other inputs have {rows}; "
                    "all inputs need the same number of rows"
                )
    if rows == 0:
        return "the request has 0 rows; send at least one row"
    if rows > max_rows:
        return (
            f"the request has {rows} rows, more than the {max_rows} allowed per request "
            "(batching.max_request_rows); split it into smaller requests"
        )
    return None


def _dims(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "any"
    return "[" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "-1" for d in shape) + "]"


def _explain_bytes(
    error: InvalidInputError, server: Server, name: str, version: int | None, datatypes: Mapping[str, str]
) -> InvalidInputError:
    """Say so plainly when text (BYTES) was sent to a numeric input; the signature's own message is
    about numpy dtypes."""
    sent_text = [input_name for input_name, datatype in datatypes.items() if datatype == "BYTES"]
    if not sent_text:
        return error
    try:
        metadata = model_metadata(server, name, version)
    except ModelNotFoundError:
        return error
    for spec in metadata["inputs"]:
        if spec["name"] in sent_text and spec["datatype"] != "BYTES":
            return InvalidInputError(
                f"input {spec['name']!r} was sent as BYTES, but model {brief(name)} takes {spec['datatype']} "
                f"with shape {spec['shape']}; send numbers as {spec['datatype']}",
                model=name,
                version=version,
            )
    return error


def _tensor_metadata(spec: Mapping[str, Any]) -> dict[str, Any]:
    shape = spec["shape"]
    dims = [-1] if shape is None else [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return {"name": spec["name"], "datatype": datatype_of_onnx(spec["type"]), "shape": dims}


def _first_error(model: Mapping[str, Any]) -> str:
    for entry in model.get("versions", {}).values():
        if entry.get("error"):
            return str(entry["error"])
    return "no servable version"


def _too_large(size: int, limit: int) -> InvalidInputError:
    return InvalidInputError(
        f"the request body is {size} bytes or more, over the {limit} allowed; send fewer rows per request"
    )


class _NoServer(Exception):
    """The app's server could not be built in this process (its repository gone at a worker's first request,
    a ``config.toml`` that does not load): answered 503, since a later request may find it built."""


def _error(status: int, error: Exception, headers: Mapping[str, str] | None = None) -> Response:
    return Response.json(status, {"error": str(error)}, headers)


def _not_found(path: str) -> Response:
    return Response.json(404, {"error": f"no Open Inference Protocol endpoint at {path[:200]!r}"})


_READ = ("GET", "HEAD")
_INFER = ("POST",)


def _method_refused(method: str, methods: tuple[str, ...]) -> Response | None:
    """The answer of a protocol path that takes ``methods`` to ``method``, or ``None`` when it takes it: a 405, or
    the 200 of ``OPTIONS`` (a CORS preflight's, too), each with an ``Allow`` true to the path. Flask answered
    ``OPTIONS`` itself, listing every method its routes took (GET for ``infer``), and Django with a 405."""
    allow = ", ".join((*methods, "OPTIONS"))
    if method == "OPTIONS":
        return Response(200, b"", {"Allow": allow})
    if method in methods:
        return None
    return Response.json(405, {"error": f"method not allowed; use {methods[0]}"}, {"Allow": allow})
