"""Rules about onnxruntime that need no onnxruntime: error translation, providers, the thread budget, the
memory pattern.

Kept apart from the backend so the error map and thread arithmetic import (and test) without the runtime;
the backend in ``_ort_backend.py`` is still the only module that imports onnxruntime.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from ._close_match import close_match
from ._config import PoolConfig
from ._cpu_quota import CpuQuota, current_cpu_quota, memory_limit
from ._declared_shapes import Declared
from ._errors import (
    ConfigurationError,
    InferenceError,
    InprocserveError,
    InputTooLargeError,
    InvalidInputError,
    ModelLoadError,
    OutOfMemoryError,
)

__all__ = [
    "GPU_PROVIDERS",
    "OPTIMIZED_GRAPH",
    "RUN_ERROR_MAP",
    "ProviderSpec",
    "allocation_error",
    "check_provider_names",
    "client_message",
    "host_memory",
    "memory_pattern",
    "onnxruntime_version",
    "resolve_providers",
    "thread_budget",
    "thread_oversubscription",
    "translate_run_error",
    "usable_cores",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, "TensorrtExecutionProvider", "ROCMExecutionProvider"})
logger = logging.getLogger(__name__)

# The optimized graphs a load writes next to a model file (``<file stem>.optimized-<onnxruntime version>-<options
# key>-<source key>.onnx``, and the ``.<pid>-<thread>.partial`` file each is written to first): derived data,
# so the registry's change checks skip them. Graphs of releases before the file's stem was in the name
# (``model.optimized-...``, for any model file) match too: they are never loaded, and are deleted as the
# graphs of earlier files are.
OPTIMIZED_GRAPH = re.compile(r".+\.optimized-.+-[0-9a-f]{16}-[0-9a-f]{12}\.onnx(?:\.[0-9]+-[0-9]+\.partial)?")

_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


# onnxruntime's exception types, and what each becomes when it is raised by ``session.run``.
# Load-time failures of any type become ModelLoadError. tests/test_sessions.py checks the map is complete.
RUN_ERROR_MAP: dict[str, type[InprocserveError]] = {
    "InvalidArgument": InvalidInputError,
    "Fail": InferenceError,
    "NoSuchFile": InferenceError,
    "NoModel": InferenceError,
    "EngineError": InferenceError,
    "RuntimeException": InferenceError,
    "InvalidProtobuf": InferenceError,
    "ModelLoaded": InferenceError,
    "NotImplemented": InferenceError,
    "InvalidGraph": InferenceError,
    "EPFail": InferenceError,
    "ModelLoadCanceled": InferenceError,
    "ModelRequiresCompilation": InferenceError,
    "NotFound": InferenceError,
    "DeviceReset": InferenceError,
}


# Where onnxruntime's checks failed, as its messages say it: a source file of its build and the line
# (``/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360``, ``D:\a\_work\1\s\...\tensor.cc:57``,
# ``tensor.cc:57``), then the C++ function as the compiler spells it (``void* onnxruntime::BFCArena::
# AllocateRawInternal(size_t, bool, onnxruntime::Stream*)``; a bare name after a short path stays). A build
# machine's paths are no client's business, and a signature tells nobody what to fix.
_SOURCE_PLACE = re.compile(
    r"(?:(?<=\s)|^)(?:[A-Za-z]:)?[\w./\\-]*\.(?:cc|cpp|cxx|c|h|hpp|cu|cuh|mm):\d+ "
    r"(?:(?:(?:virtual|static|inline|const)\s+)*(?:[\w:<>*&]+[*&]?\s+)?[\w:<>~]*::[\w~<>]+\([^()]*\)(?:\s*const)?\s+)?"
)


def client_message(text: str) -> str:
    """onnxruntime's message without the build's source places and C++ signatures (see ``_SOURCE_PLACE``),
    nor its trailing newline: what it says is wrong stays."""
    return _SOURCE_PLACE.sub("", text).strip()


def translate_run_error(
    exc: BaseException,
    *,
    model: str,
    version: int,
    sizing_inputs: Sequence[str] = (),
    negative_inputs: Sequence[str] = (),
) -> InprocserveError:
    """Map an exception raised by ``session.run`` to our hierarchy (the one place that does this), its message
    rid of onnxruntime's source paths (:func:`client_message`); an allocation that failed is an
    :class:`InputTooLargeError` or an :class:`OutOfMemoryError` (see :func:`allocation_error`), whose
    message names ``sizing_inputs`` (the model's integer inputs: those that may set a size) to bound; a tensor
    of negative size is an :class:`InvalidInputError` where the request sent a negative value in
    ``negative_inputs`` (those of ``sizing_inputs`` that hold one), which it names."""
    if isinstance(exc, InprocserveError):
        return exc
    text = client_message(str(exc))
    failed = allocation_error(text, model=model, version=version, sizing_inputs=sizing_inputs)
    if failed is not None:
        return failed
    if any(words in text for words in _NEGATIVE_SIZE) and negative_inputs:
        return _negative_size_error(text, model=model, version=version, negative_inputs=negative_inputs)
    kind = RUN_ERROR_MAP.get(type(exc).__name__, InferenceError)
    return kind(f"model {model!r} version {version} failed to run: {text}", model=model, version=version)


# onnxruntime's words for an allocation it could not make: its arena's (with the size asked for), the
# allocator's without an arena (the C++ exception's name alone), and a size past any number of bytes, which
# onnxruntime 1.17.3 (the floor) says as "status.IsOK() was false. size overflow" where newer releases say
# "Calculation for Tensor storage size overflowed": matched by the newer words alone, a request for 2**62
# floats was a 500 InferenceError on the floor, counted against the server, not the client's 400.
_ARENA_FAILED = re.compile(r"Failed to allocate memory for requested buffer of size (\d+)")
_BAD_ALLOC = "bad_alloc"
_OVERFLOWED = ("Tensor storage size overflowed", "Integer overflow", "was false. size overflow")
_NODE = re.compile(r"while running (\w+) node")


def allocation_error(
    text: str, *, model: str, version: int, sizing_inputs: Sequence[str] = ()
) -> InprocserveError | None:
    """The error for a run whose allocation failed (``text``: onnxruntime's message), or ``None`` for another
    failure. A size past any number of bytes, or more bytes than this host has at all (:func:`host_memory`),
    is the request's alone: :class:`InputTooLargeError` (a 400), as no retry anywhere can run it. A size the
    host could hold, or one onnxruntime does not say (no arena: ``std::bad_alloc``), may be the host's memory
    pressure: :class:`OutOfMemoryError` (a 500), never the client's fault by default."""
    arena = _ARENA_FAILED.search(text)
    overflowed = any(words in text for words in _OVERFLOWED)
    if arena is None and not overflowed and _BAD_ALLOC not in text:
        return None
    node = _NODE.search(text)
    where = f" for its {node.group(1)} node" if node is not None else ""
    names = ", ".join(f"[inputs.{name}] max" for name in sizing_inputs)
    bound = (
        f"bound the input that sets this size in the model's config.toml ({names})"
        if names
        else "bound the input that sets this size ([inputs.NAME] max in the model's config.toml)"
    )
    head = f"model {model!r} version {version}"
    if overflowed:
        return InputTooLargeError(
            f"{head}: the request asks onnxruntime for a tensor{where} of more bytes than any memory holds (its "
            f"size overflowed 64 bits); {bound}",
            model=model,
            version=version,
        )
    if arena is not None:
        asked = int(arena.group(1))
        memory = host_memory()
        if memory is not None and asked > memory:
            return InputTooLargeError(
                f"{head}: the request asks onnxruntime for {asked} bytes ({_size(asked)}){where}, more than this "
                f"host's {_size(memory)} of memory; {bound}",
                model=model,
                version=version,
            )
        return OutOfMemoryError(
            f"{head}: onnxruntime could not allocate {asked} bytes ({_size(asked)}){where}: the host is short of "
            f"memory now; retry later, or {bound} if such requests are not to be served",
            model=model,
            version=version,
        )
    return OutOfMemoryError(
        f"{head}: onnxruntime could not allocate memory{where} (std::bad_alloc: the host is short of memory, or "
        f"the request asks for more than it has); retry later, or {bound}",
        model=model,
        version=version,
    )


# onnxruntime's words, where every kernel's output tensor is made (``CalculateTensorStorageSize``), for a shape
# with a negative dimension: a size the request's values set (a ConstantOfShape count of -1), but also one the
# model computes wrong from a request's shape or values (a sequence shorter than it needs, a branch the warm-up's
# zeros never took), so the client's only where it sent a negative integer. onnxruntime 1.17.3 (the floor) says
# it in other words, "Tensor shape cannot contain any negative value": a -1 sent there was a 500.
_NEGATIVE_SIZE = ("shape.Size() must be >= 0", "Tensor shape cannot contain any negative value")


def _negative_size_error(text: str, *, model: str, version: int, negative_inputs: Sequence[str]) -> InvalidInputError:
    """A run that failed for a tensor of negative size on a request that sent a negative integer: the client's
    values, so a 400 (it was a 500, counted against the server and logged, for any client that sends a -1)."""
    node = _NODE.search(text)
    where = f" for its {node.group(1)} node" if node is not None else ""
    names = ", ".join(f"[inputs.{name}] min = 0" for name in negative_inputs)
    return InvalidInputError(
        f"model {model!r} version {version}: the request's values make a tensor of negative size{where}; send "
        f"sizes of 0 or more, or bound the input that sets this size in the model's config.toml ({names})",
        model=model,
        version=version,
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def host_memory() -> int | None:
    """The most memory this process could ever hold, in bytes: the host's physical memory, cut to the
    process's address-space limit (``ulimit -v``) and to the memory limits of its control groups and those
    above them (a container's, a systemd unit's ``MemoryMax=``: :func:`._cpu_quota.memory_limit`), whichever is
    least; ``None`` when none can be read. Read when an allocation failed, never per run."""
    limits: list[int] = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    group = memory_limit()  # (the process's own groups and those above them, as the CPU quota is read)
    if group is not None:
        limits.append(group)
    return min(limits) if limits else None


def usable_cores() -> int:
    """CPU cores this process may keep busy: those it may run on (affinity masks, container cpusets), and no
    more than a control group's CPU quota allows (a container's CPU limit: see ``_cpu_quota.py``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = current_cpu_quota()
    if quota is not None and quota.whole_cores < cores:
        if quota not in _quotas_logged:  # once per quota, not per session built
            _quotas_logged.add(quota)
            logger.info(
                "CPU quota of %.2f cores (%s): onnxruntime sessions count %d of the %d cores this process may run on",
                quota.cores,
                quota.source,
                quota.whole_cores,
                cores,
            )
        cores = quota.whole_cores
    return max(1, cores)


_quotas_logged: set[CpuQuota] = set()


def memory_pattern(config: PoolConfig, inputs: Sequence[Declared] | None) -> bool:
    """Whether sessions plan allocations per input shape (``enable_mem_pattern``), from ``pool.memory_pattern``
    and the model's graph inputs as its file declares them (``None``: not read). ``"auto"`` turns it off for a
    model with a dynamic axis past an input's first, or a tensor input of any rank (no shape declared):
    onnxruntime keeps one plan per distinct input shape for the session's life (``SessionState::mem_patterns_``,
    with no bound), so sizes a client picks grow the worker for good, while the batch axis alone gives at most
    ``max_batch_size`` plans. Off measured no slower on the CPU with the arena (docs/performance.md, "Memory
    pattern"). A sequence or map input needs no rule: onnxruntime plans no run fed one."""
    if config.memory_pattern != "auto":
        return bool(config.memory_pattern)
    if inputs is None:  # (unreadable: onnxruntime's own default; its load says what is wrong)
        return True
    return not any(declared.tensor and (declared.shape is None or None in declared.shape[1:]) for declared in inputs)


def thread_budget(config: PoolConfig) -> int:
    """Intra-op threads per session such that sessions x (threads + inter-op threads - 1) <= usable cores (at
    least 1). With ``inter_op_threads`` N > 1 a session runs independent graph branches on a pool of N threads of
    its own, each working beside the intra-op pool's threads (one of which is the calling thread): that pool
    was left out, and N > 1 oversubscribed the cores the budget had handed out whole, without a word."""
    sessions = config.size if config.share_session is False else 1
    return config.intra_op_threads or max(1, usable_cores() // sessions - (config.inter_op_threads - 1))


def thread_oversubscription(config: PoolConfig, *, intra_op_threads: int) -> str | None:
    """Why the sessions of a version with ``intra_op_threads`` each (as chosen) and ``config.inter_op_threads``
    keep more threads busy than the usable cores (``None``: they do not, or there is no inter-op pool): said at
    load, where the budget cannot make up for it (``intra_op_threads`` set by hand, or more inter-op threads
    than the cores leave room for)."""
    inter = config.inter_op_threads
    if inter == 1:
        return None
    sessions = config.size if config.share_session is False else 1
    cores = usable_cores()
    threads = sessions * (intra_op_threads + inter - 1)
    if threads <= cores:
        return None
    return (
        f"pool.inter_op_threads = {inter} runs graph branches on {inter} threads per session beside its "
        f"{intra_op_threads} intra-op thread(s): {sessions} session(s) x ({intra_op_threads} + {inter} - 1) = "
        f'{threads} threads on {cores} usable core(s), more than the cores (docs/repository.md, "Thread '
        'budget"); lower pool.inter_op_threads (1 runs the graph in sequence), pool.intra_op_threads or the '
        "sessions (pool.size with share_session = false)"
    )


@functools.cache
def onnxruntime_version() -> str:
    """The installed onnxruntime's version, read without importing it, once per process: reading the package
    metadata takes about 0.3 ms, and ``status()`` names the version of every loaded model version (50 models
    spent 15 ms of each call on it); what a process runs does not change under it."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in _DISTRIBUTIONS:
        try:
            return version(distribution)  # from the package metadata: without importing onnxruntime
        except PackageNotFoundError:
            continue
    return "unknown"


def onnxruntime_builds() -> list[str]:
    """The onnxruntime distributions installed, e.g. ``["onnxruntime", "onnxruntime-gpu"]`` (more than one is
    a broken install: they share one package folder, and the last installed overwrote the other's files)."""
    from importlib.metadata import PackageNotFoundError, version

    builds = []
    for distribution in _DISTRIBUTIONS:
        try:
            builds.append(f"{distribution} {version(distribution)}")
        except PackageNotFoundError:
            continue
    return builds


ProviderSpec = str | tuple[str, dict[str, Any]]


def check_provider_names(
    config: PoolConfig, *, known: Sequence[str], available: Sequence[str] = (), registered: Sequence[str] = ()
) -> None:
    """Refuse provider names onnxruntime does not know (pure: ``onnxruntime.get_all_providers()`` is passed
    in, since only the backend may import onnxruntime, and a pre-fork master never does). onnxruntime itself
    prints a banner and falls back to the CPU for a misspelt provider, and ignores options under an unknown
    name: a typo would quietly leave a model on the CPU. A known provider this build lacks (CUDA in the CPU
    wheel) is not refused: one setting then serves hosts with and without a GPU (``require_gpu`` refuses it).
    Nor is a plugin provider the application registered (``onnxruntime.register_execution_provider_library``):
    ``registered`` holds their names (each ``ep_name`` of ``onnxruntime.get_ep_devices()``), which
    ``get_all_providers()`` never lists (``NvTensorRTRTXExecutionProvider`` exists only as a plugin).

    Raises:
        ConfigurationError: a name in ``pool.providers`` or ``pool.provider_options`` is unknown (says
            which, and the known name closest to it).
    """
    listed = [] if config.providers == "auto" else list(config.providers)
    for key, names in (("pool.providers", listed), ("pool.provider_options", list(config.provider_options))):
        for name in names:
            if name in known or name in registered:
                continue
            every = list(dict.fromkeys([*known, *registered]))
            by_case = {known_name.lower(): known_name for known_name in every}  # ("Cuda..." means "CUDA...")
            close = close_match(name.lower(), by_case)
            hint = f"did you mean {by_case[close]!r}?" if close else f"it knows {', '.join(every)}"
            offered = list(dict.fromkeys([*available, *registered]))
            raise ConfigurationError(
                f"{key} names {name!r}, which onnxruntime {onnxruntime_version()} does not know ({hint}); this "
                f"installation offers {', '.join(offered) or 'no provider'} (a plugin provider is known once the "
                "application registers it: onnxruntime.register_execution_provider_library, before the load)"
            )


def resolve_providers(
    config: PoolConfig, *, device_id: int, cuda_usable: bool, available: Sequence[str] = ()
) -> list[ProviderSpec]:
    """The provider list for one session (pure: the GPU probe result and the runtime's ``available``
    providers, for the error message, are passed in).

    Raises:
        ModelLoadError: ``require_gpu`` is set and no GPU provider is usable.
    """
    if config.providers == "auto":
        names: Sequence[str] = [CUDA, CPU] if cuda_usable else [CPU]
    else:
        names = config.providers
    uses_gpu = any(name in GPU_PROVIDERS for name in names) and cuda_usable
    if config.require_gpu and not uses_gpu:
        raise ModelLoadError(
            "require_gpu is set but no GPU provider is usable "
            f"(onnxruntime {onnxruntime_version()} offers {', '.join(available) or 'no GPU provider'}); "
            'install onnxruntime-gpu in place of onnxruntime (docs/operations.md, "GPUs") with a working CUDA '
            "setup, or unset require_gpu"
        )
    resolved: list[ProviderSpec] = []
    for name in names:
        options: dict[str, Any] = dict(config.provider_options.get(name, {}))
        if name in GPU_PROVIDERS:
            options["device_id"] = device_id
        resolved.append((name, options) if options else name)
    return resolved
