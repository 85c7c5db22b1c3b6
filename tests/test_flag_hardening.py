"""What a review of the flag providers and the flag reader found: a flags file that hangs, goes bad or is
swapped unseen, and provider errors that escaped the reader or were taken for something else.

Every flag problem must end as the stable decision (or the last good values), counted or shown, and never
hold or fail a request; a request's own mistake is the request's error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import json
import logging
import math
import numbers
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.struct_pb2 import Struct  # (flagd's provider's dependency)
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import FlagNotFoundError
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.provider import AbstractProvider, Metadata

import inprocserve
from inprocserve import ConfigurationError, EnvFlags, FileFlags, InMemoryFlags, InvalidInputError, OpenFeatureFlags

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, rollout, run_in_forked_child, wait_until

# (the caller's own signal handler raises Interrupted in its thread, as gevent's Timeout or greenlet.kill()'s
# GreenletExit is raised in the request's greenlet, in whatever call it waits in)
from .test_interrupted_callers import Interrupted, interrupt, interrupted_at
from .test_interrupted_callers import interruptible as interruptible  # (a fixture)

X = np.ones((1, 4), np.float32)
CANARY = rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50))
FULL_CANARY = {"scale.canary.percent": 100}


def flags_status(server: inprocserve.Server) -> dict[str, Any]:
    return server.status()["models"]["scale"]["rollout"]["flags"]  # type: ignore[no-any-return]


def refreshers(but: set[threading.Thread] | frozenset[threading.Thread] = frozenset()) -> set[threading.Thread]:
    """The FileFlags threads alive now, but those given (other tests' instances, which end when idle)."""
    return {t for t in threading.enumerate() if t.name == "inprocserve-flag-file" and t.is_alive()} - but


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(FULL_CANARY))
    return path


# -- a flags file on a hung mount ---------------------------------------------------------------------------


def test_a_flags_file_on_a_hung_mount_holds_no_request(
    versions: Path, make_server: ServerFactory, flags_file: Path
) -> None:
    others = refreshers()
    flags = FileFlags(flags_file, check_interval_s=0)
    server = make_server(versions, config=CANARY, flags=flags, flag_timeout_s=0.05)
    assert server.predict("scale", X, context={"user_id": "u"}).variant == "canary"
    latencies: list[float] = []

    def request() -> None:
        started = time.monotonic()
        answer = server.predict("scale", X, context={"user_id": "u"})
        latencies.append(time.monotonic() - started)
        assert answer.variant == "canary"  # the values last read answer

    hung, swap = flags_file.with_name("hung"), flags_file.with_name("swap")
    os.mkfifo(hung)  # (opening it for reading never returns while nobody writes: a read on a hung mount)
    os.link(hung, swap)
    os.replace(swap, flags_file)
    try:
        threads = [threading.Thread(target=request, daemon=True) for _ in range(4)]
        for thread in threads:  # (one after another: each finds the look asked for by the one before)
            thread.start()
            thread.join(timeout=2)
        assert len(latencies) == 4, "a request waited on the hung flags file"
        assert max(latencies) < 1
        assert len(refreshers(but=others)) == 1  # the one look in flight, stuck in the file
    finally:  # the mount comes back: a file in place, and the stuck look answered
        swap.write_text(json.dumps({"scale.canary.percent": 0}))
        os.replace(swap, flags_file)
        fd = os.open(hung, os.O_RDWR | os.O_NONBLOCK)  # (opens at once, a reader waiting or not)
        os.write(fd, json.dumps({"scale.canary.percent": 0}).encode())
        os.close(fd)
    wait_until(lambda: server.predict("scale", X, context={"user_id": "u"}).variant == "stable")
    flags.close()


def test_file_flags_close_stops_their_thread_and_keep_their_values(flags_file: Path) -> None:
    others = refreshers()
    with FileFlags(flags_file, check_interval_s=0) as flags:
        assert flags.get_number("scale.canary.percent", 0, {}) == 100
        assert len(refreshers(but=others)) == 1
    wait_until(lambda: not refreshers(but=others))
    flags_file.write_text(json.dumps({"scale.canary.percent": 5}))
    for _ in range(3):
        assert flags.get_number("scale.canary.percent", 0, {}) == 100  # never refreshed again
    assert not refreshers(but=others)
    flags.close()  # (idempotent)


def test_file_flags_look_at_their_file_again_in_a_forked_child(flags_file: Path) -> None:
    """A gunicorn worker forked from a master whose refresher was running gets its own."""
    others = refreshers()
    flags = FileFlags(flags_file, check_interval_s=0)
    assert flags.get_number("scale.canary.percent", 0, {}) == 100
    assert len(refreshers(but=others)) == 1

    def in_the_child() -> str:
        flags_file.write_text(json.dumps({"scale.canary.percent": 7}))
        wait_until(lambda: flags.get_number("scale.canary.percent", 0, {}) == 7)
        return "seen"

    assert run_in_forked_child(in_the_child, timeout_s=20) == "seen"
    flags.close()


# -- a flags file that goes bad -----------------------------------------------------------------------------


def _json_error(text: str) -> str:
    """What Python's json says of ``text``: its wording differs between Pythons (3.13 says "Illegal trailing
    comma before end of object" where 3.11 and 3.12 say "Expecting property name enclosed in double quotes")."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return exc.msg
    raise AssertionError(f"{text!r} is valid JSON")


def test_an_invalid_flags_file_is_logged_once_a_minute_and_shown(
    versions: Path, make_server: ServerFactory, flags_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flags = FileFlags(flags_file, check_interval_s=0)
    server = make_server(versions, config=CANARY, flags=flags)
    assert flags_status(server)["source_error"] is None
    with caplog.at_level("WARNING", logger="inprocserve"):
        for typo in ('{"scale.kill": true,}', '{"scale.kill": tru}'):  # the kill switch, mistyped twice
            why = _json_error(typo)
            flags_file.write_text(typo)
            assert server.predict("scale", X, context={"user_id": "u"}).variant == "canary"  # the last good values
            wait_until(lambda why=why: why in (flags.last_error or ""))  # type: ignore[misc]
    status = flags_status(server)
    assert str(flags_file) in status["source_error"] and status["failures"] == 0
    logged = [r.getMessage() for r in caplog.records if str(flags_file) in r.getMessage()]
    assert len(logged) == 1, logged  # one kind of problem: once a minute
    flags_file.write_text(json.dumps({"scale.kill": True}))
    wait_until(lambda: server.predict("scale", X, context={"user_id": "u"}).reason == "kill switch is on")
    assert flags_status(server)["source_error"] is None


def test_a_flags_file_put_back_as_it_was_clears_the_error(flags_file: Path) -> None:
    flags = FileFlags(flags_file, check_interval_s=0)
    saved, before = flags_file.read_bytes(), flags_file.stat()
    flags_file.unlink()
    flags.get_number("scale.canary.percent", 0, {})
    wait_until(lambda: flags.last_error is not None and "No such file" in flags.last_error)
    flags_file.write_bytes(saved)
    os.utime(flags_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    # (at the first look that reads it: not only once its time is too old to hide another edit, 2 s on)
    wait_until(lambda: flags.get_number("scale.canary.percent", 0, {}) == 100 and flags.last_error is None, 1.5)
    flags.close()


# -- a new file that looks like the old one ------------------------------------------------------------------


def test_a_swap_to_a_file_of_the_same_size_and_time_is_seen(tmp_path: Path) -> None:
    """Releases unpacked with one modification time (tar, rsync -t, reproducible builds), swapped in by
    renaming a symlink over the old one, as Kubernetes' ConfigMap volumes do."""
    old, new = tmp_path / "release-a.json", tmp_path / "release-b.json"
    old.write_text(json.dumps({"scale.canary.percent": 10}))
    new.write_text(json.dumps({"scale.canary.percent": 90}))
    for release in (old, new):
        os.utime(release, (1_700_000_000, 1_700_000_000))
    link = tmp_path / "flags.json"
    link.symlink_to(old.name)
    flags = FileFlags(link, check_interval_s=0)
    assert flags.get_number("scale.canary.percent", 0, {}) == 10
    swap = tmp_path / "flags.tmp"
    swap.symlink_to(new.name)
    os.replace(swap, link)
    wait_until(lambda: flags.get_number("scale.canary.percent", 0, {}) == 90)
    flags.close()


def test_an_edit_of_the_same_size_within_one_timestamp_tick_is_seen(tmp_path: Path) -> None:
    """A file system that stamps files to the second (ext3, HFS+, some NFS) gives an edit within the second
    the old file's modification time (set back here, as such a file system would give it)."""
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"scale.kill": False, "scale.canary.percent": 10}))
    before = path.stat()
    flags = FileFlags(path, check_interval_s=0)
    assert flags.get_number("scale.canary.percent", 0, {}) == 10
    path.write_text(json.dumps({"scale.kill": False, "scale.canary.percent": 50}))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    wait_until(lambda: flags.get_number("scale.canary.percent", 0, {}) == 50)
    flags.close()


def test_a_flags_file_in_utf8_with_a_byte_order_mark_and_an_upper_case_suffix_is_read(tmp_path: Path) -> None:
    path = tmp_path / "FLAGS.TOML"
    path.write_bytes("\ufeff# café, as an editor on Windows saves it\n[scale]\nstrategy = 'canary'\n".encode())
    with FileFlags(path) as flags:
        assert flags.last_error is None
        assert flags.get_string("scale.strategy", "stable", {}) == "canary"


# -- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [math.nan, math.inf, -1, None, "1", True, 10**400, 1e308, 86_400.5])
def test_the_check_interval_must_be_a_number_of_seconds_up_to_a_day(flags_file: Path, interval: Any) -> None:
    """1e308 s would never look at the file again, as NaN did: a day is the longest of any interval."""
    with pytest.raises(ConfigurationError, match="check_interval_s must be a number of seconds from 0 to 86400"):
        FileFlags(flags_file, check_interval_s=interval)
    with FileFlags(flags_file, check_interval_s=86_400) as flags:
        assert flags.check_interval_s == 86_400


# -- values a float cannot hold ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "env"])
def test_an_integer_too_large_for_a_float_is_an_unusable_flag(
    versions: Path, make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    huge = "1" + "0" * 400
    flags: Any
    if source == "file":
        path = tmp_path / "flags.json"
        path.write_text(f'{{"scale.canary.percent": {huge}}}')
        flags = FileFlags(path)
    else:
        monkeypatch.setenv("INPROCSERVE_FLAG_SCALE_CANARY_PERCENT", huge)
        flags = EnvFlags()
    server = make_server(versions, config=CANARY, flags=flags)
    answer = server.predict("scale", X, context={"user_id": "u"})
    assert answer.variant == "stable" and answer.reason.startswith("unusable flag: ")
    status = flags_status(server)
    assert status["failures"] == 0 and status["unusable"] == 1
    assert "a float can hold" in status["unusable_flags"]["scale.canary.percent"]


# -- what a provider raises ---------------------------------------------------------------------------------


class ClientError(Exception):
    """An SDK's error whose ``__repr__`` reads an attribute not set on this path."""

    def __repr__(self) -> str:
        return f"ClientError({self.response.status})"  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return repr(self)


class GeventLikeTimeout(BaseException):
    """gevent's Timeout, greenlet's GreenletExit ...: not an ``Exception``."""


class FailingFlags(InMemoryFlags):
    name = "failing"

    def __init__(self, error: BaseException, *, blocking: bool) -> None:
        super().__init__({})
        self.error = error
        self.blocking = blocking

    def _lookup(self, key: str) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "blocking"),
    [
        (ClientError("503"), False),
        (ClientError("503"), True),
        (GeventLikeTimeout(), True),  # (on a worker, only the provider raises)
        (SystemExit(3), True),
        (concurrent.futures.CancelledError(), True),  # (the provider's own: the reader was not closed)
        (asyncio.CancelledError(), False),  # (raised by a call that nothing outside could cancel: its own)
    ],
    ids=[
        "unshowable",
        "unshowable-blocking",
        "base-exception-blocking",
        "system-exit-blocking",
        "cancelled-blocking",
        "asyncio-cancelled",
    ],
)
def test_whatever_a_provider_raises_gives_the_stable_decision_and_is_counted(
    versions: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    error: BaseException,
    blocking: bool,
) -> None:
    server = make_server(
        versions, config=CANARY, flags=FailingFlags(error, blocking=blocking), flag_timeout_s=VALUES_NOT_SPEED_S
    )
    with caplog.at_level("WARNING", logger="inprocserve"):
        answer = server.predict("scale", X, context={"user_id": "u"})
    assert (answer.variant, answer.reason) == ("stable", "flag provider failed")
    assert flags_status(server)["failures"] == 1
    assert any(type(error).__name__ in r.getMessage() for r in caplog.records)


class ShadowFlagRefused:
    """A hand-written provider (the protocol, no built-in's code) whose flag service refuses the shadow flag's
    read with the library's own error type, as a provider that wraps inprocserve code may."""

    name = "hand-written"
    blocking = False

    def _answer(self, key: str, default: Any, context: Any) -> Any:
        if key.endswith(".shadow.versions"):
            raise InvalidInputError("the flag service refused the read: no tenant header")
        return FULL_CANARY.get(key, default)

    get_boolean = get_number = get_string = get_object = _answer


@pytest.mark.parametrize("blocking", [False, True], ids=["on-the-request", "on-a-worker"])
def test_a_provider_raising_invalid_input_error_of_its_own_is_its_failure_not_the_requests(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, blocking: bool
) -> None:
    # Re-raised as the request's own mistake (a 400 to an HTTP client, about input it never sent wrong): only
    # OpenFeatureFlags' refusal of the request's context is that (docs/rollouts.md); a provider's own
    # InvalidInputError is the provider failing, as any exception it raises.
    error = InvalidInputError("the flag service refused the read: no tenant header")
    server = make_server(
        versions, config=CANARY, flags=FailingFlags(error, blocking=blocking), flag_timeout_s=VALUES_NOT_SPEED_S
    )
    with caplog.at_level("WARNING", logger="inprocserve"):
        answer = server.predict("scale", X, context={"user_id": "u"})
    assert (answer.variant, answer.reason) == ("stable", "flag provider failed")
    assert flags_status(server)["failures"] == 1
    logged = [r.getMessage() for r in caplog.records if "flag provider 'failing' failed" in r.getMessage()]
    assert logged and "InvalidInputError: the flag service refused the read: no tenant header" in logged[0], logged


def test_a_provider_raising_invalid_input_error_on_a_shadow_flag_leaves_the_answer_without_shadows(
    versions: Path, make_server: ServerFactory
) -> None:
    server = make_server(versions, config=CANARY, flags=ShadowFlagRefused(), flag_timeout_s=VALUES_NOT_SPEED_S)
    answer = server.predict("scale", X, context={"user_id": "u"})
    assert answer.variant == "canary" and answer.version == 2  # the rollout's flags were read; the answer stands
    assert flags_status(server)["failures"] == 1


def test_an_unusable_value_whose_message_cannot_be_shown_is_counted_as_unusable(
    versions: Path, make_server: ServerFactory
) -> None:
    class Unshowable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    server = make_server(versions, config=CANARY, flags=InMemoryFlags({"scale.kill": Unshowable()}))
    answer = server.predict("scale", X, context={"user_id": "u"})
    assert answer.variant == "stable" and "must be a boolean" in answer.reason
    assert flags_status(server)["unusable"] == 1 and flags_status(server)["failures"] == 0


class ArrayFlags(InMemoryFlags):
    """A hand-written provider backed by numpy data: its lists come back as arrays."""

    name = "arrays"

    def get_object(self, key: str, default: Any, context: Any) -> Any:
        value = super().get_object(key, default, context)
        return np.asarray(value) if key in self._values else value


def test_a_numpy_array_for_a_list_flag_is_an_unusable_flag(versions: Path, make_server: ServerFactory) -> None:
    flags = ArrayFlags({"scale.canary.percent": 100, "scale.shadow.versions": [1, 3]})
    server = make_server(versions, config=CANARY, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S)
    answer = server.predict("scale", X, context={"user_id": "u"})
    assert answer.variant == "canary" and "shadows off: unusable flag" in answer.reason and "numpy" in answer.reason
    status = flags_status(server)
    assert status["failures"] == 0 and status["unusable"] == 1


def test_a_context_key_that_cannot_be_compared_is_the_requests_mistake(
    versions: Path, make_server: ServerFactory
) -> None:
    from openfeature import api
    from openfeature.flag_evaluation import FlagResolutionDetails
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    def by_plan(flag: InMemoryFlag[float], context: EvaluationContext) -> FlagResolutionDetails[float]:
        return FlagResolutionDetails(value=100.0 if context.attributes.get("plan") == "pro" else 0.0)

    percent = InMemoryFlag("on", {"on": 0.0}, context_evaluator=by_plan)
    api.set_provider(InMemoryProvider({"scale.canary.percent": percent}), domain="inprocserve-keys")
    flags = OpenFeatureFlags(domain="inprocserve-keys")

    class Incomparable:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("cannot compare")

        __hash__ = object.__hash__

    context = {"user_id": "u", "plan": "pro", Incomparable(): 1}
    with pytest.raises(InvalidInputError, match="is a Incomparable, not a string; send string keys"):
        flags.get_number("scale.canary.percent", 0, context)  # type: ignore[arg-type]
    server = make_server(versions, config=CANARY, flags=flags)
    with pytest.raises(InvalidInputError):
        server.predict("scale", X, context=context)  # type: ignore[arg-type]
    assert flags_status(server)["failures"] == 0


class UnreadableScore(numbers.Real):
    """A number type of the caller's (a units library's quantity, say) that refuses ``float()``."""

    def __float__(self) -> float:
        raise ValueError("a quantity with units has no plain float")

    def __repr__(self) -> str:
        return "UnreadableScore()"


UnreadableScore.__abstractmethods__ = frozenset()


def test_a_context_value_that_cannot_be_read_as_a_number_is_named_in_the_requests_error(
    versions: Path, make_server: ServerFactory
) -> None:
    # Its float() raising was reported as "the context's keys cannot be compared with 'user_id'; send
    # string keys": the keys were fine, and the field at fault was not named.
    from openfeature import api
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    api.set_provider(InMemoryProvider({"scale.canary.percent": InMemoryFlag("on", {"on": 100.0})}), domain="units")
    server = make_server(versions, config=CANARY, flags=OpenFeatureFlags(domain="units"))
    with pytest.raises(InvalidInputError, match=r"context's 'score' \(UnreadableScore\) cannot be read as a number"):
        server.predict("scale", X, context={"user_id": "u", "score": UnreadableScore()})
    assert flags_status(server)["failures"] == 0


class ContextOverTheWire(AbstractProvider):
    """A provider that sends the evaluation context to its flag service as a protobuf Struct, as flagd's RPC
    resolver does (its flag service holds one flag: the canary at 100 %)."""

    def get_metadata(self) -> Metadata:
        return Metadata(name="over-the-wire")

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        Struct().update(evaluation_context.attributes if evaluation_context else {})
        if flag_key != "scale.canary.percent":
            raise FlagNotFoundError(flag_key)
        return FlagResolutionDetails(value=100.0)

    resolve_boolean_details = resolve_string_details = resolve_integer_details = resolve_float_details  # type: ignore[assignment]
    resolve_object_details = resolve_float_details  # type: ignore[assignment]


@pytest.mark.parametrize("key", [7, ("plan", "tier")], ids=["int", "tuple"])
def test_a_context_key_that_is_no_string_is_the_requests_mistake_not_the_providers(
    versions: Path, make_server: ServerFactory, key: Any
) -> None:
    # OpenFeature names attributes by strings. A context of {7: ...} went to the provider as it was; one that
    # sends its context over the wire raised TypeError, and every such request was answered by the stable
    # version, counted and logged as the flag provider failing.
    from openfeature import api

    api.set_provider(ContextOverTheWire(), domain="over-the-wire")
    server = make_server(versions, config=CANARY, flags=OpenFeatureFlags(domain="over-the-wire", blocking=False))
    assert server.predict("scale", X, context={"user_id": "u", "plan": "pro"}).variant == "canary"
    with pytest.raises(InvalidInputError, match=r"context key .* is a (int|tuple), not a string; send string keys"):
        server.predict("scale", X, context={"user_id": "u", key: "pro"})
    assert flags_status(server)["failures"] == 0


class WrappedOpenFeature:
    """A user's provider that hands each read to an OpenFeatureFlags (to time it, say)."""

    name = "wrapped"

    def __init__(self, inner: OpenFeatureFlags) -> None:
        self.inner, self.blocking = inner, inner.blocking

    def get_boolean(self, key: str, default: bool, context: Any) -> bool:
        return self.inner.get_boolean(key, default, context)

    def get_number(self, key: str, default: float, context: Any) -> float:
        return self.inner.get_number(key, default, context)

    def get_string(self, key: str, default: str, context: Any) -> str:
        return self.inner.get_string(key, default, context)

    def get_object(self, key: str, default: Any, context: Any) -> Any:
        return self.inner.get_object(key, default, context)


class QuotaOpenFeature(OpenFeatureFlags):
    """A subclass whose own code raises the library's error type for a reason of its own."""

    def get_number(self, key: str, default: float, context: Any) -> float:
        if context.get("tenant") == "over quota":
            raise InvalidInputError("the tenant service refused the read: over quota")
        return super().get_number(key, default, context)


@pytest.mark.parametrize("blocking", [False, True], ids=["on-the-request", "on-a-worker"])
def test_whose_invalid_input_error_it_is_goes_by_where_it_was_raised_not_by_the_providers_type(
    versions: Path, make_server: ServerFactory, blocking: bool
) -> None:
    # Told by the provider's type: OpenFeatureFlags behind a user's provider refused a context key 7, and the
    # request was answered stable, counted as the provider failing; a subclass's own error was the client's 400.
    from openfeature import api

    api.set_provider(ContextOverTheWire(), domain="over-the-wire")
    wrapped = WrappedOpenFeature(OpenFeatureFlags(domain="over-the-wire", blocking=blocking))
    server = make_server(versions, config=CANARY, flags=wrapped, flag_timeout_s=VALUES_NOT_SPEED_S)
    assert server.predict("scale", X, context={"user_id": "u"}).variant == "canary"
    with pytest.raises(InvalidInputError, match=r"context key 7 is a int, not a string; send string keys"):
        server.predict("scale", X, context={"user_id": "u", 7: "pro"})
    assert flags_status(server)["failures"] == 0
    quota = QuotaOpenFeature(domain="over-the-wire", blocking=blocking)
    server = make_server(versions, config=CANARY, flags=quota, flag_timeout_s=VALUES_NOT_SPEED_S)
    answer = server.predict("scale", X, context={"user_id": "u", "tenant": "over quota"})
    assert (answer.variant, answer.reason) == ("stable", "flag provider failed")
    assert flags_status(server)["failures"] == 1
    with pytest.raises(InvalidInputError, match=r"context key 7 is a int"):  # (its context refused all the same)
        server.predict("scale", X, context={"user_id": "u", 7: "pro"})


class WaitingFlags(InMemoryFlags):
    """A provider whose first evaluation waits (its I/O) until released."""

    name = "waiting"

    def __init__(self, *, blocking: bool) -> None:
        super().__init__(FULL_CANARY)
        self.blocking = blocking
        self.entered, self.released = threading.Event(), threading.Event()

    def _lookup(self, key: str) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            self.released.wait(10)
        return super()._lookup(key)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals (pthread_kill)")
@pytest.mark.parametrize("blocking", [False, True], ids=["in-the-provider", "waiting-for-the-worker"])
def test_a_callers_own_base_exception_ends_the_request_and_is_no_provider_failure(
    versions: Path, make_server: ServerFactory, interruptible: None, blocking: bool
) -> None:
    """Raised on the request's thread while the provider waits (on that thread, or on a worker), it is the
    caller's: the request must end with it, at once, not carry on past the caller's deadline as the stable
    decision, nor wait out the provider or the flag budget first."""
    flags = WaitingFlags(blocking=blocking)
    budget_s = 5.0  # (the provider waits 10 s)
    server = make_server(versions, config=CANARY, flags=flags, flag_timeout_s=budget_s)

    def interrupt_once_entered() -> None:
        flags.entered.wait(10)
        interrupt(threading.main_thread().ident)

    interrupter = threading.Thread(target=interrupt_once_entered, daemon=True)
    interrupter.start()
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            server.predict("scale", X, context={"user_id": "u"})
        assert time.monotonic() - started < budget_s
    finally:
        flags.released.set()
        interrupter.join()
    status = flags_status(server)
    assert (status["failures"], status["timeouts"]) == (0, 0)
    assert server.predict("scale", X, context={"user_id": "u"}).variant == "canary"  # (the worker lives on)


class RecordingFlags(InMemoryFlags):
    """A remote provider (blocking: read on a flag worker) that records whose decision it evaluated."""

    name = "recording"
    blocking = True

    def __init__(self) -> None:
        super().__init__(FULL_CANARY)
        self.users: list[str] = []

    def get_number(self, key: str, default: float, context: Any) -> Any:
        self.users.append(context["user_id"])
        return super().get_number(key, default, context)


def _line_of(function: Any, text: str) -> int:
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_a_caller_interrupted_while_it_starts_a_flag_worker_leaves_no_decision_to_run_for_nobody(
    versions: Path, make_server: ServerFactory
) -> None:
    """The first decision of a blocking provider starts a flag worker on the request's thread, which waits in
    Thread.start() for the thread to run. Ctrl-C landing in that wait ended the request, but its decision,
    queued, ran on the new worker for nobody (a bandit's draw then remembered for the key, and its outcome
    credited to an arm that never served it), and the worker went uncounted: status showed no worker, and
    one more than ``max_workers`` could start."""
    flags = RecordingFlags()
    server = make_server(versions, config=CANARY, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S)
    started_wait = _line_of(threading.Thread.start, "self._started.wait()")
    with interrupted_at(threading.Thread.start.__code__, after_line=started_wait - 1):
        with pytest.raises(Interrupted):
            server.predict("scale", X, context={"user_id": "alice"})
    wait_until(lambda: flags_status(server)["workers"] == 1)  # the worker it started, counted
    assert server.predict("scale", X, context={"user_id": "bob"}).variant == "canary"
    assert "alice" not in flags.users
    assert flags_status(server)["workers"] == 1


_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import sys, tempfile
from pathlib import Path
import gevent, numpy as np
import inprocserve
from inprocserve import CanaryConfig, InMemoryFlags, ModelConfig, RolloutConfig, VersionPolicy
from inprocserve.testing import build_scale_model, save_model

class FlagService(InMemoryFlags):  # calls a flag service: the request's greenlet yields in its I/O
    name = "service"
    def _lookup(self, key):
        gevent.sleep(0.5)
        return super()._lookup(key)

repo = Path(tempfile.mkdtemp())
for v in (1, 2): save_model(build_scale_model(float(v)), repo, "scale", v)
config = ModelConfig(rollout=RolloutConfig(strategy="canary", canary=CanaryConfig(version=2, percent=50)),
                     version_policy=VersionPolicy.all())
X = np.ones((1, 4), np.float32)
for blocking in (False, True):
    flags = FlagService({}); flags.blocking = blocking
    with inprocserve.Server(repo, flags=flags, flag_timeout_s=5.0, config=config) as server:
        try:
            with gevent.Timeout(0.05):
                server.predict("scale", X, context={"user_id": "u"})
            print("timeout: the request ran on")
        except gevent.Timeout:
            print("timeout: raised")
        request = gevent.spawn(server.predict, "scale", X, context={"user_id": "u"})
        gevent.sleep(0.05)
        request.kill(block=True)
        print("kill:", type(request.value).__name__, request.exception)
        print("failures:", server.status()["models"]["scale"]["rollout"]["flags"]["failures"])
"""


def test_gevents_timeout_and_kill_end_a_request_whose_provider_waits() -> None:
    """Under gevent (monkey-patched, in a child process of its own), a request's ``gevent.Timeout`` and
    ``greenlet.kill()`` land in the provider's I/O, or in the wait for the reader's worker."""
    pytest.importorskip("gevent")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-c", _UNDER_GEVENT], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split("\n")[:-1] == ["timeout: raised", "kill: GreenletExit None", "failures: 0"] * 2


# -- an empty flags file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flags.toml", "flags.json"])
@pytest.mark.parametrize("text", ["", " \n\t\n"], ids=["empty", "white-space"])
def test_a_flags_file_empty_at_start_means_no_flags(
    versions: Path, make_server: ServerFactory, tmp_path: Path, name: str, text: str
) -> None:
    """``touch flags.toml``, or an empty ConfigMap key: the configured rollout runs, nothing failing."""
    path = tmp_path / name
    path.write_text(text)
    server = make_server(versions, config=CANARY, flags=FileFlags(path, check_interval_s=0))
    answers = {server.predict("scale", X, context={"user_id": f"u{i}"}).variant for i in range(40)}
    assert answers == {"stable", "canary"}
    status = flags_status(server)
    assert (status["failures"], status["source_error"]) == (0, None)


def test_a_flags_file_emptied_means_no_flags_once_still_empty_a_second_later(
    versions: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """An operator empties the file to clear every flag: the values keep answering while it may be a file
    being written, and no flags answer once it is still empty a second later, with no request asking for
    that look (here none would ask for an hour)."""
    path = tmp_path / "flags.toml"
    path.write_text("[scale]\nkill = true\n")
    flags = FileFlags(path, check_interval_s=3600)
    server = make_server(versions, config=CANARY, flags=flags)
    path.write_text("")
    emptied = time.monotonic()
    assert server.predict("scale", X, context={"user_id": "u"}).reason == "kill switch is on"  # (asks the look)
    wait_until(lambda: "being written" in (flags.last_error or ""))
    assert server.predict("scale", X, context={"user_id": "u"}).reason == "kill switch is on"
    wait_until(lambda: flags.last_error is None, 5)
    assert time.monotonic() - emptied >= 1.0
    answers = {server.predict("scale", X, context={"user_id": f"u{i}"}).variant for i in range(40)}
    assert answers == {"stable", "canary"}
    assert flags_status(server)["source_error"] is None


# -- the refresher thread -----------------------------------------------------------------------------------


class Killed(BaseException):
    """Ends the thread it is raised in (as greenlet.kill() ends a monkey-patched thread)."""


@pytest.mark.parametrize("raised", [RuntimeError, Killed])
def test_a_refresher_ended_by_what_a_logging_filter_raises_is_replaced(
    flags_file: Path, monkeypatch: pytest.MonkeyPatch, raised: type
) -> None:
    """A filter (or handler) that raises while the thread logs a bad file: later changes are still seen,
    whether the thread lives on or is ended by it."""
    ended: list[type] = []
    monkeypatch.setattr(threading, "excepthook", lambda hooked: ended.append(hooked.exc_type))
    filtered: list[str] = []

    class Raising(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            filtered.append(record.getMessage())
            raise raised("a buggy logging filter")

    flags = FileFlags(flags_file, check_interval_s=0)
    logger = logging.getLogger("inprocserve._flags")
    logger.addFilter(raising := Raising())
    try:
        flags_file.write_text("{not json")
        flags.get_number("scale.canary.percent", 0, {})
        wait_until(lambda: any("Expecting property name" in message for message in filtered))
        if raised is Killed:
            wait_until(lambda: ended == [Killed])
    finally:
        logger.removeFilter(raising)
    flags_file.write_text(json.dumps({"scale.canary.percent": 7}))
    wait_until(lambda: flags.get_number("scale.canary.percent", 0, {}) == 7, 3)
    flags.close()
    assert ended == ([Killed] if raised is Killed else [])


def test_file_flags_dropped_without_close_are_collected_and_their_thread_ends(flags_file: Path) -> None:
    others = refreshers()
    flags = FileFlags(flags_file, check_interval_s=0)
    assert flags.get_number("scale.canary.percent", 0, {}) == 100
    wait_until(lambda: len(refreshers(but=others)) == 1)
    looks = flags._looks
    wait_until(lambda: not looks.due)  # (its look began: it waits next, for a request or its instance's end)
    dropped = weakref.ref(flags)
    del flags
    gc.collect()
    assert dropped() is None
    wait_until(lambda: not refreshers(but=others), 2)


def test_file_flags_made_before_the_fork_and_dropped_in_the_child_end_the_childs_thread(flags_file: Path) -> None:
    """Made in gunicorn's master (``--preload``), dropped in a worker: its end wakes the worker's refresher,
    not the master's (the weak reference's callback rings one doorbell: the fork hook gives the child its own)."""
    held = [FileFlags(flags_file, check_interval_s=0)]

    def in_the_child() -> str:
        others = refreshers()
        flags = held.pop()
        assert flags.get_number("scale.canary.percent", 0, {}) == 100  # (starts the child's refresher)
        wait_until(lambda: len(refreshers(but=others)) == 1)
        looks = flags._looks
        wait_until(lambda: not looks.due)  # (its look began: it waits next, for a request or its instance's end)
        del flags
        gc.collect()
        wait_until(lambda: not refreshers(but=others), 2)
        return "ended"

    try:
        assert run_in_forked_child(in_the_child) == "ended"
    finally:
        held[0].close()


def test_closed_file_flags_say_so_in_the_status_of_a_server_still_reading_them(
    versions: Path, make_server: ServerFactory, flags_file: Path
) -> None:
    """Shared by two servers, and closed with one of them (``with FileFlags(...)``): the other's values
    are frozen, and its status must say why."""
    flags = FileFlags(flags_file, check_interval_s=0)
    server = make_server(versions, config=CANARY, flags=flags)
    with flags:
        make_server(versions, config=CANARY, flags=flags).close()
    flags_file.write_text(json.dumps({"scale.kill": True}))
    time.sleep(0.05)
    assert server.predict("scale", X, context={"user_id": "u"}).variant == "canary"  # (never looked at again)
    assert flags_status(server)["source_error"] == (
        f"closed: {flags_file} is no longer looked at (FileFlags.close()); the values last read answer"
    )


# -- a plan made while a look swaps the values --------------------------------------------------------------


def test_a_plan_is_made_from_the_values_it_is_kept_for_while_a_look_swaps_them(
    versions: Path, make_server: ServerFactory, flags_file: Path
) -> None:
    """A look lands between two of the plan's reads: the plan must not mix the two files (a canary from the
    old file at the new file's 100 %, which neither file says) and be kept for the old values."""
    flags_file.write_text(json.dumps({"scale.strategy": "canary", "scale.canary.percent": 0}))
    flags = FileFlags(flags_file, check_interval_s=0)
    server = make_server(versions, config=CANARY, flags=flags)
    read_string, swapped = flags.get_string, []

    def elsewhere(key: str) -> float:  # (a read on another thread: never the plan's)
        got: list[float] = []
        reader = threading.Thread(target=lambda: got.append(flags.get_number(key, -1, {})))
        reader.start()
        reader.join()
        return got[0]

    def get_string(key: str, default: str, context: Any) -> str:
        value = read_string(key, default, context)
        if key == "scale.strategy" and not swapped:  # (the look swaps the values in after this read)
            swapped.append(key)
            flags_file.write_text(json.dumps({"scale.strategy": "stable", "scale.canary.percent": 100}))
            wait_until(lambda: elsewhere("scale.canary.percent") == 100)
        return value

    flags.get_string = get_string  # type: ignore[method-assign]
    answers = [server.predict("scale", X, context={"user_id": f"u{i}"}) for i in range(20)]
    assert swapped
    assert [a.variant for a in answers] == ["stable"] * 20, [a.reason for a in answers]
    assert answers[0].reason == "the canary is at 0%"


# -- what a second review found -----------------------------------------------------------------------------


class RemoteFlags(InMemoryFlags):
    """A provider that calls a flag service: evaluated on the flag reader's worker threads."""

    name = "remote"
    blocking = True


def test_a_flag_worker_that_cannot_be_started_gives_the_stable_decision_and_a_later_one_serves(
    versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's thread limit ("can't start new thread"), which root on this machine cannot be put
    under (the limit is stood in for by ``Thread.start`` raising): the request gets the stable decision at
    once, and once threads can be had again the next request is evaluated by a worker."""
    flags = RemoteFlags({"scale.strategy": "canary", "scale.canary.percent": 100, "scale.canary.version": 2})
    server = make_server(versions, config=CANARY, flags=flags, flag_timeout_s=5)
    start = threading.Thread.start
    limited = {"on": True}

    def start_unless_limited(thread: threading.Thread) -> None:
        if limited["on"] and thread.name == "inprocserve-flags":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_limited)
    for _ in range(3):
        began = time.monotonic()
        answer = server.predict("scale", X, context={"user_id": "u"})
        assert (answer.version, answer.reason) == (1, "flag provider busy")
        assert time.monotonic() - began < 2  # (not its flag budget: nothing could ever take the job)
    limited["on"] = False
    answer = server.predict("scale", X, context={"user_id": "u"})
    assert (answer.version, answer.variant) == (2, "canary")
    assert flags_status(server)["workers"] == 1


def test_a_worker_forked_while_its_flags_file_was_found_empty_clears_the_flags(
    versions: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """The parent found the file emptied and waits to see it still empty; a worker forked then (its
    refresher's recheck did not come through the fork) looks at its first request and clears the flags a
    second after the first sighting, though no request asks for a look for an hour."""
    path = tmp_path / "flags.toml"
    path.write_text("[scale]\nkill = true\n")
    flags = FileFlags(path, check_interval_s=3600)
    server = make_server(versions, config=CANARY, flags=flags)
    path.write_text("")
    server.predict("scale", X, context={"user_id": "u"})  # (asks the look that finds it empty)
    wait_until(lambda: "being written" in (flags.last_error or ""))

    def in_the_child() -> str:
        server.predict("scale", X, context={"user_id": "u"})
        wait_until(lambda: flags.last_error is None, 5)
        return str(sorted({server.predict("scale", X, context={"user_id": f"u{i}"}).variant for i in range(40)}))

    assert run_in_forked_child(in_the_child, timeout_s=20) == "['canary', 'stable']"


def test_an_emptied_flags_file_counts_one_failed_look_while_it_waits(tmp_path: Path) -> None:
    path = tmp_path / "flags.toml"
    path.write_text("[scale]\nkill = true\n")
    flags = FileFlags(path, check_interval_s=0)
    path.write_text("")
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # (looks asked for again and again within the second it waits)
        flags.get_boolean("scale.kill", False, {})
        time.sleep(0.01)
    assert "being written" in (flags.last_error or "")
    assert flags.errors == 1
    flags.close()


class SlowFlags(InMemoryFlags):
    """A flag service that takes 0.3 s a flag."""

    name = "slow"
    blocking = True
    calls = 0

    def get_string(self, key: str, default: str, context: Any) -> str:
        SlowFlags.calls += 1
        time.sleep(0.3)
        return super().get_string(key, default, context)


def test_a_flag_decision_slower_than_the_hot_reload_interval_is_answered(
    versions: Path, make_server: ServerFactory
) -> None:
    """Every hot-reload poll published every model, a change of routing state whether or not anything
    changed, and a decision a change overlapped was made again until none did: a decision slower than the
    poll interval (well within flag_timeout_s) was made again for ever, and the request never answered."""
    flags = SlowFlags({"scale.strategy": "canary", "scale.canary.percent": 50, "scale.canary.version": 2})
    server = make_server(versions, config=CANARY, flags=flags, flag_timeout_s=1.0, poll_interval_s=0.1)
    SlowFlags.calls = 0
    answers: list[inprocserve.Prediction] = []
    asking = threading.Thread(
        target=lambda: answers.append(server.predict("scale", X, context={"user_id": "u"})), daemon=True
    )
    asking.start()
    asking.join(10)
    assert answers, f"not answered in 10 s ({SlowFlags.calls} flag reads)"
    assert SlowFlags.calls == 1


@pytest.mark.parametrize("failure", ["type_mismatch", "general"])
def test_a_providers_megabytes_of_error_text_are_cut_short(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    from openfeature import api
    from openfeature.exception import TypeMismatchError
    from openfeature.provider import AbstractProvider, Metadata

    text = "e" * 5_000_000

    class Failing(AbstractProvider):
        def get_metadata(self) -> Metadata:
            return Metadata(name="failing")

        def _fail(self, *args: Any, **kwargs: Any) -> Any:
            raise TypeMismatchError(text) if failure == "type_mismatch" else RuntimeError(text)

        resolve_boolean_details = resolve_string_details = resolve_integer_details = _fail
        resolve_float_details = resolve_object_details = _fail

    api.set_provider(Failing(), domain=f"inprocserve-megabytes-{failure}")
    server = make_server(versions, config=CANARY, flags=OpenFeatureFlags(domain=f"inprocserve-megabytes-{failure}"))
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        answer = server.predict("scale", X, context={"user_id": "u"})
    assert answer.variant == "stable"
    assert len(answer.reason or "") < 2000  # was the whole 5 MB, in every request's answer
    assert len(json.dumps(server.status(), default=str)) < 100_000  # and in status()
    ours = [record.getMessage() for record in caplog.records if record.name.startswith("inprocserve")]
    assert ours and all(len(message) < 3000 for message in ours)  # and in the log
