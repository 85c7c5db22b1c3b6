"""The onnxruntime backend: providers, session options, the optimized-graph cache, I/O binding, run options
and deadlines (error translation and provider rules, which need no runtime, are in ``_ort_rules.py``).

This is the only module that imports onnxruntime, so the rest of the library works with plain numpy
arrays and our own exceptions, and a remote backend fits the same seam (``_backend.py``). It imports
onnxruntime only when the first session is built, never at ``import inprocserve``: onnxruntime starts a
thread when it is imported, and a process forked after that (a gunicorn ``--preload`` worker) crashes at
exit when onnxruntime's cleanup joins the thread it never had.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _fork, _native, _stop_signal
from . import _graph_partials as graph_partials
from ._backend import raised_by_signal_handler
from ._config import ModelConfig, PoolConfig
from ._cpu_quota import CpuQuota, current_cpu_quota
from ._deadlines import Watchdog
from ._declared_shapes import Declared, declared_tensors, session_signature
from ._errors import (
    DeadlineExceededError,
    InferenceError,
    InprocserveError,
    ModelLoadError,
    RunTimeLimitError,
    ServerClosedError,
    VersionRetiredError,
    failure_text,
)
from ._integrity import check_external_data, check_version, external_data_locations
from ._ort_rules import (
    CPU as _CPU,
)
from ._ort_rules import (
    CUDA as _CUDA,
)
from ._ort_rules import (
    GPU_PROVIDERS,
    OPTIMIZED_GRAPH,
    RUN_ERROR_MAP,
    ProviderSpec,
    allocation_error,
    check_provider_names,
    memory_pattern,
    onnxruntime_builds,
    onnxruntime_version,
    resolve_providers,
    thread_budget,
    translate_run_error,
    usable_cores,
)
from ._run_limit import RunLimit, RunSlot
from ._signature import Signature
from ._stop_signal import THIS_THREAD as _stopping
from ._stop_signal import StopSignal

__all__ = [
    "RUN_ERROR_MAP",
    "OnnxruntimeBackend",
    "build_onnxruntime_backend",
    "onnxruntime_error_types",
    "onnxruntime_version",
    "registered_providers",
    "resolve_providers",
    "row_bytes",
    "rows_within",
    "session_options",
    "thread_budget",
    "translate_run_error",
    "usable_cores",
]

logger = logging.getLogger(__name__)

_os_thread_ident = _native._original("get_ident")  # (the OS thread's, under gevent's patch too, as the slots are)
_NO_THREAD = (-1, RunSlot(None))  # (no thread has that id: its slot is never run on)


def _gevent_stop_signal() -> None:
    """gevent patched the process after this module was imported: read its module's renewed ``THIS_THREAD``,
    one per greenlet (its module's hook ran before this one: see _stop_signal)."""
    global _stopping
    _stopping = _stop_signal.THIS_THREAD


_fork.on_monkey_patch(_gevent_stop_signal)

_OPTIMIZATION = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _ort() -> Any:
    """onnxruntime, imported on first use (see the module docstring for why not at import time)."""
    try:
        import onnxruntime
    except ImportError as exc:
        # A task's time limit (a signal handler's exception) that lands in onnxruntime's first import comes
        # out as "ImportError: initialization failed", caused by it: raised as it is, the task sees its time
        # limit and the next task imports again, where the ImportError was recorded as a failed load.
        cause = exc.__cause__ or exc.__context__
        for _ in range(8):  # (through the imports nested in it: each ImportError caused by the one inside)
            if cause is None:
                break
            if raised_by_signal_handler(cause):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise

    return onnxruntime


def onnxruntime_error_types() -> dict[str, type[BaseException]]:
    """onnxruntime's own exception classes by name (for the completeness test of the error map)."""
    from onnxruntime.capi import onnxruntime_pybind11_state

    return {
        name: obj
        for name, obj in vars(onnxruntime_pybind11_state).items()
        if isinstance(obj, type) and issubclass(obj, Exception)
    }


def _probe_clock(config: PoolConfig) -> Any:
    """The clock that times the one-thread probe run: the calling thread's CPU time where it measures the
    run, since a session of one intra-op thread runs its operators on the calling thread (wall time
    overstates the run whenever other processes take the cores meanwhile, as a fleet's sibling workers
    warming up at the same moment do); wall time where it does not: with inter-op threads the operators run
    on onnxruntime's inter-op pool, and Windows counts a thread's CPU time in 15.6 ms ticks."""
    if config.inter_op_threads == 1 and sys.platform != "win32":
        return time.thread_time
    return time.perf_counter


# -- providers ------------------------------------------------------------------------------------------

_cuda_lock = threading.Lock()
_cuda_usable: bool | None = None


def _cuda_listed() -> bool:
    return _CUDA in _ort().get_available_providers()


def _probe_cuda(model_path: Path) -> bool:
    """Whether a CUDA session really starts, asked once per process and logged once.

    onnxruntime lists CUDA whenever the GPU wheel is installed, even when the driver or CUDA libraries
    are missing; it then logs errors and falls back to the CPU. So we build one quiet session (fatal-only
    logging) and look at the providers it actually got.
    """
    global _cuda_usable
    ort = _ort()
    with _cuda_lock:
        if _cuda_usable is None:
            builds = onnxruntime_builds()
            if len(builds) > 1:
                logger.warning(
                    "%s are installed together: they share one package folder, so the last installed overwrote "
                    "the other's files; keep one (pip uninstall both, then install the one you want: "
                    'docs/operations.md, "GPUs")',
                    " and ".join(builds),
                )
            if not _cuda_listed():
                _cuda_usable = False
                logger.info("onnxruntime %s has no CUDA provider; using the CPU", ort.__version__)
            else:
                options = ort.SessionOptions()
                options.log_severity_level = 4
                try:
                    probe = ort.InferenceSession(str(model_path), options, providers=[_CUDA, _CPU])
                    _cuda_usable = probe.get_providers()[0] == _CUDA
                except Exception:  # any failure means: not usable
                    _cuda_usable = False
                if _cuda_usable:
                    logger.info("CUDA is usable; models run on the GPU")
                else:
                    logger.warning("onnxruntime lists CUDA but it is not usable here; using the CPU")
        return _cuda_usable


def registered_providers() -> list[str]:
    """The execution providers onnxruntime has devices for, plugin providers the application registered
    (``onnxruntime.register_execution_provider_library``) included, which ``get_all_providers()`` never
    lists; none from an onnxruntime too old to have ``get_ep_devices``."""
    ort = _ort()
    if not hasattr(ort, "get_ep_devices"):
        return []
    return list(dict.fromkeys(device.ep_name for device in ort.get_ep_devices()))


# A model whose largest batch runs faster than this on one thread gains nothing from more: without spinning,
# each parallel operator pays a thread wake-up that costs about as much as the work it would split.
AUTO_THREADS_SERIAL_BELOW_S = 0.001
PROBE_RUNS = 5  # timed probe runs at most (see OnnxruntimeBackend._choose_threads)
# A version given more than one thread keeps a one-thread session for its short runs only while its folder
# holds at most this much (the session is a second copy of the weights in memory).
ONE_THREAD_SESSION_MAX_BYTES = 64 * 1024 * 1024
# The most bytes of input a run of made-up rows at load holds (the thread probe's, the run cost's): as many rows
# as fit, never fewer than 1. Probed with max_batch_size rows, a model of 32 MiB rows (input [batch, 2048, 4096]
# of float32) made up 2 GiB of input and as much output, and its load peaked at 2.2 GB of RSS; rows of 300 MiB
# could not load on an ordinary host at all.
PROBE_MAX_BYTES = 64 * 1024 * 1024


def row_bytes(signature: Signature, inner_size: int = 1) -> int:
    """The bytes of one made-up row of ``signature``'s inputs, each dynamic inner axis ``inner_size`` long (an
    input without a row axis counts nothing: it is the same whatever the rows). Nothing is filled: zeros are
    mapped lazily."""
    one = signature.synthesize(1, inner_size)
    two = signature.synthesize(2, inner_size)
    return sum(two[name].nbytes - array.nbytes for name, array in one.items())


def rows_within(budget_bytes: int, each_bytes: int, most: int) -> int:
    """How many rows of ``each_bytes`` fit ``budget_bytes``: at least 1, at most ``most``."""
    return most if each_bytes <= 0 else max(1, min(most, budget_bytes // each_bytes))


def one_thread_rows(one_s: float, many_s: float, rows: int) -> int:
    """The most rows (under ``rows``) whose run takes under ``AUTO_THREADS_SERIAL_BELOW_S`` on one thread, by the
    line through a one-thread run of 1 row (``one_s``) and of ``rows`` rows (``many_s``); 0 when none does."""
    if one_s >= AUTO_THREADS_SERIAL_BELOW_S or rows <= 1:
        return 0
    per_row = (many_s - one_s) / (rows - 1)
    if per_row <= 0:
        return rows - 1
    return min(rows - 1, 1 + int((AUTO_THREADS_SERIAL_BELOW_S - one_s) / per_row))


def session_options(config: PoolConfig, *, threads: int | None = None, memory_pattern: bool = True) -> Any:
    """onnxruntime ``SessionOptions``: thread count (``threads`` or the budget), spinning, optimization, and
    the memory pattern (:func:`~inprocserve._ort_rules.memory_pattern` decides it from the model's inputs)."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or thread_budget(config)
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL if config.inter_op_threads == 1 else ort.ExecutionMode.ORT_PARALLEL
    )
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPTIMIZATION[config.graph_optimization])
    options.log_severity_level = 3  # errors only: warnings about unused initializers etc. are noise here
    options.enable_cpu_mem_arena = config.memory_arena
    options.enable_mem_pattern = memory_pattern
    if config.shared_weights:  # use memory-mapped external weights in place, shared between processes
        options.add_session_config_entry("session.disable_prepacking", "1")
    spin = "1" if config.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def _fresh_run_options(*, arena_shrinkage: bool) -> Any:
    """New ``RunOptions`` for this library's runs."""
    options = _ort().RunOptions()
    options.log_severity_level = 4  # run failures reach the caller as our exceptions; no printing
    if arena_shrinkage:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _terminator(options: Any) -> Any:
    def terminate() -> None:
        options.terminate = True

    return terminate


def optimized_key(config: PoolConfig, providers: Sequence[ProviderSpec]) -> str:
    """A short digest of every option that shapes a saved optimized graph: the optimization level, the
    providers and their options (onnxruntime fuses nodes per provider), the onnxruntime version, and the
    session entries that change what is written (pre-packing of weights)."""
    shape = {
        "graph_optimization": config.graph_optimization,
        "providers": [spec if isinstance(spec, str) else [spec[0], sorted(spec[1].items())] for spec in providers],
        "onnxruntime": onnxruntime_version(),
        "disable_prepacking": bool(config.shared_weights),
        "cpu": cpu_instruction_sets(),  # hosts of other CPUs sharing the folder keep graphs of their own
    }
    text = json.dumps(shape, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_OPTIMIZED_INFIX = ".optimized-"  # <model file stem>.optimized-...: the registry skips these (OPTIMIZED_GRAPH)
_LEGACY_STEM = "model"  # earlier releases named every graph model.optimized-..., whatever the model file


_PARTIAL_SUFFIX = graph_partials.PARTIAL_SUFFIX
_UNWRITTEN = b"inprocserve: onnxruntime has not written the optimized graph here yet\n"  # (see _optimized_source)
_NAME_MAX_BYTES = 255  # a file name's limit on Linux, macOS and Windows file systems (ENAMETOOLONG past it)
# the longest ".<pid>-<thread id>.partial" tail: a thread id is a 64-bit pthread_t
_PARTIAL_TAIL_MAX = len(f".{2**32 - 1}-{2**64 - 1}{_PARTIAL_SUFFIX}")
# The instruction sets an optimized graph may be laid out for (x86 and Arm flag names in /proc/cpuinfo):
# other flags (bug mitigations, virtualization) change with kernels and microcode, not with the graph.
_ISA_FLAGS = ("sse", "ssse", "avx", "fma", "f16c", "bmi", "amx", "vnni", "asimd", "sve", "fphp", "i8mm", "bf16")


def _source_key(model: Path) -> str:
    """A digest of what a cached optimized graph is built from: the model file's name, and the size,
    modification time, inode and ctime of the model file and of every external-data file it names (in
    subfolders too). The name keeps two models of one folder (``load(path=...)``) apart; the ctime moves with
    any rewrite, also one that puts the mtime back (``cp -p`` over the file): without it the old graph served.
    """
    entries: list[tuple[str, int, int, int, int]] = []
    for name in (model.name, *external_data_locations(model)):
        try:
            stat = (model.parent / name).stat()
        except OSError:  # (a missing file fails the load's checks; it only has to change the key)
            entries.append((name, -1, -1, -1, -1))
            continue
        entries.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:12]


def _settled_sources(model: Path, made_ns: int) -> bool:
    """Whether the model file and every external-data file it names last changed in a timestamp tick of the
    file system before ``made_ns`` (the modification time it gave a file created beside the model before the
    model is read): git's racy rule, on the file system's one clock. Then the bytes onnxruntime reads are
    the last that their stat (the graph's :func:`_source_key`) can stand for: a later write moves the change
    time. A file changed in that tick may be rewritten within it keeping its size, inode and times (a file
    system of whole-second times): a graph cached under its key then answered for the file it replaced, at
    every later start."""
    for name in (model.name, *external_data_locations(model)):
        try:
            if (model.parent / name).stat().st_ctime_ns >= made_ns:
                return False
        except OSError:  # (a missing file fails the load's checks)
            return False
    return True


def _graph_stem(model: Path, rest: str) -> str:
    """The model file's stem, to name its cached graph ``<stem><rest>``; when the graph's partial file would
    pass the file-name limit (onnxruntime then fails to write it, ENAMETOOLONG, at every start), as much of the
    stem as fits, and a digest of the whole stem that keeps two such models of one folder apart."""
    budget = _NAME_MAX_BYTES - len(rest.encode()) - _PARTIAL_TAIL_MAX
    encoded = model.stem.encode()
    if len(encoded) <= budget:
        return model.stem
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    kept = encoded[: budget - len(digest) - 1].decode("utf-8", errors="ignore")  # (never half a character)
    return f"{kept}~{digest}"


@functools.cache
def cpu_instruction_sets() -> str:
    """This CPU's architecture and the instruction-set flags an optimized graph may be laid out for."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    flags = sorted(f for f in line.split(":", 1)[-1].split() if f.startswith(_ISA_FLAGS))
                    return f"{platform.machine()} {' '.join(flags)}"
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _is_partial_graph(name: str) -> bool:
    return _OPTIMIZED_INFIX in name and name.endswith((_PARTIAL_SUFFIX, graph_partials.OPENING_SUFFIX))


def _earlier_graphs(cached: Path, *, model: Path) -> list[Path]:
    """The graphs cached for earlier files of ``model`` with the same options and CPU as ``cached`` (they
    can never match again), and those a release before the model file's name was in the key wrote for this
    folder's models under ``model.optimized-...`` (never loaded now). Listed, not globbed: a model file's
    name may hold ``[`` or ``*``."""
    stem = cached.name.rsplit("-", 1)[0] + "-"  # everything but the source key
    stems = [stem]
    if model.stem != _LEGACY_STEM and not model.with_name(f"{_LEGACY_STEM}.onnx").exists():
        # (with a model.onnx beside it, such names are that model's own graphs)
        stems.append(_LEGACY_STEM + stem[stem.rindex(_OPTIMIZED_INFIX) :])
    try:
        with os.scandir(cached.parent) as listing:
            names = [entry.name for entry in listing]
    except OSError:
        return []
    return [
        cached.parent / name
        for name in names
        if name != cached.name
        and name.endswith(".onnx")
        and OPTIMIZED_GRAPH.fullmatch(name)
        and any(name.startswith(prefix) and "-" not in name[len(prefix) :] for prefix in stems)
    ]


def _graph_written(partial: Path) -> bool:
    """Whether onnxruntime got as far as writing the optimized graph into ``partial``: the marker it was
    created with is gone (a write that failed midway, on a full disk, leaves it truncated or overwritten)."""
    try:
        with partial.open("rb") as written:
            return written.read(len(_UNWRITTEN) + 1) != _UNWRITTEN
    except OSError:
        return True


_BINDING_FAILED = "Error in execution: "  # (how onnxruntime's run_with_iobinding words every failure)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# -- the backend ----------------------------------------------------------------------------------------

# Sessions inherited across fork() are never destroyed in the child: their destructors would join
# onnxruntime threads that do not exist there, and hang. They stay referenced here (their pages stay
# shared copy-on-write with the parent). That spares the child's own code, not its exit: onnxruntime's
# exit-time clean-up still hangs or aborts in any child forked after it was imported (see _fork.py).
_inherited: list[Any] = []


class OnnxruntimeBackend:
    """Builds, owns, runs and closes the onnxruntime sessions of one model version.

    Thread-safe. Sessions are created by :meth:`prepare` (at load) and, in a forked child, again lazily on
    first use, so no onnxruntime object or thread is ever shared across a fork. The runners are the
    sessions, ``size`` of them: one session lent ``size`` times (shared, one copy of the weights) or one
    session each. Runs with a deadline are stopped by this backend's own watchdog.
    """

    def __init__(
        self, path: Path, config: PoolConfig, *, model: str, version: int, follow_symlinks: bool = False
    ) -> None:
        self.path = path
        self.follow_symlinks = follow_symlinks
        self.config = config
        self.model = model
        self.version = version
        self.providers: list[str] = []
        self.shared = False  # whether the concurrent runs share one session
        self.io_binding = False  # whether runs go through onnxruntime's I/O binding (GPU sessions)
        self._devices: dict[int, int] = {}  # id(session) -> the device id it was created for
        self.signature: Signature | None = None
        self._warmup: Any = None
        self._output_names: list[str] = []
        self._sizing_inputs: tuple[str, ...] = ()  # integer inputs, which may set a size (named by allocation errors)
        self._threads: int | None = None  # intra-op threads per session, once chosen
        self._one_thread_rows = 0  # runs of at most this many rows take the one-thread session, once chosen
        self._memory_pattern: bool | None = None  # whether sessions plan allocations per input shape, once read
        self._declared: tuple[list[Declared], list[Declared]] | None = None  # the file's inputs and outputs, once read
        self._cpu_quota: CpuQuota | None = None  # the control group's CPU quota seen when they were chosen
        self._checked = False  # whether the file passed its integrity checks
        self._run_options: Any = None  # built with the first session (onnxruntime is imported lazily)
        # Stops runs whose deadline passes (its thread starts with the first run that has a deadline).
        self._watchdog = Watchdog(f"inprocserve-deadlines-{model}-v{version}")
        self._reset_state()
        _fork.register(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._sessions: list[Any] = []
        self._one_thread: Any = None  # the one-thread session for short runs (see _choose_threads), once built
        self._ready = False
        self._closed = False
        self._closing = StopSignal()  # stops the runs with options of their own when the backend closes
        # Stops plain runs past pool.max_run_s (those with a deadline or a stop signal: their own alarm). Its
        # options are made by a function, not a method: the sweep's pending alarm never holds the backend.
        limit_s = self.config.max_run_s
        fresh = functools.partial(_fresh_run_options, arena_shrinkage=self.config.arena_shrinkage)
        self._limit = None if limit_s is None else RunLimit(limit_s, fresh)  # (swept by the process's sweeper)
        # The OS thread that ran last under the limit and its slot: a thread running one run after another
        # (a sync worker's) finds its slot here for a read and a compare, not a ThreadValue look-up. A thread
        # that finds another's id looks its own up. (A later thread given a dead one's id takes its slot: a
        # thread runs one run at a time, and the dead one runs none.)
        self._last_slot: tuple[int, RunSlot] = _NO_THREAD

    def _after_fork_in_child(self) -> None:
        if self._sessions:
            _inherited.extend(self._sessions)
        if self._one_thread is not None:
            _inherited.append(self._one_thread)
        closed = self._closed
        self._reset_state()
        self._closed = closed
        if closed and self._limit is not None:
            self._limit.close()
        # The child builds its sessions from the file as it is now: check it again (checksum, external data),
        # as the parent did before its own sessions (the digest cache makes an unchanged file cost a stat).
        self._checked = False

    @property
    def kind(self) -> str:
        return "onnxruntime"

    @property
    def concurrency(self) -> int:
        return self.config.size

    @property
    def intra_op_threads(self) -> int | None:
        return self._threads

    def prepare(self, warmup: Any = None, *, probe_rows: int = 1) -> Signature:
        """Create every session (once per process), run ``warmup(session)`` on each, return the signature.

        With ``intra_op_threads`` unset the thread count is chosen by measurement on the first build: one
        thread if a ``probe_rows``-row run takes under 1 ms on one thread (its CPU time where that measures it,
        the best of three to five runs; timed on as many of those rows as fit ``PROBE_MAX_BYTES`` of input), else
        the thread budget (always the budget with ``allow_spinning``); and then, for the runs of fewer rows
        that one thread runs in under 1 ms, a one-thread session too (:meth:`_choose_threads`).

        Raises:
            ModelLoadError: the file is missing, not ONNX, corrupt, or a session or warm-up failed.
            ServerClosedError: the backend was closed.
        """
        if warmup is not None:
            self._warmup = warmup
        if not self._checked:  # before any session sees the file: checksum, and external data inside the folder
            check_version(self.path, model=self.model, version=self.version, follow_symlinks=self.follow_symlinks)
            self._checked = True
        if self._threads is None:
            self._cpu_quota = current_cpu_quota()  # (what thread_budget reads too)
            self._threads = self._choose_threads(probe_rows)
        with self._build_lock:
            if self._ready:
                assert self.signature is not None
                return self.signature
            if self._closed:
                raise ServerClosedError(
                    f"model {self.model!r} version {self.version} is unloaded", model=self.model, version=self.version
                )
            first = self._create(0)
            shared = self.config.share_session
            if shared is None:  # by measurement: shared is faster and smaller on the CPU (docs/performance.md)
                shared = first.get_providers()[0] == _CPU
            self.shared = shared
            binding = self.config.io_binding
            self.io_binding = bool(binding)  # (off unless asked: slower than a plain run on the GPU, measured)
            assert self.signature is not None
            if self.io_binding and any(
                spec.is_string or spec.dtype is None for spec in (*self.signature.inputs, *self.signature.outputs)
            ):
                self.io_binding = False  # binding carries numeric tensors only: strings, sequences, maps run plain
            if shared:  # one session, size concurrent runs: one copy of the weights
                sessions = [first] * self.config.size
            else:
                sessions = [first] + [self._create(index) for index in range(1, self.config.size)]
            one_thread = None
            if self._one_thread_rows and first.get_providers()[0] == _CPU:
                one_thread = self._create(0, threads=1)
            with self._lock:
                self._sessions = sessions
                self._one_thread = one_thread
                self._ready = True
        assert self.signature is not None
        return self.signature

    def _choose_threads(self, probe_rows: int) -> int:
        """The intra-op threads of every session: one if a ``probe_rows``-row run takes under
        ``AUTO_THREADS_SERIAL_BELOW_S`` on one thread, else the budget. Given the budget, the runs of fewer rows
        that one thread still runs in under that time (``_one_thread_rows``: :meth:`_short_run_rows`) take a
        one-thread session of their own, if the version is small enough to hold twice
        (``ONE_THREAD_SESSION_MAX_BYTES``) and its rows have no dynamic axis but their count: without spinning,
        each parallel operator of a short run pays a wake-up of the pool's threads that costs as much as the
        work it splits. mlp-small on a 2-core host whose 64-row run took 1.3-1.5 ms on one thread got two
        threads, and each lone request paid about 25 % more CPU for it, the pool's thread woken for every run
        (docs/performance.md, "Short runs on one thread")."""
        budget = thread_budget(self.config)
        # spinning threads take a parallel operator's work without a wake-up: more threads never cost one
        if self.config.intra_op_threads is not None or budget == 1 or self.config.allow_spinning:
            return budget
        probe = self._create(0, threads=1, warm=False)
        assert self.signature is not None
        wanted = probe_rows if self.signature.batchable else 1
        try:
            feeds, rows = self._runnable_probe(probe, wanted)
            elapsed = self._quickest_run(probe, feeds)
        except InprocserveError as exc:  # zeros are not valid input for every model
            logger.debug("thread probe of %r v%s failed (%s); using %d threads", self.model, self.version, exc, budget)
            return budget
        # Fewer rows than asked (wide rows): the run of all of them is taken to cost as much per row, an upper
        # bound (the fixed part counted again per row), so a short probe never gives one thread to long runs.
        threads = 1 if elapsed * wanted / rows < AUTO_THREADS_SERIAL_BELOW_S else budget
        logger.info(
            "model %r version %s: a %d-row run takes %.2f ms on one thread; using %d intra-op thread(s) per session",
            self.model,
            self.version,
            rows,
            elapsed * 1000,
            threads,
        )
        # (not where a request's rows differ beyond their count: a row of 512 steps is no short run, and the
        # probe's rows had one step each)
        short_runs = threads > 1 and rows > 1 and not self.signature.has_dynamic_inner_axes
        if short_runs and self._version_bytes() <= ONE_THREAD_SESSION_MAX_BYTES:
            try:
                self._one_thread_rows = self._short_run_rows(probe, feeds, elapsed)
            except InprocserveError:
                return threads
            if self._one_thread_rows:
                logger.info(
                    "model %r version %s: runs of up to %d rows take under 1 ms on one thread; they take a "
                    "one-thread session",
                    self.model,
                    self.version,
                    self._one_thread_rows,
                )
        return threads

    def _short_run_rows(self, probe: Any, many: dict[str, Any], many_s: float) -> int:
        """How many rows one thread runs in under ``AUTO_THREADS_SERIAL_BELOW_S`` (:func:`one_thread_rows`), by
        the line through the quickest run of 1 row on the one-thread ``probe`` and its run of the ``many``
        feeds' rows (``many_s``), timed as the thread count was (the calling thread's CPU time where it
        measures the run: a host busy meanwhile does not move it, where wall time measured on a busy host
        read a one-row run at 80 to 200 µs and a second thread as quicker or slower by the draw)."""
        rows = next(iter(many.values())).shape[0]
        return one_thread_rows(self._quickest_run(probe, self._runnable_probe(probe, 1)[0]), many_s, rows)

    def _quickest_run(self, probe: Any, feeds: dict[str, Any]) -> float:
        """The quickest of up to ``PROBE_RUNS`` timed runs of ``feeds`` on the one-thread ``probe`` session
        (three when clearly off the one-thread line)."""
        clock = _probe_clock(self.config)
        elapsed = math.inf
        for attempt in range(PROBE_RUNS):
            start = clock()
            self.run(probe, feeds)
            elapsed = min(elapsed, clock() - start)
            if attempt >= 2 and not 0.5 <= elapsed / AUTO_THREADS_SERIAL_BELOW_S <= 2:
                break
        return elapsed

    def _version_bytes(self) -> int:
        """The size of what a session holds of the version: its model file and every external-data file it
        names. Not the folder's: that missed weights in a subfolder (``data/weights.bin``: a second copy of
        any size), and counted the cached optimized graphs beside the model, so a version that got a
        one-thread session on its first start lost it once its graph was cached."""
        try:
            files = (self.path.name, *external_data_locations(self.path))
            return sum((self.path.parent / name).stat().st_size for name in files)
        except OSError:
            return ONE_THREAD_SESSION_MAX_BYTES + 1  # (unreadable: no second copy)

    def _runnable_probe(self, probe: Any, wanted: int) -> tuple[dict[str, Any], int]:
        """Zeros of ``wanted`` rows, or of as many as fit ``PROBE_MAX_BYTES`` at the length tried (counted at 1 step, a
        probe of 16 made up 16 times the bound), that ``probe`` runs (its first run, which allocates), and their rows;
        with the model's dynamic inner axes as long as the first of :meth:`Signature.made_up_inner_sizes` that runs (a
        convolution over time failed its probe on one step and got every core, however short its run), and its inputs of
        any rank of the first of :meth:`Signature.made_up_ranks` that runs, as the warm-up tries them: the probe runs
        before any session, so before the warm-up, and made such an input a scalar, which a MatMul refused (the model
        got every core).

        Raises:
            InprocserveError: the model runs on none of them (the first failure).
        """
        assert self.signature is not None
        first_failure: InferenceError | None = None
        for rank in self.signature.made_up_ranks():
            for size in self.signature.made_up_inner_sizes():
                rows = rows_within(PROBE_MAX_BYTES, row_bytes(self.signature, size), wanted)
                feeds = self.signature.synthesize(rows, size, any_rank=rank)
                try:
                    self.run(probe, feeds)
                except InferenceError as exc:
                    first_failure = first_failure or exc
                    continue
                return feeds, rows
        assert first_failure is not None
        raise first_failure

    def _create(self, index: int, *, threads: int | None = None, warm: bool = True) -> Any:
        if self.path.suffix != ".onnx":
            raise ModelLoadError(
                f"refusing to load {self.path}: only .onnx files are loaded", model=self.model, version=self.version
            )
        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} does not exist", model=self.model, version=self.version)
        config = self.config
        check_provider_names(
            config,
            known=_ort().get_all_providers(),
            available=_ort().get_available_providers(),
            registered=registered_providers(),
        )
        device_id = config.device_ids[index % len(config.device_ids)]
        wants_gpu = config.providers == "auto" or any(p in GPU_PROVIDERS for p in config.providers)
        cuda = _probe_cuda(self.path) if wants_gpu and _cuda_listed() else False
        providers = resolve_providers(
            config, device_id=device_id, cuda_usable=cuda, available=_ort().get_available_providers()
        )
        if self._memory_pattern is None:
            self._memory_pattern = memory_pattern(config, self._declared_inputs())
        try:
            options = session_options(config, threads=threads or self._threads, memory_pattern=self._memory_pattern)
            held = None  # (the partial file this load holds locked: let go in the finally, whatever happens)
            try:
                source, cached, partial = self._optimized_source(options, providers)
                held = partial
                try:
                    session = _ort().InferenceSession(str(source), options, providers=providers)
                except Exception as exc:
                    written = partial is not None and _graph_written(partial)
                    if partial is not None:
                        _remove(partial)
                    if raised_by_signal_handler(exc) or (source == self.path and not written):
                        raise  # (the model's own failure, before any graph was written: building again is no use)
                    # Build from the model file alone, without the cache: if that works, the cache was at
                    # fault, a cached graph that does not load (written by another onnxruntime build, damaged),
                    # which is deleted, or a graph that could not be written (a full disk, a quota), skipped.
                    options = session_options(
                        config, threads=threads or self._threads, memory_pattern=self._memory_pattern
                    )
                    session = _ort().InferenceSession(str(self.path), options, providers=providers)
                    self._cache_failed(source, partial, exc)
                    partial = None
                if partial is not None and cached is not None:
                    self._keep_optimized(session, providers, cached, partial)
            finally:
                if held is not None:
                    graph_partials.let_go(held)
        except Exception as exc:
            if raised_by_signal_handler(exc):  # the task's time limit came during the load: not the model's fault
                raise
            raise ModelLoadError(
                f"model {self.model!r} version {self.version}: onnxruntime cannot load {self.path}: {exc}",
                model=self.model,
                version=self.version,
            ) from exc
        self.providers = list(session.get_providers())
        if config.require_gpu and not any(name in GPU_PROVIDERS for name in self.providers):
            # onnxruntime retries on the CPU when building a GPU session fails (out of memory, a device id
            # that does not exist): with require_gpu that is a failed load, never a silent CPU version.
            raise ModelLoadError(
                f"model {self.model!r} version {self.version}: require_gpu is set, but onnxruntime built the "
                f"session on {', '.join(self.providers)} (the GPU session failed: out of GPU memory, or device "
                f"{device_id} does not exist?); fix the GPU setup or unset require_gpu",
                model=self.model,
                version=self.version,
            )
        self._devices[id(session)] = device_id
        if self._run_options is None:
            self._run_options = self._deadline_run_options()
        if not hasattr(session, "_sess"):  # pragma: no cover - guards against a future wrapper change
            raise ModelLoadError(f"onnxruntime {_ort().__version__} is not supported: sessions lack a binding")
        if self.signature is None:
            try:
                self.signature = session_signature(
                    session.get_inputs(), session.get_outputs(), self.path, declared=self._declared
                )
                self._output_names = list(self.signature.output_names)
                self._sizing_inputs = tuple(
                    spec.name for spec in self.signature.inputs if spec.dtype is not None and spec.dtype.kind in "iu"
                )
            except ValueError as exc:
                raise ModelLoadError(
                    f"model {self.model!r} version {self.version}: {exc}", model=self.model, version=self.version
                ) from exc
        if warm and self._warmup is not None:
            try:
                self._warmup(session)
            except InprocserveError as exc:
                raise ModelLoadError(
                    f"model {self.model!r} version {self.version} failed its warm-up run: "
                    f"{failure_text(exc, self.model, self.version)}",
                    model=self.model,
                    version=self.version,
                ) from exc
        return session

    def _declared_inputs(self) -> list[Declared] | None:
        """The model file's graph inputs as it declares them, or ``None`` (logged) where they cannot be read:
        the session's load then reports what is wrong with the file. What was read is kept for the signature
        (``_declared``), which needs the file's words only for tensors onnxruntime reports as ``[]``."""
        if self.config.memory_pattern != "auto":
            return None  # (not needed)
        try:
            self._declared = declared_tensors(self.path)
        except (OSError, ValueError) as exc:
            logger.debug("model %r version %s: input shapes not read (%s)", self.model, self.version, exc)
            return None
        return self._declared[0]

    def _cache_failed(self, source: Path, partial: Path | None, exc: Exception) -> None:
        """Log, and clean up after, a session that failed to build with the cache but built without it."""
        if partial is not None:
            logger.warning(
                "model %r version %s: loaded %s without caching its optimized graph, which could not be "
                "written to %s (a full disk or a quota?): %s",
                self.model,
                self.version,
                self.path.name,
                partial.parent,
                exc,
            )
            return
        logger.warning(
            "model %r version %s: the cached graph %s does not load, but %s does; deleting the graph",
            self.model,
            self.version,
            source.name,
            self.path.name,
        )
        _remove(source)

    def optimized_path(self, providers: Sequence[ProviderSpec] = (_CPU,)) -> Path:
        """Where the optimized graph for these providers, this backend's pool options, this CPU and the
        model's current files (the model file and its external data) is cached: beside the model file,
        named after it (see :func:`_graph_stem` for a name too long for that)."""
        rest = (
            f"{_OPTIMIZED_INFIX}{onnxruntime_version()}-{optimized_key(self.config, providers)}-"
            f"{_source_key(self.path)}.onnx"
        )
        return self.path.with_name(_graph_stem(self.path, rest) + rest)

    def _optimized_source(
        self, options: Any, providers: Sequence[ProviderSpec]
    ) -> tuple[Path, Path | None, Path | None]:
        """With ``optimized_model_cache``: the saved optimized graph if there is one (no second optimization
        pass), else ``model.onnx``, optimized into a partial file that :meth:`_keep_optimized` renames into
        place once the session is built. Returns (what to load, the cache file it is for, the partial file).

        The file name carries the model file's stem, a key of everything that shapes the saved graph (see
        :func:`optimized_key`), of this CPU's instruction sets (the graph is laid out for them), and of the
        model's files (see :func:`_source_key`), so another model of the folder, or a change of options,
        onnxruntime, hardware, model file or external data, even one copied with its old modification time,
        never loads a graph built for others.
        """
        if not self.config.optimized_model_cache:
            return self.path, None, None
        cached = self.optimized_path(providers)
        graph_partials.remove_stale(cached.parent, _is_partial_graph)
        try:
            if cached.is_symlink() and not self.follow_symlinks:
                raise ModelLoadError(
                    f"refusing the cached graph {cached}: it is a symbolic link (delete it)",
                    model=self.model,
                    version=self.version,
                )
            if cached.is_file():
                # the cached graph is a model file too: its external data must stay in the folder as well
                try:
                    check_external_data(
                        cached, model=self.model, version=self.version, follow_symlinks=self.follow_symlinks
                    )
                except ModelLoadError as exc:  # damaged or planted: it is derived data, model.onnx is the source
                    logger.warning(
                        "model %r version %s: deleting the cached graph %s and optimizing %s again: %s",
                        self.model,
                        self.version,
                        cached.name,
                        self.path.name,
                        exc,
                    )
                    _remove(cached)
                else:
                    options.graph_optimization_level = _ort().GraphOptimizationLevel.ORT_DISABLE_ALL
                    return cached, None, None
        except OSError:
            pass
        if not os.access(cached.parent, os.W_OK):
            logger.info(
                "model %r version %s: %s is not writable; the optimized graph is not cached",
                self.model,
                self.version,
                cached.parent,
            )
            return self.path, None, None
        # onnxruntime writes the graph in place while it builds the session: into a partial file, renamed
        # once whole, so another process starting meanwhile never loads half a graph. The file is created
        # here, holding a marker that onnxruntime's write replaces: a file that cannot be created (a name
        # too long for this file system, a folder that refuses it) means no cache, and a failed build that
        # left the marker never got as far as writing the graph (see _graph_written).
        # The load holds the file's lock until it is renamed or removed (_graph_partials: another worker's
        # sweep then leaves it, however old it looks).
        partial = cached.with_name(f"{cached.name}.{os.getpid()}-{threading.get_ident()}{_PARTIAL_SUFFIX}")
        try:
            made_ns = graph_partials.create(partial, _UNWRITTEN)  # (the file system's clock, before the model is read)
        except OSError as exc:
            logger.warning(
                "model %r version %s: the optimized graph is not cached: %s cannot be written (%s)",
                self.model,
                self.version,
                partial.name,
                exc,
            )
            return self.path, None, None
        settled = False
        try:  # (a finally: a task's time limit as this looks at the model's files left the file locked and its
            settled = _settled_sources(self.path, made_ns)  # descriptor open for the life of the process)
            if settled:
                options.optimized_model_filepath = str(partial)
        finally:
            if not settled:
                try:
                    _remove(partial)
                finally:
                    graph_partials.let_go(partial)
        if not settled:
            logger.info(
                "model %r version %s: the optimized graph is not cached this time: %s changed within the "
                "file system's last timestamp tick (a later load caches it)",
                self.model,
                self.version,
                self.path.name,
            )
            return self.path, None, None
        return self.path, cached, partial

    def _keep_optimized(self, session: Any, providers: Sequence[ProviderSpec], cached: Path, partial: Path) -> None:
        """Move a freshly written graph into place, and delete the graphs cached for earlier files of this
        version with the same options and CPU (they can never match again). Not kept when the session is
        not what was asked for (onnxruntime fell back to the CPU: its graph is laid out for the CPU), or
        when the model's files changed while it was built (the graph may be the old model's), or when
        onnxruntime wrote none."""
        asked = [spec if isinstance(spec, str) else spec[0] for spec in providers]
        keep = False
        try:  # (a finally: the caller's task stopped by its time limit as this looked at the model's files left a
            keep = (  # whole copy of the model on disk until a later load swept it as stale, an hour on)
                list(session.get_providers()) == asked
                and self.optimized_path(providers) == cached
                and _graph_written(partial)  # (a session built, but no graph saved: never cache the marker)
            )
            if keep:
                try:
                    os.replace(partial, cached)
                except OSError:
                    keep = False
        finally:
            if not keep:
                _remove(partial)
        if not keep:
            return
        for old in _earlier_graphs(cached, model=self.path):
            _remove(old)

    def runners(self) -> list[Any]:
        """Every session (built first if this process has none yet), for the batcher's workers to own."""
        if not self._ready:
            self.prepare()
        with self._lock:
            return list(self._sessions)

    def run(
        self,
        runner: Any,
        feeds: Mapping[str, np.ndarray],
        *,
        timeout_s: float | None = None,
        parent: Any = None,
    ) -> list[np.ndarray]:
        """Run one batch on the session ``runner``; onnxruntime releases the GIL while it computes.

        Inputs were validated against the signature already, so this calls onnxruntime's binding directly
        and skips the Python wrapper's second round of checks (a few microseconds per call).

        With ``timeout_s`` the run gets its own ``RunOptions``, whose ``terminate`` flag this backend's
        watchdog sets when the time is up: onnxruntime then stops between two operators. So does a run on a
        thread with a stop signal (``_stop_signal``: the shadow thread's), whose ``terminate`` flag the signal
        sets when the server closes. Without either, the shared ``RunOptions`` are used and nothing else
        happens; or, under ``pool.max_run_s``, the thread's own, which the limit's sweep stops (``_run_limit``).
        The limit brings a later deadline's alarm forward. ``parent`` is not needed in process.

        Raises:
            DeadlineExceededError: the run was stopped at ``timeout_s``.
            RunTimeLimitError: the run was stopped at ``pool.max_run_s``.
            ServerClosedError: the run was stopped by its thread's stop signal.
            InferenceError: (or a subclass) translated from onnxruntime's exception.
        """
        stop = _stopping.signal
        limit = self._limit
        one_thread = self._one_thread
        if one_thread is not None and next(iter(feeds.values())).shape[0] <= self._one_thread_rows:
            runner = one_thread  # (a short run: see _choose_threads; a batchable model's inputs all have rows)
        if timeout_s is None and stop is None:  # the common case, spelled out: no alarm, no hook
            if limit is not None:  # (inlined: a method call would cost as much again; see _run_limit)
                ident = _os_thread_ident()
                last = self._last_slot  # (one read: the pair is the same thread's)
                if last[0] == ident:
                    slot = last[1]
                else:
                    slot = limit.current.get() or limit.slot()
                    self._last_slot = (ident, slot)
                started = slot.started = time.monotonic()
                if not limit.sweeping:  # (read after the start is noted: see RunLimit._sweep)
                    limit.start()
                try:
                    if self.io_binding:
                        return self._run_bound(runner, feeds, slot.options)
                    return runner._sess.run(self._output_names, feeds, slot.options)  # type: ignore[no-any-return]
                except Exception as exc:
                    if raised_by_signal_handler(exc):  # the task's time limit, not the model's failure
                        raise
                    return self._limited_failure(runner, feeds, limit, slot, started, exc)
                finally:
                    slot.started = None
            try:
                if self.io_binding:
                    return self._run_bound(runner, feeds, self._run_options)
                return runner._sess.run(self._output_names, feeds, self._run_options)  # type: ignore[no-any-return]
            except Exception as exc:
                if raised_by_signal_handler(exc):  # the task's time limit, not the model's failure
                    raise
                raise self._run_error(exc, feeds) from exc
        if timeout_s is not None and timeout_s <= 0:
            raise self._stopped_error()
        if stop is not None and stop.stopped:
            raise self._closed_error()
        options = self._deadline_run_options()
        # the limit brings the alarm forward when it comes first: then the cut is the limit's, not the deadline's
        limited = limit is not None and (timeout_s is None or limit.limit_s < timeout_s)
        delay = limit.limit_s if limited and limit is not None else timeout_s
        alarm = None if delay is None else self._watchdog.arm(delay, _terminator(options))
        unhook = None if stop is None else stop.hook(_terminator(options))
        unclose = self._closing.hook(_terminator(options))  # (close() stops it too: see there)
        try:
            if self.io_binding:
                return self._run_bound(runner, feeds, options)
            return runner._sess.run(self._output_names, feeds, options)  # type: ignore[no-any-return]
        except Exception as exc:
            if raised_by_signal_handler(exc):  # (see above)
                raise
            if self._closed:  # stopped by close() (see there)
                raise self._retired_error() from exc
            if alarm is not None and alarm.fired:
                raise (self._limit_error() if limited else self._stopped_error()) from exc
            if stop is not None and stop.stopped:
                raise self._closed_error() from exc
            raise self._run_error(exc, feeds) from exc
        finally:
            if alarm is not None:
                self._watchdog.disarm(alarm)
            if unhook is not None:
                unhook()
            unclose()

    def _limited_failure(
        self,
        runner: Any,
        feeds: Mapping[str, np.ndarray],
        limit: RunLimit,
        slot: RunSlot,
        started: float,
        exc: Exception,
    ) -> list[np.ndarray]:
        """A plain run under the version's time limit failed, on the thread's own run options (``slot``),
        started at ``started``: the limit's error if its sweep stopped it; run again on new options if the
        sweep meant the thread's run before (see ``_run_limit``); else onnxruntime's error, translated."""
        cut = slot.cut
        if cut is None or self._closed:
            raise self._run_error(exc, feeds) from exc
        limit.renew(slot)  # (its options are spent)
        if cut == started:
            raise self._limit_error() from exc
        slot.started = None
        return self.run(runner, feeds)  # stopped for the run before it: run it again

    def _run_error(self, exc: Exception, feeds: Mapping[str, np.ndarray]) -> InprocserveError:
        """What a failed run of ``feeds`` raises: the retired version's error once closed (see close()), else
        onnxruntime's error translated."""
        if self._closed:
            return self._retired_error()
        negative = [
            name
            for name in self._sizing_inputs
            if (array := feeds.get(name)) is not None and array.size and array.min() < 0
        ]
        return translate_run_error(
            exc, model=self.model, version=self.version, sizing_inputs=self._sizing_inputs, negative_inputs=negative
        )

    def _limit_error(self) -> RunTimeLimitError:
        names = ", ".join(f"[inputs.{name}] max" for name in self._sizing_inputs) or "[inputs.NAME] max"
        return RunTimeLimitError(
            f"model {self.model!r} version {self.version}: the run passed the model's limit of "
            f"{self.config.max_run_s or 0:g} s on one run and onnxruntime stopped it; bound the inputs that set a "
            f"loop's length or a size in the model's config.toml ({names}), or raise the limit (max_run_s under "
            "[pool] in config.toml, PoolConfig(max_run_s=...); 0 for none)",
            model=self.model,
            version=self.version,
        )

    def _deadline_run_options(self) -> Any:
        """Fresh ``RunOptions``: the shared ones, and one per run with a deadline (a terminated run's options
        cannot be reused safely while other runs share them)."""
        return _fresh_run_options(arena_shrinkage=self.config.arena_shrinkage)

    def _stopped_error(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"model {self.model!r} version {self.version}: the request's deadline passed while it ran; "
            "onnxruntime stopped the run",
            model=self.model,
            version=self.version,
        )

    def _closed_error(self) -> ServerClosedError:
        return ServerClosedError(
            f"model {self.model!r} version {self.version}: the server closed while the run was in flight; "
            "onnxruntime stopped the run",
            model=self.model,
            version=self.version,
        )

    def _retired_error(self) -> VersionRetiredError:
        return VersionRetiredError(
            f"model {self.model!r} version {self.version} stopped serving (unloaded, replaced, or its server "
            "closed) while the run was in flight; onnxruntime stopped the run",
            model=self.model,
            version=self.version,
        )

    def _run_bound(self, session: Any, feeds: Mapping[str, np.ndarray], run_options: Any = None) -> list[Any]:
        """One run through I/O binding: each input copied to the session's device once, each output
        allocated by onnxruntime on that device and copied back once."""
        provider = session.get_providers()[0]
        device = "cuda" if provider == _CUDA else "cpu"
        device_id = self._devices.get(id(session), 0) if device == "cuda" else 0
        binding = session.io_binding()
        # Every input's OrtValue is kept until the run ends. On the CPU an OrtValue borrows its array's memory
        # (the contiguous copy of a strided or Fortran-ordered input, which nothing else holds), and
        # onnxruntime before 1.30 binds the tensor without keeping the OrtValue: one dropped when the next
        # input was bound freed its copy, whose memory numpy gave to the next input's copy, and the run read
        # that input's values for it (a three-input model answered input c's values for input a).
        values: list[Any] = []
        for name, array in feeds.items():
            value = _ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
            binding.bind_ortvalue_input(name, value)
            values.append(value)
        for name in self._output_names:
            binding.bind_output(name, device, device_id)
        options = run_options if run_options is not None else self._run_options
        try:
            session.run_with_iobinding(binding, options)
        except RuntimeError as exc:
            text = str(exc)
            if (
                options.terminate
                or not text.startswith(_BINDING_FAILED)
                or allocation_error(text, model=self.model, version=self.version) is not None
            ):
                raise  # (an allocation that failed says so in these words too: not run a second time)
            # The binding's run raises a bare RuntimeError that drops onnxruntime's status code: a client's bad
            # value (an index past a table: INVALID_ARGUMENT) read as the server's failure. The plain run of the
            # same feeds fails again at that node with onnxruntime's typed error, which the caller translates.
            del values
            return session._sess.run(self._output_names, feeds, options)  # type: ignore[no-any-return]
        outputs = list(binding.copy_outputs_to_cpu())
        del values  # (only now: the run and the copies back are done)
        return outputs

    def health(self) -> str | None:
        """``None`` while sessions can run (they are built on demand); why not once closed."""
        if self._closed:
            return f"model {self.model!r} version {self.version} is unloaded"
        return None

    def status(self) -> dict[str, Any]:
        return {
            "providers": list(self.providers),
            "intra_op_threads": self._threads,
            # runs of at most this many rows take a one-thread session (None: none has one)
            "one_thread_up_to_rows": self._one_thread_rows if self._one_thread is not None else None,
            # the container's CPU limit in cores, as read when the threads were chosen (None: no limit); the
            # automatic budget never exceeds it, an explicit intra_op_threads may
            "cpu_quota_cores": None if self._cpu_quota is None else round(self._cpu_quota.cores, 3),
            "shared_session": self.shared,
            "io_binding": self.io_binding,
        }

    def close(self) -> None:
        """Release every session and stop the watchdog. Callers have drained their work, or gave up waiting
        for it (``Server.close(timeout_s=...)``, a version retired on hot reload): a run still in flight is
        stopped at onnxruntime's next operator and raises ``ServerClosedError``. Left to run, one without a
        deadline (a hostile trip count's loop) held its session for hours, and the process that exited
        meanwhile was aborted by onnxruntime (SIGABRT). Idempotent."""
        with self._lock:
            self._closed = True
            self._sessions = []
            self._one_thread = None
            self._ready = False
            # the warm-up is the version's bound method: kept, it held the retired ModelVersion (its batcher,
            # cache, drift monitor) in a cycle until the garbage collector's next full pass
            self._warmup = None
        if self._run_options is not None:
            self._run_options.terminate = True  # the runs with neither a deadline nor a stop signal share these
        self._closing.stop()  # and every other run has options of its own, hooked on this signal
        if self._limit is not None:
            self._limit.close()  # (the plain runs under a time limit: each thread's options)
        self._watchdog.close()


def build_onnxruntime_backend(
    path: Path, config: ModelConfig, *, model: str, version: int, follow_symlinks: bool = False
) -> OnnxruntimeBackend:
    """The default :data:`~inprocserve._backend.BackendFactory`: an onnxruntime backend for a local file."""
    return OnnxruntimeBackend(path, config.pool, model=model, version=version, follow_symlinks=follow_symlinks)
