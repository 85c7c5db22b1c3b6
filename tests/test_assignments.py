"""Which variant served each recent request of a rollout (for outcomes reported by request id): kept an
hour, credited once, bounded, compact, and safe against any id a client reports."""

from __future__ import annotations

import tracemalloc

import pytest

from inprocserve._assignments import COUNTED, Assignments
from inprocserve._prediction import RequestIds
from inprocserve._rollout import _ASSIGNMENT_TTL_S, _ASSIGNMENTS_KEPT


def test_served_variants_are_kept_an_hour_and_a_bounded_number_and_credited_once() -> None:
    """Outcomes by request id are credited to the variant that served it for ``ttl_s`` after it was served,
    once, and a note is kept until ``size`` later request numbers were handed out (the oldest go first)."""
    now = [0.0]
    served = Assignments(3, 60.0, clock=lambda: now[0])
    for number in range(4):
        served.note(f"p-{number}", "canary" if number % 2 else "stable")
        now[0] += 10.0
    assert [served.take(f"p-{number}") for number in range(3)] == [None, ("canary", 0), ("stable", 0)]
    assert served.take("p-1") is COUNTED  # credited already: known, and credited no more
    assert len(served) == 3
    now[0] = 71.0  # p-1 was served at 10 s: 61 s ago
    assert served.take("p-1") is None and served.take("p-3") == ("canary", 0)
    served.note("p-1", "stable", 7)  # noted again: kept from now
    now[0] = 95.0  # p-2 (20 s) and p-3 (30 s) have expired; the note of p-1 at 71 s has not
    assert len(served) == 1 and served.take("p-1") == ("stable", 7)
    served.note("p-4", "canary")  # three numbers after p-1: takes its place
    assert served.take("p-1") is None and served.take("p-4") == ("canary", 0)
    for number in range(5, 1000):  # many notes, none expired: the bound holds
        served.note(f"p-{number}", "stable")
    assert len(served) == 3 and served.take("p-999") == ("stable", 0) and served.take("p-996") is None


def test_a_rollout_taking_a_share_of_the_processs_requests_keeps_all_of_them_within_the_bound() -> None:
    """The request numbers are the process's (every model's requests take one): a rolled-out model that
    gets one request in seven still has every note of the last ``size`` numbers, its arrays grown to fit."""
    ids = RequestIds()
    served = Assignments(20_000, 3600.0)
    mine = []
    for number in range(1, 14_001):
        request_id = ids.next()
        if number % 7 == 0:
            served.note(request_id, f"arm-{number % 3}", number)
            mine.append((request_id, number))
    assert len(served) == 2_000
    assert all(served.take(request_id) == (f"arm-{number % 3}", number) for request_id, number in mine)


def test_a_last_growth_that_is_not_a_doubling_keeps_the_newer_of_two_notes_sharing_a_slot() -> None:
    served = Assignments(1_500, 3600.0)  # (1,024 slots first, then 1,500)
    for number in (100, 1_600):  # two slots of 1,024, one of 1,500
        served.note(f"p-{number}", "stable", number)
    served.note("p-1124", "canary")  # the slot of p-100 among 1,024: grown to 1,500
    assert served.take("p-100") is None  # 1,500 numbers older than p-1600
    assert served.take("p-1600") == ("stable", 1_600) and served.take("p-1124") == ("canary", 0)


def test_a_note_that_comes_after_a_newer_one_for_its_slot_leaves_the_newer_one() -> None:
    served = Assignments(3, 60.0)
    served.note("p-5", "canary")
    served.note("p-2", "stable")  # (its slot's p-5 is newer)
    assert served.take("p-2") is None and served.take("p-5") == ("canary", 0)


def test_the_ids_of_another_process_start_the_notes_afresh() -> None:
    """A worker forked from the process that made the router hands out ids of its own prefix: the notes
    before are its parent's, of no use there."""
    served = Assignments(100, 60.0)
    served.note("parent-1", "canary")
    served.note("child-2", "stable")
    assert served.take("parent-1") is None and served.take("child-2") == ("stable", 0)


@pytest.mark.parametrize(
    "request_id",
    ["", "-", "p-", "p1", "p-1.0", "p- 1", "p-\u0661", "p-" + "9" * 19, "p-" + "9" * 5000, "p-1\n"],
)
def test_a_request_id_of_any_other_form_is_never_noted_nor_found(request_id: str) -> None:
    served = Assignments(100, 60.0)
    served.note("p-1", "canary")
    served.note(request_id, "stable")
    assert served.take(request_id) is None
    assert served.take("p-1") == ("canary", 0)


def test_as_many_notes_as_are_kept_take_a_few_bytes_each() -> None:
    """At the bound a rollout reaches within the hour at 28 requests a second, the notes held 24.6 MB in an
    ordered dict of strings and tuples (about 246 bytes a note), in every worker process, for every
    rolled-out model."""
    ids = RequestIds()
    served = Assignments(_ASSIGNMENTS_KEPT, _ASSIGNMENT_TTL_S)
    request_ids = [ids.next() for _ in range(_ASSIGNMENTS_KEPT)]  # (the ids are the caller's, not the notes')
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for request_id in request_ids:
            served.note(request_id, "canary", 12_345_678)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(served) == _ASSIGNMENTS_KEPT
    assert held / _ASSIGNMENTS_KEPT < 40, f"{held / _ASSIGNMENTS_KEPT:.0f} bytes a note"
