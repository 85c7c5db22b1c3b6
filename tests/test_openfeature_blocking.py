"""Which OpenFeature providers are read on the request's thread, with ``OpenFeatureFlags``' default.

A blocking provider's decision is handed to a worker thread whenever a flag must be evaluated (a targeted
flag: every request), which costs a request hundreds of microseconds here. Providers known to evaluate in
this process (flagd's in-process engine, OpenFeature's in-memory provider) need no hand-off, so by default
``OpenFeatureFlags`` judges the client's provider, again whenever it is replaced; any other provider stays
behind the flag reader's worker threads and time budget. Real providers throughout: flagd's engine on a flags
file (no flagd server) and the SDK's own; the ones written here stand for a provider that calls out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import CanaryConfig, ConfigurationError, ModelConfig, OpenFeatureFlags, RolloutConfig, VersionPolicy
from inprocserve._flag_reader import FlagReader
from inprocserve.testing import build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, run_in_forked_child
from .test_telemetry import otel  # noqa: F401  (the process's one OpenTelemetry SDK, as a fixture)

pytest.importorskip("openfeature.contrib.provider.flagd", reason="pip install openfeature-provider-flagd")

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.hook import Hook, HookContext
from openfeature.provider import AbstractProvider, Metadata
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

X = np.ones((1, 4), np.float32)
CANARY = ModelConfig(
    rollout=RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2)),
    version_policy=VersionPolicy.all(),
)


def staff_get_the_canary(flag: InMemoryFlag[Any], context: EvaluationContext) -> FlagResolutionDetails[Any]:
    """A targeting rule in OpenFeature's in-memory provider: evaluated for every context."""
    value = 100 if context.attributes.get("plan") == "staff" else 0
    return FlagResolutionDetails(value=value, reason=Reason.TARGETING_MATCH)


def in_memory() -> InMemoryProvider:
    return InMemoryProvider(
        {"scale.canary.percent": InMemoryFlag("none", {"none": 0}, context_evaluator=staff_get_the_canary)}
    )


class CallsOut(AbstractProvider):
    """Stands for a provider that asks a flag service over the network: the same targeting rule, answered
    from here (nothing in the library can tell what a provider it does not know does)."""

    def get_metadata(self) -> Metadata:
        return Metadata(name="calls-out")

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        if flag_key != "scale.canary.percent":
            return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)
        plan = evaluation_context.attributes.get("plan") if evaluation_context else None
        return FlagResolutionDetails(value=100.0 if plan == "staff" else 0.0, reason=Reason.TARGETING_MATCH)

    def resolve_integer_details(self, flag_key: str, default_value: int, evaluation_context: Any = None) -> Any:
        return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)

    def resolve_boolean_details(self, flag_key: str, default_value: bool, evaluation_context: Any = None) -> Any:
        return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)

    def resolve_string_details(self, flag_key: str, default_value: str, evaluation_context: Any = None) -> Any:
        return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)

    def resolve_object_details(self, flag_key: str, default_value: Any, evaluation_context: Any = None) -> Any:
        return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)


class MyInMemory(InMemoryProvider):
    """A subclass of a provider known to evaluate in memory: it may override an evaluation, so it is not
    taken for one."""


class Threads(Hook):
    """The threads the SDK evaluated flags on, by flag key."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def before(self, hook_context: HookContext, hints: Any) -> None:
        if hook_context.flag_key == "scale.canary.percent":
            self.names.add(threading.current_thread().name)


@pytest.fixture
def scale(repository: Path) -> Path:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


@pytest.fixture
def domain(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"inprocserve-blocking-{request.node.name}"
    yield name
    api.set_provider(InMemoryProvider({}), domain=name)  # (the flagd ones are shut down by their fixture)


@pytest.fixture(params=["in-memory", "flagd FILE"])
def evaluates_here(request: pytest.FixtureRequest, tmp_path: Path, domain: str) -> Iterator[str]:
    """A domain served by a provider that evaluates in this process, with the targeted canary flag. (flagd's
    IN_PROCESS resolver needs a flagd server to sync from; given a file it is the FILE resolver.)"""
    if request.param == "in-memory":
        api.set_provider_and_wait(in_memory(), domain=domain)
        yield domain
        return
    path = tmp_path / "flags.json"
    rule = {"if": [{"==": [{"var": "plan"}, "staff"]}, "all", "none"]}
    spec = {"state": "ENABLED", "defaultVariant": "none", "variants": {"none": 0, "all": 100}, "targeting": rule}
    path.write_text(json.dumps({"flags": {"scale.canary.percent": spec}}))
    provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    api.set_provider_and_wait(provider, domain=domain)
    try:
        yield domain
    finally:
        provider.shutdown()


def with_hook(domain: str) -> tuple[Any, Threads]:
    client, hook = api.get_client(domain), Threads()
    client.add_hooks([hook])
    return client, hook


def test_a_provider_that_evaluates_in_this_process_is_read_on_the_request_thread(
    evaluates_here: str, scale: Path, make_server: ServerFactory
) -> None:
    client, hook = with_hook(evaluates_here)
    server = make_server(scale, flags=OpenFeatureFlags(client), flag_timeout_s=5.0, config=CANARY)
    for number in range(10):
        plan = "staff" if number % 2 else "free"
        answer = server.predict("scale", X, context={"user_id": f"u{number}", "plan": plan})
        assert answer.version == (2 if plan == "staff" else 1), answer.reason  # the rule applied
    assert hook.names == {threading.current_thread().name}  # every evaluation on the request's thread
    flags = server.status()["models"]["scale"]["rollout"]["flags"]
    assert flags["blocking"] is False and flags["workers"] == 0 and flags["failures"] == 0


@pytest.mark.parametrize("provider", [CallsOut, MyInMemory], ids=["unknown", "subclass"])
def test_any_other_provider_is_read_on_the_flag_readers_workers(
    provider: type[AbstractProvider], domain: str, scale: Path, make_server: ServerFactory
) -> None:
    made = provider() if provider is CallsOut else MyInMemory(in_memory()._flags)
    api.set_provider_and_wait(made, domain=domain)
    client, hook = with_hook(domain)
    server = make_server(scale, flags=OpenFeatureFlags(client), flag_timeout_s=5.0, config=CANARY)
    answers = [server.predict("scale", X, context={"user_id": f"u{n}", "plan": "staff"}) for n in range(5)]
    assert {answer.version for answer in answers} == {2}, answers[0].reason
    assert hook.names == {"inprocserve-flags"}  # (the flag reader's worker threads)
    assert server.status()["models"]["scale"]["rollout"]["flags"]["blocking"] is True


def test_a_replaced_provider_is_judged_and_named_again(domain: str) -> None:
    api.set_provider_and_wait(in_memory(), domain=domain)
    flags = OpenFeatureFlags(domain=domain, reuse_static_s=0)
    reader = FlagReader(flags, timeout_s=5.0)
    try:
        assert (flags.blocking, flags.name) == (False, "In-Memory Provider")
        api.set_provider_and_wait(CallsOut(), domain=domain)
        assert (flags.blocking, flags.name) == (True, "calls-out")
        status = reader.status()
        assert (status["blocking"], status["provider"]) == (True, "calls-out")  # (as metrics and spans say)
        api.set_provider_and_wait(in_memory(), domain=domain)
        assert (flags.blocking, flags.name) == (False, "In-Memory Provider")
    finally:
        reader.close()


def test_a_provider_without_metadata_is_named_openfeature() -> None:
    class Nameless(CallsOut):
        def get_metadata(self) -> Metadata:
            raise NotImplementedError

    assert OpenFeatureFlags(Client(Nameless()), reuse_static_s=0).name == "openfeature"


@pytest.mark.parametrize("given", [True, False])
def test_blocking_given_is_kept_whatever_the_provider(given: bool, domain: str) -> None:
    for provider in (in_memory(), CallsOut()):
        api.set_provider_and_wait(provider, domain=domain)
        assert OpenFeatureFlags(domain=domain, blocking=given).blocking is given
        later = OpenFeatureFlags(domain=domain)
        later.blocking = given  # (set after construction, as before it was judged)
        assert later.blocking is given
        later.blocking = None
        assert later.blocking is (type(provider) is CallsOut)


def test_blocking_set_to_something_else_is_refused(domain: str) -> None:
    flags = OpenFeatureFlags(domain=domain)
    with pytest.raises(ConfigurationError, match="blocking must be True, False or None"):
        flags.blocking = "yes"  # type: ignore[assignment]


class Client:
    """A client of an SDK without events, showing a provider that is never initialized (nothing connects)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider


@pytest.mark.parametrize(
    ("resolver", "blocking"), [(ResolverType.RPC, True), (ResolverType.IN_PROCESS, False), (ResolverType.FILE, False)]
)
def test_flagd_blocks_only_with_its_remote_resolver(resolver: ResolverType, blocking: bool, tmp_path: Path) -> None:
    """flagd's RPC resolver asks a flagd server for every evaluation; its IN_PROCESS one evaluates here on
    flags synced from a flagd server (nothing connects until the provider is initialized), its FILE one
    on a flags file."""
    if resolver is ResolverType.FILE:
        provider = FlagdProvider(resolver_type=resolver, offline_flag_source_path=str(tmp_path / "flags.json"))
    else:
        provider = FlagdProvider(resolver_type=resolver)
    assert provider.config.resolver is resolver
    assert OpenFeatureFlags(Client(provider), reuse_static_s=0).blocking is blocking


def test_openfeatures_no_op_provider_is_read_here() -> None:
    from openfeature.provider.no_op_provider import NoOpProvider

    assert OpenFeatureFlags(Client(NoOpProvider()), reuse_static_s=0).blocking is False


def test_a_provider_that_cannot_be_shown_is_taken_for_a_blocking_one() -> None:
    class Hidden:
        @property
        def provider(self) -> Any:
            raise RuntimeError("no provider to show")

    assert OpenFeatureFlags(Hidden(), reuse_static_s=0).blocking is True


def flagd_on(tmp_path: Path, name: str, percent: int) -> FlagdProvider:
    """flagd's engine on a flags file of its own holding a static canary percentage."""
    path = tmp_path / f"{name}.json"
    spec = {"state": "ENABLED", "defaultVariant": "p", "variants": {"p": percent}}
    path.write_text(json.dumps({"flags": {"scale.canary.percent": spec}}))
    return FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))


@pytest.mark.parametrize("made", ["before the fork", "in the worker"])
def test_flagd_set_up_before_a_fork_is_taken_for_a_blocking_one_in_the_child(
    made: str, tmp_path: Path, domain: str
) -> None:
    """Set up in a --preload master, flagd reaches the workers without its engine's threads: it is read on
    the flag reader's workers there, whenever the OpenFeatureFlags was made, until a provider set up in
    the worker replaces it. (OpenFeature's in-memory provider has no thread to lose.)"""
    master = flagd_on(tmp_path, "master", 0)
    api.set_provider_and_wait(master, domain=domain)
    flags = OpenFeatureFlags(domain=domain, reuse_static_s=0) if made == "before the fork" else None
    try:

        def in_the_worker() -> str:
            mine = flags if flags is not None else OpenFeatureFlags(domain=domain, reuse_static_s=0)
            inherited = mine.blocking
            worker = flagd_on(tmp_path, "worker", 100)
            api.set_provider_and_wait(worker, domain=domain)  # (gunicorn's post_fork, as docs/rollouts.md says)
            try:
                replaced = mine.blocking
                api.set_provider_and_wait(in_memory(), domain=domain)
                return f"{inherited} {replaced} {mine.blocking}"
            finally:
                worker.shutdown()

        assert run_in_forked_child(in_the_worker) == "True False False"
        assert OpenFeatureFlags(domain=domain, reuse_static_s=0).blocking is False  # (the master's stands)
    finally:
        master.shutdown()


class Settable(AbstractProvider):
    """A static canary percentage that changes with no event (as when the events of a worker come late)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def get_metadata(self) -> Metadata:
        return Metadata(name="settable")

    def resolve_float_details(self, flag_key: str, default_value: float, evaluation_context: Any = None) -> Any:
        if flag_key == "scale.canary.percent":
            return FlagResolutionDetails(value=self.value, reason=Reason.STATIC)
        return FlagResolutionDetails(value=default_value, error_code=ErrorCode.FLAG_NOT_FOUND, reason=Reason.ERROR)

    def _absent(self, flag_key: str, default_value: Any, evaluation_context: Any = None) -> Any:
        return FlagResolutionDetails(value=default_value, error_code=ErrorCode.FLAG_NOT_FOUND, reason=Reason.ERROR)

    resolve_integer_details = resolve_boolean_details = resolve_string_details = resolve_object_details = _absent


def test_what_the_master_remembered_is_forgotten_in_the_worker(domain: str) -> None:
    """The SDK's event threads do not come through a fork, so a worker may hear late of new flags or a new
    provider: it starts with nothing remembered, and no plan made from what the master remembered."""
    from inprocserve._rollout import Router

    provider = Settable(0.0)
    api.set_provider_and_wait(provider, domain=domain)
    flags = OpenFeatureFlags(domain=domain, reuse_static_s=3600)
    reader = FlagReader(flags, timeout_s=5.0)
    router = Router("scale", CANARY.rollout, reader)
    ready = {1: object(), 2: object()}
    for _ in range(2):  # (remembered for an hour, and a plan made from it)
        assert router.decide(ready, 2, {"user_id": "u1"}).reason == "the canary is at 0%"
    assert router._flagged is not None and router._flagged[2] is not None

    def in_the_worker() -> str:
        provider.value = 100.0  # (no event)
        decided = router.decide(ready, 2, {"user_id": "u1"}).variant  # (before any read here)
        return f"{decided} {flags.get_number('scale.canary.percent', -1, {})}"

    try:
        assert run_in_forked_child(in_the_worker) == "canary 100.0"
    finally:
        reader.close()


@pytest.mark.parametrize("made", ["before the fork", "in the worker"])
def test_flagd_forked_while_taking_new_flags_answers_stable_within_the_budget(
    made: str, tmp_path: Path, domain: str, scale: Path
) -> None:
    """flagd's engine was taking new flags (its lock held by its watcher thread) when the master forked: in
    the worker that lock stays held for good. A request there answers stable within the flag budget, as
    with any hung provider, instead of waiting on the lock."""
    import time

    from inprocserve import Server

    path = tmp_path / "flags.json"
    spec = {"state": "ENABLED", "defaultVariant": "all", "variants": {"all": 100}}
    path.write_text(json.dumps({"flags": {"scale.canary.percent": spec}}))
    provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    api.set_provider_and_wait(provider, domain=domain)
    try:
        engine_lock = getattr(getattr(getattr(provider, "resolver", None), "evaluator", None), "_lock", None)
        if engine_lock is None:
            pytest.skip("this flagd provider keeps no engine lock where this test looks for it")
        flags = OpenFeatureFlags(domain=domain, reuse_static_s=0) if made == "before the fork" else None
        taking, forked = threading.Event(), threading.Event()

        def watcher_taking_new_flags() -> None:
            with engine_lock:
                taking.set()
                forked.wait(30)

        # The watcher gets a stack that no thread of the child can be given. glibc hands a forked child the
        # stacks of the threads that did not come along, for its next threads: one that got the watcher's had
        # its thread id too, and owned the engine's RLock (it took it, where the test means every thread of the
        # child to wait). CI failed this way once, when the child's flag worker got it; a stack more than four
        # times the default one is never given to a thread that asks for the default.
        threading.stack_size(64 * 1024 * 1024)
        try:
            watcher = threading.Thread(target=watcher_taking_new_flags, daemon=True)
            watcher.start()
        finally:
            threading.stack_size(0)
        taking.wait(30)

        def in_the_worker() -> str:
            mine = flags if flags is not None else OpenFeatureFlags(domain=domain, reuse_static_s=0)
            with Server(scale, flags=mine, flag_timeout_s=0.2, config=CANARY) as server:
                started = time.monotonic()
                answer = server.predict("scale", X, context={"user_id": "u1"})
                return f"{answer.version} {answer.reason} {time.monotonic() - started < 10}"

        try:
            report = run_in_forked_child(in_the_worker, timeout_s=60)
        finally:
            forked.set()
            watcher.join(30)
        assert report == "1 flag provider timed out True"
        master = flags if flags is not None else OpenFeatureFlags(domain=domain, reuse_static_s=0)
        assert server_answers_the_canary(master, scale)  # the parent's flagd is unharmed
    finally:
        provider.shutdown()


def server_answers_the_canary(flags: OpenFeatureFlags, scale: Path) -> bool:
    from inprocserve import Server

    with Server(scale, flags=flags, flag_timeout_s=5.0, config=CANARY) as server:
        return server.predict("scale", X, context={"user_id": "u1"}).version == 2


class HeldUntilReleased(CallsOut):
    """A provider that calls out to a flag service which answers only once ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = threading.Event()

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        assert self.answer.wait(3)  # (waited for on the loop, it would never come: a failure, then stable)
        return super().resolve_float_details(flag_key, default_value, evaluation_context)


def test_an_event_loop_never_waits_for_a_blocking_provider(
    scale: Path, make_server: ServerFactory, domain: str
) -> None:
    import asyncio

    provider = HeldUntilReleased()
    api.set_provider_and_wait(provider, domain=domain)
    server = make_server(scale, flags=OpenFeatureFlags(api.get_client(domain)), config=CANARY, flag_timeout_s=30)

    async def main() -> list[int]:
        requests = [
            asyncio.ensure_future(server.apredict("scale", X, context={"user_id": f"u{i}", "plan": plan}))
            for i, plan in enumerate(["staff", "guest", "staff"])
        ]
        await asyncio.sleep(0.05)  # the loop runs on while the flag service has not answered
        provider.answer.set()
        return [answer.version for answer in await asyncio.gather(*requests)]

    # waiting on the loop, nothing would ever set the answer: the flags would time out after 30 s, stable
    assert asyncio.run(asyncio.wait_for(main(), 20)) == [2, 1, 2]


def test_a_request_routed_off_the_loop_keeps_its_deadline(scale: Path, make_server: ServerFactory, domain: str) -> None:
    import asyncio
    import time

    from inprocserve import DeadlineExceededError

    provider = HeldUntilReleased()
    api.set_provider_and_wait(provider, domain=domain)
    server = make_server(scale, flags=OpenFeatureFlags(api.get_client(domain)), config=CANARY, flag_timeout_s=30)

    async def main() -> float:
        started = time.perf_counter()
        with pytest.raises(DeadlineExceededError):  # the flag service has not answered within 0.2 s
            await server.apredict("scale", X, context={"user_id": "u1", "plan": "staff"}, timeout_s=0.2)
        return time.perf_counter() - started

    try:
        assert asyncio.run(main()) < 2.0
    finally:
        provider.answer.set()


def test_a_request_routed_off_the_loop_stays_in_its_callers_trace(
    otel: Any,  # noqa: F811  (the fixture imported above)
    scale: Path,
    make_server: ServerFactory,
    domain: str,
) -> None:
    import asyncio

    provider = HeldUntilReleased()
    provider.answer.set()  # it answers at once, but from a worker: the request is still routed off the loop
    api.set_provider_and_wait(provider, domain=domain)
    server = make_server(
        scale, flags=OpenFeatureFlags(api.get_client(domain)), config=CANARY, flag_timeout_s=VALUES_NOT_SPEED_S
    )

    async def main() -> int:
        with otel.tracer.start_as_current_span("GET /score") as web:
            answer = await server.apredict("scale", X, context={"user_id": "u1", "plan": "staff"})
        assert answer.version == 2
        return int(web.get_span_context().span_id)

    web_span = asyncio.run(main())
    (predict,) = otel.finished("inprocserve.predict")  # one span for the request, not one per routing
    assert predict.parent is not None and predict.parent.span_id == web_span


def test_a_request_waiting_for_a_thread_is_withdrawn_with_its_task_and_refused_once_the_loop_ends(
    scale: Path, make_server: ServerFactory, domain: str
) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from inprocserve import ServerClosedError

    provider = HeldUntilReleased()
    provider.answer.set()
    api.set_provider_and_wait(provider, domain=domain)
    server = make_server(
        scale, flags=OpenFeatureFlags(api.get_client(domain)), config=CANARY, flag_timeout_s=VALUES_NOT_SPEED_S
    )
    staff = {"user_id": "u1", "plan": "staff"}

    def answered() -> int:
        return int(server.status()["models"]["scale"]["versions"]["2"]["latency_ms"]["count"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        free = threading.Event()
        busy = loop.run_in_executor(None, free.wait, 10)  # the application's own work holds the one thread
        task = asyncio.ensure_future(server.apredict("scale", X, context=staff, timeout_s=5))
        await asyncio.sleep(0.05)
        task.cancel()  # its client went away before a thread took the request
        with pytest.raises(asyncio.CancelledError):
            await task  # (the loop has withdrawn it: freed before that, the thread could take it first)
        free.set()
        await busy
        await loop.run_in_executor(None, lambda: None)  # the thread is free again: anything queued has run
        assert answered() == 0
        await loop.shutdown_default_executor()  # as asyncio.run does at its end
        with pytest.raises(ServerClosedError, match="default executor is shut down"):
            await server.apredict("scale", X, context=staff)

    asyncio.run(main())


def test_a_context_refused_on_a_flag_worker_raises_with_the_callers_own_frames_and_keeps_nothing(
    scale: Path, make_server: ServerFactory, domain: str
) -> None:
    """A targeting key that cannot be made text (a numpy array sent as the user id), found while a flag
    worker evaluated the request's flags, is the request's own mistake, raised to its caller. It was raised
    with the worker thread's frames in its traceback, and the worker's frame held it (its future) until the
    worker's next job: the caller's frames, with the request's inputs, stayed that long, collector or not."""
    import gc
    import traceback
    import weakref

    from inprocserve import InvalidInputError

    from .conftest import wait_until

    provider = HeldUntilReleased()
    provider.answer.set()
    api.set_provider_and_wait(provider, domain=domain)
    server = make_server(
        scale, flags=OpenFeatureFlags(api.get_client(domain)), config=CANARY, flag_timeout_s=VALUES_NOT_SPEED_S
    )
    server.predict("scale", X, context={"user_id": "u1"})
    inputs = np.ones((1, 4), np.float32)
    kept = weakref.ref(inputs)
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(InvalidInputError, match="targeting key") as caught:
            server.predict("scale", inputs, context={"user_id": np.array([7, 8])})
        frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
        assert "_work" not in frames and "_decide" not in frames  # (the flag worker's)
        del caught, inputs
        wait_until(lambda: kept() is None, timeout_s=5.0)
    finally:
        gc.enable()


def test_a_request_no_thread_took_before_its_deadline_keeps_nothing(
    scale: Path, make_server: ServerFactory, domain: str
) -> None:
    """A task routed off the loop whose call no executor thread took before its deadline: the call, run
    later, raises the deadline's error from a frame whose local held it (a cycle), with the request's
    inputs in the call's closure: 1 of 1 such request kept them until a full collection."""
    import asyncio
    import concurrent.futures
    import gc
    import weakref

    from inprocserve import DeadlineExceededError

    from .conftest import wait_until

    provider = HeldUntilReleased()
    provider.answer.set()
    api.set_provider_and_wait(provider, domain=domain)
    server = make_server(
        scale, flags=OpenFeatureFlags(api.get_client(domain)), config=CANARY, flag_timeout_s=VALUES_NOT_SPEED_S
    )
    server.predict("scale", X, context={"user_id": "u1"})
    inputs = np.ones((1, 4), np.float32)
    kept = weakref.ref(inputs)
    busy = threading.Event()

    async def view(inputs: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        blocker = loop.run_in_executor(None, busy.wait, 10)  # the executor's one thread is taken
        with pytest.raises(DeadlineExceededError):
            await server.apredict("scale", inputs, context={"user_id": "u1", "plan": "staff"}, timeout_s=0.1)
        busy.set()
        await blocker
        await loop.shutdown_default_executor()  # the call ran meanwhile, and found its deadline passed

    gc.collect()
    gc.disable()
    try:
        asyncio.run(view(inputs))
        del inputs
        wait_until(lambda: kept() is None, timeout_s=5.0)
    finally:
        gc.enable()


def test_a_request_refused_for_a_shut_down_executor_keeps_nothing(
    scale: Path, make_server: ServerFactory, domain: str
) -> None:
    """A task to route off the loop once the loop's default executor is shut down (the loop is ending) is
    refused with ServerClosedError, raised from a frame whose local held it (a cycle), with the request's
    inputs in the call's closure: 1 of 1 such request kept them until a full collection."""
    import asyncio
    import gc
    import weakref

    from inprocserve import ServerClosedError

    from .conftest import wait_until

    provider = HeldUntilReleased()
    provider.answer.set()
    api.set_provider_and_wait(provider, domain=domain)
    server = make_server(
        scale, flags=OpenFeatureFlags(api.get_client(domain)), config=CANARY, flag_timeout_s=VALUES_NOT_SPEED_S
    )
    server.predict("scale", X, context={"user_id": "u1"})
    inputs = np.ones((1, 4), np.float32)
    kept = weakref.ref(inputs)

    async def view(inputs: np.ndarray) -> None:
        await asyncio.get_running_loop().shutdown_default_executor()
        with pytest.raises(ServerClosedError, match="default executor is shut down"):
            await server.apredict("scale", inputs, context={"user_id": "u1", "plan": "staff"})

    gc.collect()
    gc.disable()
    try:
        asyncio.run(view(inputs))
        del inputs
        wait_until(lambda: kept() is None, timeout_s=5.0)
    finally:
        gc.enable()
