"""The one helper every "did you mean" goes through: difflib's answer, at a cost the name sent cannot raise."""

from __future__ import annotations

import difflib
import tracemalloc

import pytest

from inprocserve._close_match import DEFAULT_CUTOFF, TYPO_CUTOFF, close_match


def test_a_typo_names_the_key_it_meant_and_each_caller_picks_how_far_to_guess() -> None:
    assert close_match("stabel", ["stable", "canary"], cutoff=TYPO_CUTOFF) == "stable"
    known = ["DEFAULT_TIMEOUT_S", "REPOSITORY", "ADMIN_TOKEN"]
    assert close_match("TIMEOUT_S", known) == "DEFAULT_TIMEOUT_S"  # difflib's default cutoff reaches it
    assert close_match("TIMEOUT_S", known, cutoff=TYPO_CUTOFF) is None  # a typo's cutoff does not
    assert close_match("anything", []) is None


@pytest.mark.parametrize("cutoff", [DEFAULT_CUTOFF, 0.75, TYPO_CUTOFF])
@pytest.mark.parametrize("length", range(1, 16))
def test_names_not_compared_for_their_length_are_those_difflib_finds_no_match_for(cutoff: float, length: int) -> None:
    """The longest names still compared can match (``abcdefg`` is 0.6 of ``abc``): the bound is exact."""
    known = ["abc", "ab"]
    name = "abcdefghijklmnop"[:length]
    expected = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    assert close_match(name, known, cutoff=cutoff) == (expected[0] if expected else None)


def test_a_megabyte_name_is_not_compared() -> None:
    """difflib indexes every character of the name (a list per letter, an int per position): a client's
    megabyte name held tens of megabytes, for an answer that no ratio of lengths allowed."""
    name = "fraud" * 200_000
    tracemalloc.start()
    try:
        assert close_match(name, ["fraud", "scale"]) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak} bytes held while comparing"
