"""Frozen configuration objects, given in code or read from a model's ``config.toml``.

Every value is validated when the object is built, so a bad setting fails at start-up with a
:class:`ConfigurationError` that names the key, never later on the request path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import _fork
from ._config_checks import (
    MAX_BATCH_ROWS,
    MAX_DELAY_S,
    check_bool,
    check_bound,
    check_int,
    check_list,
    check_number,
    check_table,
    check_text,
    is_int,
    is_number,
    plain_fields,
    shown,
)
from ._deadlines import MAX_TIMEOUT_S
from ._errors import ConfigurationError, ConfigurationTypeError
from ._rollout_config import (
    FLAT_FIELDS,
    GROUPS,
    BanditConfig,
    CanaryConfig,
    InterleavingConfig,
    RolloutConfig,
    ShadowConfig,
    Strategy,
    VariantConfig,
)
from ._toml_file import name_unknown_keys, read_toml, shown_unknown_keys
from ._version_policy import VersionPolicy, parse_version_policy, policy_in_code

logger = logging.getLogger(__name__)

__all__ = [
    "BanditConfig",
    "BatchingConfig",
    "CacheConfig",
    "CanaryConfig",
    "DriftConfig",
    "InputBounds",
    "InterleavingConfig",
    "RolloutConfig",
    "ShadowConfig",
    "Strategy",
    "VariantConfig",
    "ModelConfig",
    "PaddingConfig",
    "PoolConfig",
    "VersionPolicy",
    "WarmupConfig",
    "check_model_configs",
    "load_model_config",
]


class _DeprecationLog:
    """Logs the deprecations in config files, each when a read of its file first finds it.

    A ``config.toml`` is read again at every refresh (each poll of the hot-reload poller): the same
    deprecated key must not fill the log at every poll, but one removed and later brought back (a rolled-back
    file) is news again. So each file's deprecations, as its last read found them, are kept, and a read logs
    only those its file's last read did not have. A forked child starts with none (a pre-fork master may
    have "logged" them to no handler at all), and a mapping merged in code (not a file read) logs each time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, frozenset[str]] = {}  # file -> its deprecations at its last read (none: absent)
        self._reading = threading.local()  # .found: the deprecations the read in progress on this thread found
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._last = {}

    @contextlib.contextmanager
    def reading(self, source: str) -> Iterator[None]:
        """Around one read of the config file ``source``: at its end, log what the file's last read lacked."""
        found: list[str] = []
        self._reading.found = found
        try:
            yield
        finally:
            self._reading.found = None
        with self._lock:
            last = self._last.pop(source, frozenset())
            if found:
                self._last[source] = frozenset(found)
        for message in found:
            if message not in last:
                logger.warning("%s", message)  # config files are an operator's business: say it where they look

    def found(self, message: str) -> None:
        """A deprecation in the file being read (or in a mapping merged in code: logged now)."""
        found: list[str] | None = getattr(self._reading, "found", None)
        if found is None:
            logger.warning("%s", message)
        elif message not in found:
            found.append(message)


_DEPRECATIONS = _DeprecationLog()


NanPolicy = Literal["allow", "reject"]
RowsIndependent = Literal["check", "yes", "no"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PaddingConfig:
    """Pad a dynamic axis (say, sequence length) so requests of different lengths share one batch.

    Each input named in ``inputs`` is padded with ``value`` along its axis to the longest request of the
    batch; each output named in ``outputs`` is cropped back to the request's own length along its axis. A
    request's length is its size along the axis of the first input listed. Without padding, requests of
    different lengths are simply batched separately.
    """

    inputs: Mapping[str, int]
    """Input name -> the axis to pad (>= 1; axis 0 is the batch axis)."""
    outputs: Mapping[str, int] = field(default_factory=dict)
    """Output name -> the axis to crop back; outputs not named are returned as the model produced them."""
    value: float | Mapping[str, float] = 0
    """The value written into padded positions: one for every input (for example 0), or one per input name
    (``{"input_ids": 1, "attention_mask": 0}``: a pad token id and a mask differ; inputs not named get 0)."""

    def __post_init__(self) -> None:
        plain_fields(self)
        if not check_table("batching.padding.inputs", self.inputs):
            raise ConfigurationError("batching.padding.inputs must name at least one input")
        for kind, axes in (("inputs", self.inputs), ("outputs", check_table("batching.padding.outputs", self.outputs))):
            for name, axis in axes.items():
                if not is_int(axis) or axis < 1:
                    raise ConfigurationError(
                        f"batching.padding.{kind}[{name!r}] must be an axis >= 1 (axis 0 is the batch axis), "
                        f"got {shown(axis)}"
                    )
        value: object = self.value  # any number, -inf included (an additive attention mask), not a bool
        if isinstance(value, Mapping):
            for name, each in check_table("batching.padding.value", value).items():
                if name not in self.inputs:
                    raise ConfigurationError(
                        f"batching.padding.value names {name!r}, which batching.padding.inputs does not pad "
                        f"({', '.join(self.inputs)})"
                    )
                if not _is_float(each):
                    raise ConfigurationError(f"batching.padding.value[{name!r}] must be a number, got {shown(each)}")
            object.__setattr__(self, "value", dict(value))
        elif not _is_float(value):
            raise ConfigurationError(
                f"batching.padding.value must be a number, or a table of input name = number, got {shown(value)}"
            )
        object.__setattr__(self, "inputs", dict(self.inputs))
        object.__setattr__(self, "outputs", dict(self.outputs))

    def value_for(self, name: str) -> float:
        """The value padded positions of input ``name`` hold."""
        value = self.value
        return float(value.get(name, 0)) if isinstance(value, Mapping) else float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingConfig:
    """How concurrent requests for one model version are merged into one ``session.run``."""

    enabled: bool = True
    """Merge concurrent requests. When false every request runs alone (still through the pool)."""
    max_batch_size: int = 64
    """Largest number of rows in one ``session.run``."""
    max_batch_bytes: int = 64 * 2**20
    """Largest input, in bytes, of one ``session.run`` of merged rows (default 64 MiB): a model whose rows are
    wide runs as many rows as fit, at least one, so ``max_batch_size`` rows of 32 MiB each are never stacked
    into 2 GiB (nor a large request's slices made that large). Counted at load from the declared row (dynamic
    inner axes at their shortest), and only where it is below ``max_batch_size`` rows; at most 2**40."""
    max_delay_s: float | None = None
    """Longest time, in seconds, the oldest queued request may wait for companions while a session is
    free. A free session waits only while recent traffic showed more concurrent rows than are queued, and
    stops as soon as they arrive, so a lone caller never waits. ``None`` (default): the model's fixed cost
    per run, measured at load (capped at 5 ms) — waiting longer would cost more than running twice. ``0``:
    never wait; requests accumulate only while every session is busy."""
    max_delay_ms: float | None = None
    """Deprecated: ``max_delay_s`` in milliseconds. Still accepted (in code and in ``config.toml``) with a
    ``DeprecationWarning``; it is converted to ``max_delay_s`` when the object is built and reads ``None``
    afterwards."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes the model runs best at; while waiting up to ``max_delay_s`` the batcher stops
    waiting as soon as the queue holds one of them."""
    max_queue_rows: int = 4096
    """Rows that may wait in the queue; beyond this ``predict`` raises :class:`QueueFullError` at once.
    (A single request larger than this is still accepted when the queue is empty.)"""
    max_request_rows: int | None = None
    """Largest number of rows one request may carry (``None``: ``max_queue_rows``); larger requests get
    :class:`InvalidInputError` before anything is queued."""
    padding: PaddingConfig | None = None
    """Pad a dynamic axis so requests of different lengths can share a batch; ``None`` groups them."""
    rows_independent: RowsIndependent = "check"
    """Whether each row's answer is its own, whatever rows share its run, so requests may be merged and a
    large one run in slices. ``"check"``: run the model at load on two rows alone and together, and merge
    only if the answers agree (docs/batching.md, "Which requests share a batch"). ``"yes"``: skip that run
    and merge, also where the inputs and outputs name their axis 0 apart (only a tensor without a dynamic axis
    0, or an axis-0 name that names another axis, still refuses). ``"no"``: never merge nor slice: each
    request runs alone and whole (a model that normalizes or quantizes over the whole batch)."""

    def __post_init__(self) -> None:
        plain_fields(self)
        check_bool("batching.enabled", self.enabled)
        if self.rows_independent not in ("check", "yes", "no"):
            raise ConfigurationError(
                f"batching.rows_independent must be 'check', 'yes' or 'no', got {shown(self.rows_independent)}"
            )
        check_int("batching.max_batch_size", self.max_batch_size, 1, MAX_BATCH_ROWS)
        check_int("batching.max_batch_bytes", self.max_batch_bytes, 1, _MAX_BATCH_BYTES)
        if self.max_delay_ms is not None:
            self._convert_max_delay_ms()
        if self.max_delay_s is not None:
            check_number("batching.max_delay_s", self.max_delay_s, 0.0, MAX_DELAY_S)
        sizes = check_list("batching.preferred_batch_sizes", self.preferred_batch_sizes)
        if any(not is_int(size) or size < 1 or size > self.max_batch_size for size in sizes):
            raise ConfigurationError(
                f"batching.preferred_batch_sizes must lie in 1..max_batch_size ({self.max_batch_size}), "
                f"got {shown(sizes)}"
            )
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(sizes))))
        check_int("batching.max_queue_rows", self.max_queue_rows, 1)
        if self.max_request_rows is not None:
            check_int("batching.max_request_rows", self.max_request_rows, 1)
        if self.padding is not None and not isinstance(self.padding, PaddingConfig):
            raise ConfigurationError(
                f"batching.padding must be a table ([batching.padding]), got {shown(self.padding)}"
            )

    def _convert_max_delay_ms(self) -> None:
        milliseconds = self.max_delay_ms
        check_number("batching.max_delay_ms", milliseconds, 0.0, MAX_DELAY_S * 1000.0)
        assert milliseconds is not None
        seconds = milliseconds / 1000.0
        if self.max_delay_s is not None and not math.isclose(self.max_delay_s, seconds):
            raise ConfigurationError(
                f"batching.max_delay_s ({self.max_delay_s}) and the deprecated max_delay_ms ({milliseconds}) "
                "disagree; set only max_delay_s"
            )
        # stacklevel 4: the caller of the generated __init__ (-> __post_init__ -> here).
        warnings.warn(
            f"BatchingConfig(max_delay_ms={milliseconds!r}) is deprecated; use max_delay_s={seconds!r} "
            "(seconds, like every other duration)",
            DeprecationWarning,
            stacklevel=4,
        )
        object.__setattr__(self, "max_delay_s", seconds)
        object.__setattr__(self, "max_delay_ms", None)

    @property
    def request_row_limit(self) -> int:
        """The effective per-request row limit."""
        return self.max_request_rows if self.max_request_rows is not None else self.max_queue_rows


_MAX_BATCH_BYTES = 2**40  # a run's input past a TiB can only be a typo


def _is_float(value: object) -> bool:
    """A number (not a bool) a float holds: an int past any float failed the load of the version."""
    if not is_number(value):
        return False
    try:
        float(value)  # type: ignore[arg-type]
    except OverflowError:
        return False
    return True


def _finite_at_least_zero(value: object) -> bool:
    # (not math.isfinite alone: it raises OverflowError for an int past any float, such as 400 digits in TOML)
    return _is_float(value) and math.isfinite(value) and value >= 0  # type: ignore[arg-type, operator]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """The onnxruntime sessions of one model version and how they use the machine."""

    size: int = 1
    """How many batches may run at once: one onnxruntime session each."""
    intra_op_threads: int | None = None
    """Threads of each session's intra-op pool. ``None``: the usable cores for the one shared session (the
    default on the CPU: its ``size`` concurrent runs take turns on that one pool, each also using its
    calling thread), or the usable cores divided by ``size`` with ``share_session = False``, so the pool
    never oversubscribes the machine; one thread when a run is too short to gain from more
    (docs/repository.md, "Thread budget")."""
    inter_op_threads: int = 1
    """Threads for running independent graph branches in parallel (1 = sequential execution)."""
    allow_spinning: bool = False
    """Let idle onnxruntime threads spin, and give every model the thread budget (with ``intra_op_threads``
    unset): a small model's run then splits over the cores without a thread wake-up, as onnxruntime's own
    default session does. Faster for callers of a process that has the host's cores to itself (a run of a
    small model about a fifth faster here), but spinning threads steal the cores that web threads and other
    gunicorn workers need, so it is off by default (docs/performance.md, "Spinning")."""
    providers: tuple[str, ...] | Literal["auto"] = "auto"
    """``"auto"``: CUDA when it is usable, else CPU. Or an explicit onnxruntime provider list."""
    device_ids: tuple[int, ...] = (0,)
    """GPU device ids; sessions of the pool are spread over them round-robin."""
    provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Options per provider, passed to onnxruntime as they are, e.g. ``{"CUDAExecutionProvider":
    {"arena_extend_strategy": "kSameAsRequested", "enable_cuda_graph": "1"}}`` (CUDA graphs need fixed
    shapes). ``device_id`` is set per session from ``device_ids``."""
    require_gpu: bool = False
    """Raise :class:`ModelLoadError` instead of falling back to the CPU when no GPU is usable."""
    graph_optimization: GraphOptimization = "all"
    """onnxruntime graph optimization level."""
    share_session: bool | None = None
    """Run the pool's ``size`` concurrent batches on one session instead of one session each: one copy of
    the weights however large the pool (``session.run`` is thread-safe). ``None`` (default): shared on the
    CPU, where it measured faster and smaller than separate sessions, and separate on a GPU, where one
    session's runs share one CUDA stream. See docs/performance.md."""
    shared_weights: bool = False
    """Let worker processes share one copy of the weights: onnxruntime memory-maps weights stored in an
    external data file (save the model with ``onnx.save_model(..., save_as_external_data=True)``), and with
    this option it uses the mapped pages in place instead of pre-packing a private copy per process.
    Measured: 4 workers 202 MB instead of 634 MB, each run about 2x slower (docs/performance.md). With or
    without this option, the sessions read the weights they did not pre-pack from the mapped file for as
    long as they live: replace it by a rename or a new version folder, never by overwriting it in place,
    which changes a loaded copy's answers or kills the process with SIGBUS (docs/repository.md, "Replacing
    files")."""
    io_binding: bool | None = None
    """Run through onnxruntime's I/O binding: each input bound as an ``OrtValue`` on the session's device and
    each output produced there, then copied back. ``None`` (default) or ``False``: off, for GPU sessions too,
    where it was measured slower than a plain run at every size (an H200: 162 against 91 µs for one row of
    a 4096-wide MLP, 10.0 against 6.9 ms for 1,024 rows: docs/performance.md, "GPUs"); ``True``: on."""
    memory_arena: bool = True
    """onnxruntime's CPU memory arena: fast, but it keeps the peak of what any batch needed."""
    arena_shrinkage: bool = False
    """Give arena memory back after each run (frees a burst of large requests, at some cost per run). Needs
    ``memory_arena``: the combination with ``memory_arena = False`` is refused."""
    memory_pattern: bool | Literal["auto"] = "auto"
    """onnxruntime's memory pattern (``enable_mem_pattern``): a session plans a run's allocations once per
    distinct set of input shapes and keeps every plan for its life, without bound. ``"auto"`` (default): off
    for a model with a dynamic axis past an input's first, or an input of any rank, whose sizes clients choose
    (a text's length, an image's size), so each new size would grow the worker for good; on otherwise, where
    the batch axis alone gives at most ``max_batch_size`` plans. Measured on the CPU, off costs no time a run could show
    (docs/performance.md, "Memory pattern")."""
    max_run_s: float | None = 60.0
    """The longest one ``session.run`` of this version may take, in seconds: onnxruntime stops a run still
    going then (at its next operator), which raises :class:`RunTimeLimitError`. A request's own deadline
    (``timeout_s``) stops its run earlier, never later. It bounds what one request's values can make a run
    cost (a loop's trip count, a size): without it such a request holds a session of the pool for as long as
    it likes, and a few of them the whole pool. 60 s (default) is far above a merged batch of
    ``max_batch_size`` rows of usual models on a slow host; raise it for models whose runs are long by design
    (generation on a CPU). ``None``, ``0`` or ``inf`` (``max_run_s = 0`` in config.toml): no limit."""
    optimized_model_cache: bool = False
    """Save the optimized graph next to ``model.onnx`` (``model.optimized-<onnxruntime version>-<key>-<source>
    .onnx``, named after the model file, the key a digest of optimization level, providers, pre-packing and
    CPU, the source one of the model's files) and load it on later starts instead of optimizing again."""

    def __post_init__(self) -> None:
        plain_fields(self)
        check_int("pool.size", self.size, 1, _MAX_THREADS)
        if self.intra_op_threads is not None:
            check_int("pool.intra_op_threads", self.intra_op_threads, 1, _MAX_THREADS)
        check_int("pool.inter_op_threads", self.inter_op_threads, 1, _MAX_THREADS)
        for key in ("allow_spinning", "require_gpu", "shared_weights", "memory_arena", "arena_shrinkage"):
            check_bool(f"pool.{key}", getattr(self, key))
        check_bool("pool.optimized_model_cache", self.optimized_model_cache)
        if self.arena_shrinkage and not self.memory_arena:  # onnxruntime would fail every run, not the load
            raise ConfigurationError(
                "pool.arena_shrinkage = true needs pool.memory_arena = true: shrinkage gives the arena's memory "
                "back, and without an arena onnxruntime refuses every run; set one of them"
            )
        if self.max_run_s is not None:
            if not (isinstance(self.max_run_s, float) and self.max_run_s == math.inf):  # (inf: no limit too)
                check_number("pool.max_run_s", self.max_run_s, 0.0)
            if self.max_run_s == 0 or self.max_run_s >= MAX_TIMEOUT_S:  # (no limit, as check_timeout reads one)
                object.__setattr__(self, "max_run_s", None)
            else:
                object.__setattr__(self, "max_run_s", float(self.max_run_s))
        check_bool("pool.share_session", self.share_session, optional=True)
        check_bool("pool.io_binding", self.io_binding, optional=True)
        if self.memory_pattern != "auto":
            try:
                check_bool("pool.memory_pattern", self.memory_pattern)
            except ConfigurationError:
                raise ConfigurationError(
                    f'pool.memory_pattern must be true, false or "auto", got {shown(self.memory_pattern)}'
                ) from None
            object.__setattr__(self, "memory_pattern", bool(self.memory_pattern))
        if self.providers != "auto":
            providers = _providers(self.providers)  # config.toml may hand us anything
            object.__setattr__(self, "providers", providers)
        devices = check_list("pool.device_ids", self.device_ids)
        if not devices or any(not is_int(device) or device < 0 for device in devices):
            raise ConfigurationError(f"pool.device_ids must be non-negative integers, got {shown(self.device_ids)}")
        object.__setattr__(self, "device_ids", devices)
        object.__setattr__(self, "provider_options", _provider_options(self.provider_options))
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise ConfigurationError(
                "pool.graph_optimization must be one of disable, basic, extended, all; "
                f"got {shown(self.graph_optimization)}"
            )


_MAX_CACHE_BYTES = 2**40  # a cache's byte bound past a TiB can only be a typo
_MAX_THREADS = 1024  # sessions or threads per model version: more can only be a typo


def _providers(value: object) -> tuple[str, ...]:
    providers = () if isinstance(value, str) else check_list("pool.providers", value)
    if not providers or not all(isinstance(name, str) and name for name in providers):
        raise ConfigurationError(
            f"pool.providers must be 'auto' or a non-empty list of provider names, got {shown(value)}"
        )
    return providers


def _provider_options(value: object) -> dict[str, dict[str, str]]:
    """Options as onnxruntime takes them, strings; a number or a bool is written as ``str`` writes it."""
    options: dict[str, dict[str, str]] = {}
    for name, values in check_table("pool.provider_options", value).items():
        table = check_table(f"pool.provider_options.{name}", values)
        for key, option in table.items():
            if not isinstance(option, str | numbers.Real | os.PathLike):
                raise ConfigurationError(
                    f"pool.provider_options.{name}.{key} must be a string or a number, got {shown(option)}"
                )
        options[str(name)] = {str(key): str(option) for key, option in table.items()}
    return options


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmupConfig:
    """Runs made on a new version before it becomes servable."""

    enabled: bool = True
    rows: int = 1
    """Rows in each synthesized warm-up request (zeros, shaped from the signature)."""
    runs: int = 1
    """Warm-up runs per session."""
    inputs_file: str | None = None
    """An ``.npz`` file (relative to the model folder) holding real warm-up inputs, used instead of zeros."""

    def __post_init__(self) -> None:
        plain_fields(self)
        check_bool("warmup.enabled", self.enabled)
        check_int("warmup.rows", self.rows, 1, MAX_BATCH_ROWS)  # allocated at load: 10**12 rows is a typo
        check_int("warmup.runs", self.runs, 1, 1000)
        check_text("warmup.inputs_file", self.inputs_file, optional=True, blank=False, path=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """An optional cache of outputs by exact inputs, per model version (off by default)."""

    enabled: bool = False
    max_entries: int = 10_000
    """Entries kept, least recently used evicted first."""
    max_bytes: int = 64 * 2**20
    """Bytes the kept answers may hold together (64 MiB), least recently used evicted first; an answer
    larger than this alone is not kept. Entries alone bound nothing: one request may carry
    ``max_request_rows`` rows (4,096), and 10,000 distinct such answers of a model with 16 outputs per
    row held 2.5 GiB."""
    ttl_s: float | None = None
    """Entries expire this long after they were stored (``None``: never)."""
    share_in_flight: bool | None = None
    """Whether identical requests in flight share one run: ``None`` (default) shares them only when the
    cache is enabled; ``True`` also without the cache; ``False`` never (each request runs)."""

    def __post_init__(self) -> None:
        plain_fields(self)
        check_bool("cache.enabled", self.enabled)
        check_int("cache.max_entries", self.max_entries, 1)
        check_int("cache.max_bytes", self.max_bytes, 1, _MAX_CACHE_BYTES)
        if self.ttl_s is not None:
            check_number("cache.ttl_s", self.ttl_s, 0, above=True)
        check_bool("cache.share_in_flight", self.share_in_flight, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftConfig:
    """Drift monitoring of inputs and outputs against a reference distribution (off unless a reference is
    given: a file, or a number of first rows to capture)."""

    reference_file: str | None = None
    """An ``.npz`` in the model folder with arrays named like the model's inputs (and outputs)."""
    capture_reference: int = 0
    """Capture the reference from the first N rows served, instead of a reference file (one or the other: with
    both, the file is used and a warning says so; a layer of configuration that names one replaces the other
    of the layers below)."""
    window: int = 1000
    """Rows per scored window."""
    bins: int = 10
    """Quantile bins of the reference for the PSI."""
    psi_threshold: float = 0.2
    """A feature whose PSI exceeds this marks the version as drifting (0.1: watch, 0.2: act, by convention)."""
    ks_threshold: float | None = None
    """Optionally, a KS statistic above this also marks drift (continuous features only); in (0, 1]: a KS
    statistic is at most 1, so 1 can never mark drift (it loads, with a warning)."""
    max_features: int = 64
    """Features tracked at most (the first columns of the first inputs, then outputs)."""

    @property
    def enabled(self) -> bool:
        return self.reference_file is not None or self.capture_reference > 0

    def __post_init__(self) -> None:
        plain_fields(self)
        check_text("drift.reference_file", self.reference_file, optional=True, blank=False, path=True)
        check_int("drift.capture_reference", self.capture_reference, 0)
        check_int("drift.window", self.window, 1)
        check_int("drift.bins", self.bins, 2, 1000)
        check_int("drift.max_features", self.max_features, 1)
        check_number("drift.psi_threshold", self.psi_threshold, 0, above=True)
        if self.ks_threshold is not None:
            check_number("drift.ks_threshold", self.ks_threshold, 0, 1, above=True)

    def warnings(self) -> list[str]:
        """Settings that load but do not do what they say: shown with the model's ``config_warning`` (status,
        the status CLI and page, a logged warning), and a problem to ``validate``."""
        found = []
        if self.ks_threshold is not None and self.ks_threshold >= 1:
            # (refusing it, as a release did, took the model down on every upgraded worker of a rolling deploy)
            found.append(
                f"[drift] ks_threshold = {self.ks_threshold} can never mark drift: a KS statistic is at most 1, "
                "and a window drifts when it is above the threshold; use a value in (0, 1)"
            )
        if self.reference_file is not None and self.capture_reference > 0:
            found.append(
                f"[drift] reference_file ({self.reference_file!r}) and capture_reference ({self.capture_reference}) "
                "are both set: the reference file is used and capture_reference is ignored; keep one of them"
            )
        return found


def _one_reference_source(base: DriftConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to the ``[drift]`` section ``base``, where naming one reference source (a file, or rows to
    capture) replaces the other one of ``base``: a server-wide ``capture_reference`` with one model's
    ``reference_file`` in its ``config.toml`` (or the other way round) means that model's choice. Both named
    in one layer are kept (the file is used, and ``DriftConfig.warnings`` says so)."""
    file_given = changes.get("reference_file") is not None
    capture: Any = changes.get("capture_reference")
    capture_given = is_int(capture) and capture > 0  # (a bad value is left for DriftConfig to refuse)
    if file_given and "capture_reference" not in changes and base.capture_reference:
        return {**changes, "capture_reference": 0}
    if capture_given and "reference_file" not in changes and base.reference_file is not None:
        return {**changes, "reference_file": None}
    return changes


@dataclass(frozen=True, slots=True, kw_only=True)
class InputBounds:
    """The values one input may hold, checked on every request before it is queued or run: a value below
    ``min`` or above ``max`` fails that request alone with :class:`InvalidInputError`.

    For an input whose value sets a size inside the model (the count of a ``ConstantOfShape``, ``Expand``,
    ``Tile`` or ``Range``, ``Resize`` sizes, ``Pad`` widths, ``TopK``'s ``k``, ``OneHot``'s depth, a
    ``Loop``'s trip count such as a generation length): a client's ``500000000`` there made onnxruntime
    allocate and touch gigabytes (kept by the memory arena), and a ``Loop`` of ``10**10`` steps held a
    session for hours. Integer and float inputs alike; NaN is left to ``nan_policy`` (it is no value below or
    above a bound), infinity is above any ``max`` and below any ``min``. Written in ``config.toml`` as
    ``[inputs.max_length]`` with ``min = 1`` and ``max = 4096``; each bound may be left unset.
    """

    min: int | float | None = None
    """The smallest value allowed (``None``: no lower bound)."""
    max: int | float | None = None
    """The largest value allowed (``None``: no upper bound)."""

    def __post_init__(self) -> None:
        plain_fields(self)
        check_bound("min", self.min)
        check_bound("max", self.max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigurationError(f"min ({shown(self.min)}) is above max ({shown(self.max)}): no value could pass")


def _input_bounds(name: object, value: object) -> InputBounds:
    """``value`` for the input ``name`` of ``ModelConfig.inputs``: an :class:`InputBounds`, or a table of its
    keys (``[inputs.max_length]``)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"inputs must be keyed by input name (a non-empty string), got the key {shown(name)}")
    if isinstance(value, InputBounds):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"inputs.{name} must be an InputBounds or a table of min and max ([inputs.{name}]), got {shown(value)}"
        )
    unknown = sorted(map(str, set(value) - {"min", "max"}))
    if unknown:
        raise ConfigurationError(f"inputs.{name}: unknown key(s) {', '.join(unknown)}; known keys are max, min")
    try:
        return InputBounds(**value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"inputs.{name}: {exc}") from None


_SECTIONS: dict[str, type[Any]] = {
    "batching": BatchingConfig,
    "pool": PoolConfig,
    "warmup": WarmupConfig,
    "rollout": RolloutConfig,
    "drift": DriftConfig,
    "cache": CacheConfig,
}


def _how_to_make(name: str, value: object) -> str:
    """What to pass as ``ModelConfig``'s ``name`` instead of ``value`` (config.toml's words, as a dict or a
    string, are what a reader of repository.md writes first)."""
    if name == "version_policy":
        return f"use {policy_in_code(value)}"
    return (
        f"build it with inprocserve.{_SECTIONS[name].__name__}(...), or lay a config.toml-shaped dict over the "
        f"defaults with ModelConfig().merged({{{name!r}: {{...}}}})"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """Everything that shapes how one model is served. Defaults suit a CPU web host."""

    batching: BatchingConfig = field(default_factory=BatchingConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    nan_policy: NanPolicy = "allow"
    """``"reject"`` refuses float inputs holding NaN or infinity with :class:`InvalidInputError`."""
    inputs: Mapping[str, InputBounds] = field(default_factory=dict)
    """Input name -> the values it may hold (:class:`InputBounds`), checked on every request; each name must be
    an input of the model (a load refuses one it lacks). For inputs whose value sets a size in the model."""

    def __post_init__(self) -> None:
        plain_fields(self)
        for name, kind in {**_SECTIONS, "version_policy": VersionPolicy}.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise ConfigurationError(
                    f"{name} must be a {kind.__name__}, got {value!r}: {_how_to_make(name, value)}"
                )
        if self.nan_policy not in ("allow", "reject"):
            raise ConfigurationError(f"nan_policy must be 'allow' or 'reject', got {shown(self.nan_policy)}")
        inputs = check_table("inputs", self.inputs)
        object.__setattr__(self, "inputs", {name: _input_bounds(name, value) for name, value in inputs.items()})

    def merged(self, overrides: Mapping[str, Any], *, source: str = "config") -> ModelConfig:
        """A copy with the values of a ``config.toml``-shaped mapping laid over this one."""
        return _merge(self, overrides, source)

    def overlaid(self, other: ModelConfig, *, source: str = "models=") -> ModelConfig:
        """A copy with the settings of ``other`` that differ from the library defaults laid over this one,
        field by field inside each section.

        This is how ``Server(models={name: config})`` is laid over ``config.toml``: a setting counts as
        given in code when its value is not the library default, so ``ModelConfig(batching=
        BatchingConfig(max_batch_size=8))`` changes ``max_batch_size`` alone and keeps every other value
        of the file. (A value equal to the library default therefore never overrides the file: change it in
        the file instead.) ``version_policy`` and ``nan_policy`` are single values; the other sections
        (``batching``, ``pool``, ...) are compared field by field, and ``inputs`` input by input (an input's
        :class:`InputBounds` in ``other`` replaces that input's, the others are kept).

        Raises:
            ConfigurationError: the combination is invalid (say ``preferred_batch_sizes`` from one side
                above ``max_batch_size`` from the other).
        """
        defaults = _DEFAULTS
        changes: dict[str, Any] = {}
        for item in dataclasses.fields(ModelConfig):
            given, default = getattr(other, item.name), getattr(defaults, item.name)
            if item.name in _SECTIONS:
                fields = _changed(given, default, getattr(self, item.name))
                if item.name == "drift":
                    fields = _one_reference_source(self.drift, fields)
                if fields:
                    try:
                        changes[item.name] = dataclasses.replace(getattr(self, item.name), **fields)
                    except ConfigurationError as exc:
                        raise ConfigurationError(f"{source} laid over the model's config: {exc}") from None
            elif item.name == "inputs":
                if given:
                    changes[item.name] = {**self.inputs, **given}
            elif given != default:
                changes[item.name] = given
        return dataclasses.replace(self, **changes) if changes else self


_DEFAULTS = ModelConfig()


def _changed(given: Any, default: Any, base: Any) -> dict[str, Any]:
    """The fields of ``given`` that differ from ``default``; a nested group (``rollout.canary``) that
    differs is laid over ``base``'s group field by field in turn."""
    fields: dict[str, Any] = {}
    for inner in dataclasses.fields(given):
        value, plain = getattr(given, inner.name), getattr(default, inner.name)
        if not inner.init or value == plain:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and type(value) is type(plain):
            nested = _changed(value, plain, getattr(base, inner.name))
            value = dataclasses.replace(getattr(base, inner.name), **nested)
        fields[inner.name] = value
    return fields


def check_model_configs(config: object, models: object, *, names: tuple[str, str] = ("config", "models")) -> None:
    """Refuse a ``config=`` that is not a :class:`ModelConfig` (or ``None``) and a ``models=`` that is not a
    mapping of model name -> :class:`ModelConfig`, naming the setting (``names``: how the caller calls the two).

    A ``config.toml``-shaped dict is the natural mistake, and it was accepted: every model then failed its
    load ("AttributeError: 'dict' object has no attribute 'version_policy'"), so the server, or each worker
    of an app, started and served nothing (404 on every request) instead of refusing the setting at start-up.

    Raises:
        ConfigurationTypeError: saying which setting, which entry, and how to build it (a ``TypeError`` too).
    """
    hint = (
        "build it with inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(...), ...), or lay a "
        "config.toml-shaped dict over the defaults with inprocserve.ModelConfig().merged({...})"
    )
    if config is not None and not isinstance(config, ModelConfig):
        raise ConfigurationTypeError(
            f"{names[0]} must be an inprocserve.ModelConfig or None, got {type(config).__name__}: {hint}"
        )
    if models is None:
        return
    if not isinstance(models, Mapping):
        raise ConfigurationTypeError(
            f"{names[1]} must be a dict of model name -> inprocserve.ModelConfig, got {type(models).__name__}"
        )
    for name, each in models.items():
        if not isinstance(name, str):
            raise ConfigurationTypeError(
                f"{names[1]} must be keyed by model name (a string), got the key {shown(name)}"
            )
        if not isinstance(each, ModelConfig):
            raise ConfigurationTypeError(
                f"{names[1]}[{name!r}] must be an inprocserve.ModelConfig, got {type(each).__name__}: {hint}"
            )


def load_model_config(path: Path, base: ModelConfig | None = None, *, ignored: list[str] | None = None) -> ModelConfig:
    """Read ``config.toml`` at ``path`` over ``base`` (the server's defaults).

    With ``ignored`` (what a server reads), a key this release does not know is appended to it (``[batching]
    max_batch_bytes``) and left out, not refused: on a repository shared by hosts of two releases (a rolling
    upgrade), a key the newer one reads refused the whole file on the older hosts, and every older worker that
    started (a recycled gunicorn worker, a crash, a scale-up) served nothing of the model. Without it, such a
    key is a ``ConfigurationError``. A value of the wrong type or out of range is refused either way. The first
    ``SHOWN_UNKNOWN_KEYS`` keys left out are named, then how many more (``"79980 more"``)."""
    base = base or ModelConfig()
    data = read_toml(path)
    found: list[str] | None = None if ignored is None else []
    try:
        with _DEPRECATIONS.reading(str(path)):
            config = _merge(base, data, str(path), ignored=found)
    except ConfigurationError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type deeper in a section
        raise ConfigurationError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if ignored is not None and found:
        ignored.extend(shown_unknown_keys(found))
    return config


def _merge(
    config: ModelConfig, data: Mapping[str, Any], source: str, *, ignored: list[str] | None = None
) -> ModelConfig:
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{source}: [{key}] must be a table, got {shown(value)}")
            changes[key] = _replace_section(getattr(config, key), key, value, source, ignored=ignored)
        elif key == "version_policy":
            changes[key] = parse_version_policy(value, source)
        elif key == "nan_policy":
            changes[key] = value
        elif key == "inputs":
            changes[key] = _merge_inputs(config.inputs, value, source, ignored=ignored)
        elif ignored is not None:  # (see load_model_config)
            name_unknown_keys(ignored, "", [key], [*_SECTIONS, *_SINGLE_KEYS])
        else:
            known = ", ".join(sorted([*_SECTIONS, *_SINGLE_KEYS]))
            raise ConfigurationError(f"{source}: unknown key {key!r}; known keys are {known}")
    try:
        return dataclasses.replace(config, **changes)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None


_SINGLE_KEYS = ("version_policy", "nan_policy", "inputs")
"""The top-level keys of ``config.toml`` besides the sections of :data:`_SECTIONS`."""


def _merge_inputs(
    inputs: Mapping[str, InputBounds], tables: object, source: str, *, ignored: list[str] | None = None
) -> dict[str, InputBounds]:
    """``[inputs.NAME]`` tables laid over ``inputs``: each replaces that input's bounds, the others are kept.
    A key this release does not know is left out into ``ignored`` when given (see ``load_model_config``)."""
    if not isinstance(tables, Mapping):
        raise ConfigurationError(f"{source}: inputs must be tables of min and max ([inputs.NAME]), got {shown(tables)}")
    merged = dict(inputs)
    for name, table in tables.items():
        if isinstance(table, Mapping) and ignored is not None:
            table = _known_only(table, InputBounds, f"inputs.{name}", ignored)
        try:
            merged[name] = _input_bounds(name, table)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
    return merged


def _replace_section(
    section: Any, name: str, values: Mapping[str, Any], source: str, *, ignored: list[str] | None = None
) -> Any:
    known = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - known)
    if unknown and ignored is not None:  # (see load_model_config)
        name_unknown_keys(ignored, f"[{name}] ", unknown, known)
        values = {key: value for key, value in values.items() if key in known}
    elif unknown:
        raise ConfigurationError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [{name}]; known keys are {', '.join(sorted(known))}"
        )
    converted = dict(values)
    if name == "batching" and "max_delay_ms" in converted:
        milliseconds = converted["max_delay_ms"]
        message = f"{source}: [batching] max_delay_ms is deprecated; write max_delay_s (in seconds) instead"
        _DEPRECATIONS.found(message)
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        if _finite_at_least_zero(milliseconds) and "max_delay_s" not in converted:
            converted["max_delay_s"] = milliseconds / 1000.0
            converted["max_delay_ms"] = None
    for key in ("preferred_batch_sizes", "providers", "device_ids", "shadow", "rankers"):
        if key in converted and isinstance(converted[key], list):
            converted[key] = tuple(converted[key])
    if name == "rollout":
        _group_flat_rollout_keys(converted, source)
        variants = converted.get("variants")
        if isinstance(variants, Mapping) and ignored is not None:  # (an arm's keys of a newer release too)
            converted["variants"] = {
                arm: _known_only(table, VariantConfig, f"rollout.variants.{arm}", ignored)
                if isinstance(table, Mapping)
                else table
                for arm, table in variants.items()
            }
        for group in GROUPS:  # [rollout.canary] and the other groups are laid over the group, key by key
            table = converted.get(group)
            if isinstance(table, Mapping) and ignored is not None:
                table = converted[group] = _known_only(table, getattr(section, group), f"rollout.{group}", ignored)
            if isinstance(table, Mapping):
                try:
                    converted[group] = dataclasses.replace(getattr(section, group), **_tuples(table))
                except TypeError as exc:
                    raise ConfigurationError(f"{source}: [rollout.{group}]: {exc}") from None
                except ConfigurationError as exc:
                    raise ConfigurationError(f"{source}: {exc}") from None
    if name == "drift":
        converted = _one_reference_source(section, converted)
    if name == "batching" and isinstance(converted.get("padding"), Mapping):
        if ignored is not None:
            converted["padding"] = _known_only(converted["padding"], PaddingConfig, "batching.padding", ignored)
        try:
            converted["padding"] = PaddingConfig(**converted["padding"])
        except TypeError as exc:
            raise ConfigurationError(f"{source}: [batching.padding]: {exc}") from None
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
    try:
        return dataclasses.replace(section, **converted)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    except TypeError as exc:
        raise ConfigurationError(f"{source}: [{name}]: {exc}") from None


def _group_flat_rollout_keys(converted: dict[str, Any], source: str) -> None:
    """Move the deprecated flat ``[rollout]`` keys (``candidate``, ``shadow = [..]`` ...) into their tables."""
    flat = {key: converted.pop(key) for key in list(converted) if key in FLAT_FIELDS}
    if isinstance(converted.get("shadow"), list | tuple):
        flat["shadow"] = converted.pop("shadow")
    if not flat:
        return
    moved = {key: ("shadow", "versions") if key == "shadow" else FLAT_FIELDS[key] for key in sorted(flat)}
    message = (
        f"{source}: [rollout] {', '.join(moved)} {'is' if len(moved) == 1 else 'are'} deprecated; write "
        + ", ".join(f"{inner} in [rollout.{group}]" for group, inner in moved.values())
        + " instead"
    )
    _DEPRECATIONS.found(message)
    warnings.warn(message, DeprecationWarning, stacklevel=4)
    for key, (group, inner) in moved.items():
        table = converted.get(group)
        if table is not None and not isinstance(table, Mapping):
            raise ConfigurationError(
                f"{source}: rollout.{group} must be a table ([rollout.{group}]), got {shown(table)}"
            )
        table = dict(table or {})
        table.setdefault(inner, flat[key])  # a key written in the table wins over its flat form
        converted[group] = table


def _known_only(table: Mapping[str, Any], kind: Any, name: str, ignored: list[str]) -> dict[str, Any]:
    """``table`` without the keys the dataclass ``kind`` has no field for, each appended to ``ignored``."""
    known = {f.name for f in dataclasses.fields(kind)}
    name_unknown_keys(ignored, f"[{name}] ", sorted(set(table) - known), known)
    return {key: value for key, value in table.items() if key in known}


def _tuples(table: Mapping[str, Any]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in table.items()}
