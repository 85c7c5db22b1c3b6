"""Shadow comparisons of outputs whose element type differs between versions, and a shadow thread that
outlives what the application's logging raises."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import ShadowComparison
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, wait_until
from .test_shadow_hardening import build_columns_but, shadowed, stats

ROWS = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)


def build_label_model(*, as_float: bool, bias: list[float] | None = None) -> Any:
    """A classifier answering only its label: ``label``, the argmax of ``x + bias`` over ``[batch, 4]``, as
    int64 ``[batch]`` (``as_float``: cast to float32, as a re-exported model may answer it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Add", ["x", "bias"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["ids" if as_float else "label"], axis=1, keepdims=0),
    ]
    if as_float:
        nodes.append(helper.make_node("Cast", ["ids"], ["label"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "labels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("label", TensorProto.FLOAT if as_float else TensorProto.INT64, ["batch"])],
        [numpy_helper.from_array(np.array(bias or [0.0] * 4, np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(("stable_float", "shadow_float"), [(True, False), (False, True)])
def test_float_and_integer_labels_are_compared_as_labels_whichever_version_answers_which(
    repository: Path, make_server: ServerFactory, *, stable_float: bool, shadow_float: bool
) -> None:
    # One version answers its labels as float32 (1.0), the other as int64 (1); the shadow's last row is another
    # class. Their label agreement is kept either way round: 3 of 4 rows agree. With the float32 version
    # serving, they were compared as numbers: a max_abs_diff of 3.0, no label agreement, and a guard on label
    # agreement had nothing to measure. (Integers against floats also keep their difference, 3.0 here: their
    # types cannot tell labels from a regressor answered truncated, see test_leftovers11.)
    save_model(build_label_model(as_float=stable_float), repository, "clf", 1)
    save_model(build_label_model(as_float=shadow_float, bias=[0, 0, 0, -2]), repository, "clf", 2)
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    answer = server.predict("clf", ROWS)["label"]
    assert answer.dtype == (np.float32 if stable_float else np.int64) and answer.tolist() == [0, 1, 2, 3]
    wait_until(lambda: len(seen) == 1)
    assert (seen[0].max_abs_diff, seen[0].label_agreement, seen[0].mismatch) == (3.0, 0.75, None)
    assert stats(server, "clf")["label_agreement"] == 0.75


def test_a_shadow_answering_another_dtype_is_compared_by_value_and_never_promoted_unforced(
    repository: Path, make_server: ServerFactory
) -> None:
    # The shadow's labels are the same classes as float32: its comparisons agree (they are the same labels, and
    # a mismatch is an output that could not be compared at all). Callers never get float32 by a promotion:
    # it is a change of the version's signature, which promote() refuses before comparing any answer, and
    # switch() too unless forced.
    save_model(build_label_model(as_float=False), repository, "clf", 1)
    save_model(build_label_model(as_float=True), repository, "clf", 2)
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    server.predict("clf", ROWS)
    wait_until(lambda: len(seen) == 1)
    assert (seen[0].max_abs_diff, seen[0].label_agreement, seen[0].mismatch) == (0.0, 1.0, None)
    with pytest.raises(inprocserve.PromotionRefusedError, match=r"type tensor\(int64\) became tensor\(float\)"):
        server.promote("clf", 2, min_label_agreement=0.99)
    with pytest.raises(inprocserve.PromotionRefusedError, match="pass force=True"):
        server.switch("clf", 2)
    assert server.predict("clf", ROWS)["label"].dtype == np.int64


# -- the application's logging ------------------------------------------------------------------------------


class RaisingFilter(logging.Filter):
    """A buggy logging filter: raises on every record it is asked about (noting their messages)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.ended: list[type[BaseException]] = []  # threads ended by what escaped them

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        raise RuntimeError("a buggy logging filter")


@pytest.fixture
def raising_filter(monkeypatch: pytest.MonkeyPatch) -> Iterator[RaisingFilter]:
    """A :class:`RaisingFilter` on ``inprocserve._shadow``'s logger (threads ended meanwhile are noted in its
    ``ended``)."""
    raising = RaisingFilter()
    monkeypatch.setattr(threading, "excepthook", lambda hooked: raising.ended.append(hooked.exc_type))
    logger = logging.getLogger("inprocserve._shadow")
    logger.addFilter(raising)
    try:
        yield raising
    finally:
        logger.removeFilter(raising)


def test_a_logging_filter_that_raises_does_not_end_the_shadow_thread(
    repository: Path, make_server: ServerFactory, raising_filter: RaisingFilter
) -> None:
    # The shadow answers in another form, which the shadow thread warns of: the filter's exception left the
    # comparison unrecorded, then the thread's own "failed unexpectedly" log raised again and ended it; every
    # later copy waited in a queue nobody read, silently.
    save_model(build_columns_but(0), repository, "cut", 1)
    save_model(build_columns_but(0, output="z"), repository, "cut", 2)  # its output renamed
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    for count in range(1, 4):
        assert server.predict("cut", rows).version == 1
        wait_until(lambda count=count: len(seen) == count, 5)
    assert [c.mismatch for c in seen] == ["output 'y' is missing"] * 3
    assert stats(server, "cut")["mismatched"] == 3
    assert any("answers in another form" in message for message in raising_filter.messages)
    assert raising_filter.ended == []


class Killed(BaseException):
    """Ends the thread it is raised in (as greenlet.kill() ends a monkey-patched thread)."""


def renamed_output_shadowed(
    repository: Path, make_server: ServerFactory
) -> tuple[inprocserve.Server, list[ShadowComparison], np.ndarray]:
    """Model ``cut``: version 2, whose output is renamed (a mismatch, warned of once), shadows version 1; the
    comparisons seen, and rows to send."""
    save_model(build_columns_but(0), repository, "cut", 1)
    save_model(build_columns_but(0, output="z"), repository, "cut", 2)  # its output renamed: warned of once
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    return server, seen, np.arange(8, dtype=np.float32).reshape(2, 4)


def test_a_shadow_thread_ended_by_what_a_logging_filter_raises_is_replaced(
    repository: Path, make_server: ServerFactory, raising_filter: RaisingFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the filter raises ends the shadow thread, whose first comparison is lost with it; later copies are
    # still run, by a thread the next copy starts. They waited in a queue nobody read.
    def kill(record: logging.LogRecord) -> bool:
        raising_filter.messages.append(record.getMessage())
        raise Killed

    monkeypatch.setattr(raising_filter, "filter", kill)
    server, seen, rows = renamed_output_shadowed(repository, make_server)
    server.predict("cut", rows)
    wait_until(lambda: raising_filter.ended == [Killed])
    for count in range(1, 3):
        assert server.predict("cut", rows).version == 1
        wait_until(lambda count=count: len(seen) == count, 5)
    assert stats(server, "cut")["mismatched"] == 3


def test_a_logging_filter_that_raises_never_fails_the_caller_of_a_request_not_shadowed(
    repository: Path, make_server: ServerFactory, raising_filter: RaisingFilter
) -> None:
    # A request too large to copy cheaply is not shadowed, which is said once, on the caller's thread: the
    # filter's exception reached the caller, whose answer was ready.
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository, config=shadowed(), shadow_budget=1.0, shadow_queue_bytes=256)
    for _ in range(2):
        assert server.predict("scale", np.ones((8, 4), np.float32)).version == 1
    assert stats(server, "scale")["dropped_too_large"] == 2
    assert any("never shadowed" in message for message in raising_filter.messages)


def test_copies_queued_when_the_shadow_thread_ends_are_run_without_waiting_for_another_copy(
    repository: Path, make_server: ServerFactory, raising_filter: RaisingFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two copies are queued while the shadow thread is in its first run, which what the filter raises ends: they
    # waited, their budget reserved, until a later request's copy started another thread (never, at the end of
    # a burst of traffic).
    release = threading.Event()

    def kill(record: logging.LogRecord) -> bool:
        raising_filter.messages.append(record.getMessage())
        if threading.current_thread().name == "inprocserve-shadow" and len(raising_filter.messages) == 1:
            release.wait(5)  # (held in the first run's warning while the next copies are queued)
        raise Killed

    monkeypatch.setattr(raising_filter, "filter", kill)
    server, seen, rows = renamed_output_shadowed(repository, make_server)
    server.predict("cut", rows)
    wait_until(lambda: len(raising_filter.messages) == 1)
    for _ in range(2):
        assert server.predict("cut", rows).version == 1
    release.set()
    wait_until(lambda: raising_filter.ended == [Killed])
    wait_until(lambda: len(seen) == 2, 5)  # no request comes after them
    assert stats(server, "cut")["mismatched"] == 3
