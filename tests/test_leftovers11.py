"""Leftovers of the eleventh review: shadow comparisons of integers against floats, decided by the versions'
output types; and apredict's loop batcher answering merged tasks when the loop's thread is interrupted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inprocserve import ShadowComparison
from inprocserve.testing import save_model

from .conftest import ServerFactory, wait_until
from .test_leftovers10a_shadow import build_regressor
from .test_shadow_hardening import shadowed, stats


@pytest.mark.parametrize("stable_integers", [False, True])
def test_the_same_two_regressors_are_compared_the_same_way_whatever_the_sampled_values(
    repository: Path, make_server: ServerFactory, *, stable_integers: bool
) -> None:
    # A float regressor (1.5 * x) shadowed by a version answering it truncated to int64, or the other way round.
    # A request whose prices are all whole numbers (x = 2, 4: 3.0, 6.0) was compared as labels (agreement 1.0,
    # no difference); the next one (x = 1, 2, 3: 1.5, 3.0, 4.5) by its difference (0.5, no agreement): the
    # status flipped between the two, and a guard on either had nothing to measure on some requests. Both
    # measures are now kept on every request, as the two versions' output types (int64 against float) say.
    save_model(build_regressor(as_integers=stable_integers), repository, "price", 1)
    save_model(build_regressor(as_integers=not stable_integers), repository, "price", 2)
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    server.predict("price", np.array([[2.0], [4.0]], np.float32))
    wait_until(lambda: len(seen) == 1)
    server.predict("price", np.array([[1.0], [2.0], [3.0]], np.float32))
    wait_until(lambda: len(seen) == 2)
    assert [(c.max_abs_diff, c.label_agreement, c.mismatch) for c in seen] == [
        (0.0, 1.0, None),
        (0.5, pytest.approx(1 / 3), None),
    ]
    figures = stats(server, "price")
    assert (figures["max_abs_diff"], figures["label_agreement"]) == (0.5, pytest.approx(3 / 5))
