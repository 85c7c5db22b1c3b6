"""A rollout's notes of which variant served each request (for outcomes reported by request id): exact for
every request of the rollout among the process's others, kept an hour, bounded with the oldest going first,
credited once, compact, and never fooled by an id of another form."""

from __future__ import annotations

import itertools
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import inprocserve
import inprocserve._assignments
from inprocserve._assignments import _COUNTED, RequestNumber, _Assignments
from inprocserve._prediction import RequestIds
from inprocserve._rollout import _ASSIGNMENT_TTL_S, _ASSIGNMENTS_KEPT
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, rollout


def test_a_rollouts_notes_among_the_processs_other_requests_all_credit_exactly() -> None:
    """The request numbers are the whole process's (every model's requests take one): a rollout notes a
    scattered share of them, numbers that are multiples of its bound apart among them. Arrays indexed by the
    number modulo the bound lost such notes (an earlier attempt, reverted); every one must stay, and the
    numbers of other models' requests credit nothing here."""
    ids, draw = RequestIds(), random.Random(7)
    served = _Assignments(1_000, 3600.0)
    mine: list[tuple[str, str, int]] = []
    theirs: list[str] = []
    while len(mine) < 1_000:
        request_id = ids.next()
        if draw.random() < 0.05:  # (one request in twenty: ~20 000 numbers for the bound's 1 000 notes)
            mine.append((request_id, draw.choice(["control", "treatment", ""]), draw.randrange(1, 2**40)))
            served.note(*mine[-1])
        else:
            theirs.append(request_id)
    assert len(served) == 1_000
    assert all(served.take(request_id) == (variant, serial) for request_id, variant, serial in mine)
    assert all(served.take(request_id) is None for request_id in theirs)
    assert all(served.take(request_id) is _COUNTED for request_id, _, _ in mine)  # and credited once


def test_every_request_of_a_rollout_served_among_another_models_is_credited_once(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the server, a bound of 64 (the 100 000's behaviour, in fewer requests): 60 requests of an A/B
    test, each among a few of another model's, are each credited to the arm that served them, once."""
    monkeypatch.setattr(inprocserve._rollout, "_ASSIGNMENTS_KEPT", 64)
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    save_model(build_scale_model(5.0), repository, "other", 1)
    arms = {"control": inprocserve.VariantConfig(version=1), "treatment": inprocserve.VariantConfig(version=2)}
    server = make_server(
        repository, models={"scale": rollout(strategy="ab", variants=arms), "other": inprocserve.ModelConfig()}
    )
    x, draw = np.ones((1, 4), np.float32), random.Random(3)
    served, others = [], []
    for user in range(60):
        others += [server.predict("other", x).request_id for _ in range(draw.randrange(1, 6))]
        served.append(server.predict("scale", x, context={"user_id": f"user-{user}"}))
    assert {result.variant for result in served} == {"control", "treatment"}
    assert [server.record_outcome(result.request_id, 1.0) for result in served] == [r.variant for r in served]
    assert [server.record_outcome(result.request_id, 1.0) for result in served] == [None] * 60  # once
    assert {server.record_outcome(request_id, 1.0) for request_id in others} == {None}  # (served by default)
    arm_stats = server.status()["models"]["scale"]["rollout"]["variants"]
    assert {arm: arm_stats[arm]["outcomes"] for arm in arms} == {
        arm: sum(result.variant == arm for result in served) for arm in arms
    }


def test_an_outcome_without_model_parses_its_id_once_for_every_model(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``model=``, an outcome by request id is looked for in every rolled-out model's notes: the id's
    number was parsed once per model (~2 us of an outcome's ~12 with ten models). It is parsed once per
    outcome, and still credits the model that served it, once."""
    names = [f"m{index}" for index in range(5)]
    for name in names:
        save_model(build_scale_model(2.0), repository, name, 1)
    server = make_server(repository, config=rollout(strategy="stable", stable=1))
    x = np.ones((1, 4), np.float32)
    served = {name: server.predict(name, x).request_id for name in names}
    parses: list[str] = []
    real = inprocserve._assignments._number_in

    def counted(request_id: str, prefix: str | None) -> int:
        parses.append(request_id)
        return real(request_id, prefix)

    monkeypatch.setattr(inprocserve._assignments, "_number_in", counted)
    last = served[names[-1]]
    assert server.record_outcome(last, 1.0) == "stable"  # (found in the last model asked)
    assert server.record_outcome(last, 1.0) is None  # counted once: every model is asked
    unknown = last.rsplit("-", 1)[0] + "-99999999"
    assert server.record_outcome(unknown, 1.0) is None
    assert parses == [last, last, unknown]
    outcomes = {name: server.status()["models"][name]["rollout"]["variants"]["stable"]["outcomes"] for name in names}
    assert outcomes == {**dict.fromkeys(names, 0), names[-1]: 1}


def test_a_request_number_reads_as_the_id_under_each_prefix() -> None:
    """A RequestNumber gives each notes what its id gives, under their prefix: parsed again for another one
    (a forked child's notes, a made-up id), never taken for the number under the last prefix asked."""
    ids, served, seventh = _seventh_noted()
    child = _Assignments(100, 60.0)
    child.note("q-7", "treatment", 5)
    parsed = RequestNumber(seventh)
    assert (child.take(parsed), served.take(parsed), served.take(parsed)) == (None, ("canary", 3), _COUNTED)
    for request_id in ("q-7", ids.prefix + "07", "made-up"):
        assert RequestNumber(request_id).under(ids.prefix) == -1
    parsed = RequestNumber("q-7")
    assert (parsed.under(ids.prefix), parsed.under("q-"), parsed.under(None)) == (-1, 7, -1)


def _seventh_noted() -> tuple[RequestIds, _Assignments, str]:
    """A server's request ids, notes, and the seventh id, noted for variant "canary" of serial 3."""
    ids = RequestIds()
    served = _Assignments(100, 60.0)
    for _ in range(6):
        ids.next()
    seventh = ids.next()
    served.note(seventh, "canary", 3)
    return ids, served, seventh


@pytest.mark.parametrize(
    "reported",
    ["07", "007", "+7", "-7", " 7", "7 ", "7\n", "0_7", "\u0667", "7.0", "", "70", "7" + "0" * 18, "7" * 5000],
)
def test_an_id_that_is_not_the_number_as_written_credits_nothing(reported: str) -> None:
    """``p-07`` is not request 7 of ``p-`` (``int`` reads it, and a sign, spaces, underscores and other
    scripts' digits, as 7): an earlier attempt credited request 7's variant to such ids."""
    ids, served, seventh = _seventh_noted()
    assert served.take(ids.prefix + reported) is None
    assert served.take(seventh) == ("canary", 3)


@pytest.mark.parametrize("reported", [7, 7.0, b"p-7", None, ("p-7",)], ids=repr)
def test_a_request_id_that_is_not_text_credits_nothing_and_raises_nothing(reported: object) -> None:
    """``record_outcome``'s request id is typed ``str``, but a caller's code may pass the number it parsed or
    the header's bytes: the ordered dict the columns replaced found no such id and credited nothing; the
    columns' number parsing raised AttributeError or TypeError from the outcome's caller (``removeprefix``)."""
    _, served, seventh = _seventh_noted()
    served.note("made-up", "canary", 4)
    assert served.take(reported) is None  # type: ignore[arg-type]
    assert served.take(seventh) == ("canary", 3)


def test_an_id_of_another_prefix_or_form_is_noted_apart_and_aliases_no_request() -> None:
    """Ids a server never hands out (another server's, one made up) are remembered as they are, each for its
    own id: ``q-7`` is not ``p-7``, and ``p-07`` noted is not ``p-7``."""
    served = _Assignments(100, 60.0)
    served.note("p-7", "canary", 1)
    served.note("q-7", "stable", 2)
    served.note("p-07", "treatment", 3)
    served.note("request-of-version-2", "control", 4)
    past_64_bits, past_int = "p-" + "9" * 19, "p-" + "9" * 5000  # (int() refuses over 4300 digits)
    served.note(past_64_bits, "canary", 5)
    served.note(past_int, "canary", 6)
    made_up = ("q-7", "p-07", "request-of-version-2", past_64_bits, past_int, "p-7")
    assert len(served) == 6
    assert [served.take(request_id) for request_id in made_up] == [
        ("stable", 2),
        ("treatment", 3),
        ("control", 4),
        ("canary", 5),
        ("canary", 6),
        ("canary", 1),
    ]
    assert {served.take(request_id) for request_id in made_up} == {_COUNTED}


def test_notes_taken_out_of_order_by_racing_threads_are_all_found() -> None:
    """A request takes its number before the router's lock: two threads can note 11 before 10."""
    served = _Assignments(100, 60.0)
    for number in (12, 10, 14, 11, 13, 20, 16, 15, 19):
        served.note(f"p-{number}", f"arm-{number}", number)
    assert len(served) == 9
    assert [served.take(f"p-{number}") for number in range(10, 21)] == [
        (f"arm-{n}", n) if n not in (17, 18) else None for n in range(10, 21)
    ]


def test_a_note_expires_its_ttl_after_it_was_noted() -> None:
    now = [0.0]
    served = _Assignments(100, 60.0, clock=lambda: now[0])
    for number in range(1, 4):  # noted at 0, 10 and 20 s
        served.note(f"p-{number}", "canary", number)
        now[0] += 10.0
    now[0] = 60.0
    assert served.take("p-1") is None  # (60 s old: expired)
    now[0] = 69.9
    assert served.take("p-2") == ("canary", 2)
    now[0] = 80.0
    assert served.take("p-3") is None
    served.note("p-4", "canary", 4)  # (each note drops up to two of the expired ones)
    assert len(served) == 2
    served.note("p-5", "canary", 5)
    assert len(served) == 2 and served.take("p-4") == ("canary", 4)


def test_at_the_bound_the_oldest_note_goes_first_whichever_way_it_was_kept() -> None:
    """Ids of the server's prefix and others (kept apart) count against one bound, the oldest going first."""
    served = _Assignments(3, 60.0, clock=itertools.count().__next__)  # (each note a tick later)
    for request_id in ("p-1", "made-up-a", "p-2", "made-up-b", "p-3", "p-4"):
        served.note(request_id, request_id, 0)
    assert len(served) == 3
    assert [served.take(request_id) for request_id in ("p-1", "made-up-a", "p-2")] == [None] * 3
    assert [served.take(request_id) for request_id in ("made-up-b", "p-3", "p-4")] == [
        (request_id, 0) for request_id in ("made-up-b", "p-3", "p-4")
    ]


def test_a_request_noted_again_is_kept_from_then_and_counted_once() -> None:
    now = [0.0]
    served = _Assignments(3, 60.0, clock=lambda: now[0])
    served.note("p-1", "canary", 1)
    served.note("p-2", _COUNTED)  # (a request that counts nowhere: known, credited nothing)
    assert served.take("p-2") is _COUNTED
    now[0] = 50.0
    served.note("p-3", "canary", 3)
    now[0] = 55.0
    served.note("p-1", "stable", 9)  # noted again: it expires 60 s from now, after p-3
    served.note("p-4", "canary", 4)  # past the bound: p-2 goes, the oldest note
    served.note("p-5", "canary", 5)  # then p-3, noted before p-1's second note
    now[0] = 65.0  # (p-1's first note would have expired)
    assert len(served) == 3 and served.take("p-3") is None
    assert served.take("p-1") == ("stable", 9) and served.take("p-1") is _COUNTED
    now[0] = 115.0
    assert served.take("p-1") is None and served.take("p-5") is None


def test_a_request_noted_again_for_a_serial_past_the_columns_is_one_note_of_the_last_variant() -> None:
    """A note the columns cannot hold (a serial past their bits) of an id they hold already replaces its row,
    as a note again does: the row stayed beside the new note in ``_others``, answered for the id with the
    first variant and serial, and counted twice towards the bound."""
    served = _Assignments(100, 60.0)
    served.note("p-1", "canary", 3)
    served.note("p-2", "stable", 4)
    served.note("p-1", "treatment", 2**60)
    assert len(served) == 2
    assert served.take("p-1") == ("treatment", 2**60)
    assert served.take("p-1") is _COUNTED
    assert served.take("p-2") == ("stable", 4)


def test_at_the_bound_a_request_noted_after_every_row_kept_stays_and_the_oldest_goes() -> None:
    """An id whose number is below every row kept (noted again after its first note was dropped, or noted
    late) is the newest note: at the bound the oldest goes, as in the ordered dict the columns replaced. Put
    at the head of the rows, it was the first dropped, and its outcome credited nothing."""
    served = _Assignments(3, 60.0)
    for number in range(1, 5):  # (p-1 is dropped at the bound)
        served.note(f"p-{number}", "canary", number)
    served.note("p-1", "treatment", 9)  # (p-2 goes now: the oldest)
    assert len(served) == 3
    assert [served.take(f"p-{number}") for number in (1, 2, 3, 4)] == [
        ("treatment", 9),
        None,
        ("canary", 3),
        ("canary", 4),
    ]


def test_the_last_request_noted_again_and_again_is_one_note() -> None:
    served = _Assignments(10, 60.0)
    for variant in ("canary", "stable", "control"):  # (p-2 is the highest number each time)
        served.note("p-1", "canary", 1)
        served.note("p-2", variant, 2)
    assert len(served) == 2
    assert served.take("p-2") == ("control", 2) and served.take("p-2") is _COUNTED


def test_a_forked_childs_notes_take_the_columns_and_its_parents_stay_credited() -> None:
    """After a fork the child's ids have a prefix of their own: the parent's notes (those of requests served
    before the fork) are kept apart and still credited once, the child's are numbered by its prefix."""
    served = _Assignments(100, 60.0)
    for number in range(1, 6):
        served.note(f"parent-{number}", "canary", number)
    assert served.take("parent-1") == ("canary", 1)
    served.after_fork_in_child()
    for number in range(1, 6):
        served.note(f"child-{number}", "stable", number)
    assert len(served) == 10
    assert [served.take(f"parent-{number}") for number in range(1, 6)] == [_COUNTED] + [
        ("canary", number) for number in range(2, 6)
    ]
    assert [served.take(f"child-{number}") for number in range(1, 6)] == [("stable", n) for n in range(1, 6)]


def test_notes_a_fork_caught_half_written_are_dropped_not_misread() -> None:
    """A thread of the parent noting a request at the instant of the fork leaves the columns of unequal
    lengths in the child: their rows no longer line up, and they credit nothing rather than another
    request's variant."""
    served = _Assignments(100, 60.0)
    for number in range(1, 6):
        served.note(f"p-{number}", f"arm-{number}", number)
    served._numbers.append(6)  # (the number written, the other columns not yet)
    served.after_fork_in_child()
    assert len(served) == 0 and {served.take(f"p-{number}") for number in range(1, 7)} == {None}


def test_as_many_notes_as_are_kept_take_a_few_bytes_each() -> None:
    """At the bound a rollout reaches within the hour at 28 requests a second, an ordered dict of id strings
    and tuples held about 247 bytes a note, 24.7 MB in every worker process for every rolled-out model."""
    ids = RequestIds()
    served = _Assignments(_ASSIGNMENTS_KEPT, _ASSIGNMENT_TTL_S)
    request_ids = [ids.next() for _ in range(_ASSIGNMENTS_KEPT * 3 // 2)]  # (the caller's, not the notes')
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for request_id in request_ids:  # (past the bound: the oldest dropped, and their room given back)
            served.note(request_id, "canary", 12_345_678)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(served) == _ASSIGNMENTS_KEPT
    assert held / _ASSIGNMENTS_KEPT < 30, f"{held / _ASSIGNMENTS_KEPT:.0f} bytes a note"
    dropped = len(request_ids) - _ASSIGNMENTS_KEPT
    assert served.take(request_ids[dropped]) == ("canary", 12_345_678) and served.take(request_ids[dropped - 1]) is None
