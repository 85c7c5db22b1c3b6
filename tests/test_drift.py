"""Drift: PSI and KS against a reference from a file or captured from the first requests."""

from __future__ import annotations

import logging
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import DriftConfig, ModelConfig
from inprocserve._drift import _bin_edges, _Feature, drain, ks_statistic, psi
from inprocserve.testing import build_add_model, build_scale_model, save_model

from .conftest import ServerFactory


def test_psi_and_ks_on_plain_samples() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == pytest.approx(0.0)
    assert psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])) > 0.5
    rng = np.random.default_rng(0)
    reference = np.sort(rng.normal(0, 1, 5000))
    assert ks_statistic(reference, rng.normal(0, 1, 2000)) < 0.05
    assert ks_statistic(reference, rng.normal(1, 1, 2000)) > 0.3


@pytest.fixture
def drift_server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    rng = np.random.default_rng(1)
    np.savez(repository / "scale" / "reference.npz", x=rng.normal(0, 1, (5000, 4)).astype(np.float32))
    config = ModelConfig(drift=DriftConfig(reference_file="reference.npz", window=500))
    return make_server(repository, config=config)


def feed(server: inprocserve.Server, mean: float, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(rows // 50):
        server.predict("scale", rng.normal(mean, 1, (50, 4)).astype(np.float32))


def drift_status(server: inprocserve.Server) -> dict:
    return server.status()["models"]["scale"]["versions"]["1"]["drift"]


def test_same_distribution_does_not_drift(drift_server: inprocserve.Server) -> None:
    feed(drift_server, 0.0, 1000, seed=2)
    assert drain()
    status = drift_status(drift_server)
    assert status["windows"] == 2 and status["drifting"] is False
    assert status["max_psi"] < 0.1
    assert set(status["features"]) == {"x[0]", "x[1]", "x[2]", "x[3]"}  # outputs are not in this reference
    assert status["features"]["x[0]"]["ks"] < 0.1


def test_a_shifted_distribution_drifts_and_is_logged_when_it_starts(
    drift_server: inprocserve.Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        feed(drift_server, 1.5, 500, seed=3)
        assert drain()
    status = drift_status(drift_server)
    assert status["drifting"] is True and status["max_psi"] > 0.2
    assert status["features"]["x[2]"]["ks"] > 0.3
    assert len([r for r in caplog.records if "is drifting" in r.getMessage()]) == 1


def test_a_version_that_keeps_drifting_is_not_logged_for_every_window(
    drift_server: inprocserve.Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under load a window of 500 rows fills many times a second: a warning per window flooded the logs. It is
    # said when the version starts drifting, repeated (with the windows since) after DRIFT_REPEAT_S, and the
    # end of the drift is said once.
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        feed(drift_server, 1.5, 2500, seed=3)  # 5 drifting windows
        assert drain()
        assert drift_status(drift_server)["windows"] == 5
        said = [r.getMessage() for r in caplog.records if "is drifting" in r.getMessage()]
        assert len(said) == 1, said
        monkeypatch.setattr(drift_server._registry.loaded["scale"][1].drift._said, "every_s", 0.0)
        feed(drift_server, 1.5, 500, seed=4)
        assert drain()
        said = [r.getMessage() for r in caplog.records if "is drifting" in r.getMessage()]
        assert len(said) == 2 and "(4 more since the last such line)" in said[1], said
        feed(drift_server, 0.0, 500, seed=5)
        assert drain()
    assert drift_status(drift_server)["drifting"] is False
    assert [r.levelname for r in caplog.records if "no longer drifting" in r.getMessage()] == ["INFO"]


def test_a_version_whose_drift_comes_and_goes_is_not_logged_for_every_window(
    drift_server: inprocserve.Server, caplog: pytest.LogCaptureFixture
) -> None:
    # A score around its threshold drifts in one window and not the next: each end forgot the drift, so each
    # window logged either "is drifting" or "no longer drifting" (a line per window, as before 9b8cdc0).
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        for seed in range(10):
            feed(drift_server, 1.5, 500, seed=2 * seed + 10)  # a drifting window
            assert drain()
            feed(drift_server, 0.0, 500, seed=2 * seed + 11)  # and one that is not
            assert drain()
    assert drift_status(drift_server)["windows"] == 20
    assert len([r for r in caplog.records if "is drifting" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "no longer drifting" in r.getMessage()]) == 1


def test_a_feature_that_is_mostly_one_value_drifts_when_its_rows_leave_that_value(
    repository: Path, make_server: ServerFactory
) -> None:
    """A flag that is 5 % ones, a count that is 95 % zeros: their deciles are all 0, yet a window where
    every row is flagged (or counts 3) is a shift, and a window like the reference is not."""
    save_model(build_scale_model(2.0, features=2), repository, "scale", 1)
    rng = np.random.default_rng(20)

    def sparse(rows: int) -> np.ndarray:
        batch = np.zeros((rows, 2), np.float32)
        batch[:, 0] = rng.random(rows) < 0.05
        batch[:, 1] = np.where(rng.random(rows) < 0.05, rng.integers(1, 4, rows), 0)
        return batch

    np.savez(repository / "scale" / "reference.npz", x=sparse(5000))
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(reference_file="reference.npz", window=1000)))
    server.predict("scale", sparse(1000))
    assert drain()
    status = drift_status(server)
    assert status["windows"] == 1 and status["drifting"] is False and status["max_psi"] < 0.1

    shifted = np.ones((1000, 2), np.float32)
    shifted[:, 1] = 3  # a value the reference has, in 1 % of its rows
    server.predict("scale", shifted)
    assert drain()
    status = drift_status(server)
    assert status["windows"] == 2 and status["drifting"] is True
    for name in ("x[0]", "x[1]"):
        assert status["features"][name]["psi"] > 1.0
        assert "ks" not in status["features"][name]  # few distinct values: PSI only


def test_a_float64_reference_value_is_the_same_value_in_float32_requests(
    repository: Path, make_server: ServerFactory
) -> None:
    """Training data saved in float64 with an imputed mean in 40 % of the rows: requests cast to the model's
    float32 input hold that mean rounded to float32, which must land in the value's own bin."""
    save_model(build_scale_model(2.0, features=2), repository, "scale", 1)
    rng = np.random.default_rng(21)

    def imputed(rows: int) -> np.ndarray:
        batch = rng.normal(37.0, 1.0, (rows, 2))
        batch[rng.random(rows) < 0.4, 0] = 37.2
        return batch

    np.savez(repository / "scale" / "reference.npz", x=imputed(5000))  # float64, as training data usually is
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(reference_file="reference.npz", window=1000)))
    server.predict("scale", imputed(1000).astype(np.float32))
    assert drain()
    status = drift_status(server)
    assert status["windows"] == 1 and status["drifting"] is False and status["max_psi"] < 0.1


def test_reference_captured_from_the_first_requests(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config = ModelConfig(drift=DriftConfig(capture_reference=500, window=500))
    server = make_server(repository, config=config)
    assert drift_status(server)["reference_ready"] is False
    feed(server, 0.0, 500, seed=4)
    assert drain()
    assert drift_status(server)["reference_ready"] is True
    feed(server, 3.0, 500, seed=5)
    assert drain()
    status = drift_status(server)
    assert status["drifting"] is True
    assert "output:y[0]" in status["features"]  # captured references cover outputs too


def test_requests_during_the_capture_do_not_replace_the_reference(repository: Path, make_server: ServerFactory) -> None:
    """Rows that arrive while the captured reference is being built must not start a reference of their own."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(capture_reference=1000, window=1000)))
    rng = np.random.default_rng(6)
    for _ in range(3000):  # one row at a time, no pause after the capture: the reference builds meanwhile
        server.predict("scale", rng.normal(0, 1, (1, 4)).astype(np.float32))
    assert drain()
    status = drift_status(server)
    assert status["windows"] >= 1
    assert status["drifting"] is False and status["max_psi"] < 0.1


def test_rows_that_arrive_while_the_reference_is_built_are_scored(repository: Path, make_server: ServerFactory) -> None:
    """Exactly one reference and one window of rows, sent without a pause: the window that arrived while the
    reference was being built is scored, not dropped."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(capture_reference=500, window=500)))
    rng = np.random.default_rng(7)
    for _ in range(1000):
        server.predict("scale", rng.normal(0, 1, (1, 4)).astype(np.float32))
    assert drain()
    assert drift_status(server)["windows"] == 1


def test_a_bad_reference_file_fails_the_load(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    np.savez(repository / "scale" / "reference.npz", other=np.ones(3))
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(reference_file="reference.npz")))
    assert "holds none of the model's inputs" in server.status()["models"]["scale"]["versions"]["1"]["error"]


def test_a_npy_reference_is_the_single_input_s(repository: Path, make_server: ServerFactory) -> None:
    """np.save writes one array: it failed the load with a TypeError ("does not support the context manager")."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    np.save(repository / "scale" / "reference.npy", np.random.default_rng(1).normal(0, 1, (2000, 4)))
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(reference_file="reference.npy", window=500)))
    feed(server, 3.0, 500, seed=2)
    assert drain()
    assert drift_status(server)["drifting"] is True


def test_a_npy_reference_for_a_model_of_several_inputs_says_to_use_savez(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_add_model(), repository, "add", 1)
    np.save(repository / "add" / "reference.npy", np.ones((10, 4)))
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(reference_file="reference.npy")))
    error = server.status()["models"]["add"]["versions"]["1"]["error"]
    assert "holds one array, and the model has 3 inputs" in error and "np.savez" in error


def test_a_reference_whose_array_has_no_rows_says_so(repository: Path, make_server: ServerFactory) -> None:
    """It said the file held none of the model's inputs, though it held x."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    np.savez(repository / "scale" / "reference.npz", x=np.array(1.0))
    server = make_server(repository, config=ModelConfig(drift=DriftConfig(reference_file="reference.npz")))
    error = server.status()["models"]["scale"]["versions"]["1"]["error"]
    assert "holds no numeric array with a row per sample (x: float64 [])" in error


def test_drift_config_from_toml_and_validation(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[drift]\ncapture_reference = 100\nwindow = 50\n")
    server = make_server(repository)
    assert drift_status(server)["reference"] == "captured"
    with pytest.raises(inprocserve.ConfigurationError):
        DriftConfig(window=0)


def test_each_server_owns_its_scoring_thread_and_close_stops_it(repository: Path) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    # (threads of servers other tests of this process left open, such as the Django plug-in's, are not this one's)
    others = set(threading.enumerate())
    config = ModelConfig(drift=DriftConfig(capture_reference=100, window=100))
    server = inprocserve.Server(repository, config=config, control_interval_s=0.05, poll_interval_s=0.05)
    try:
        feed(server, 0.0, 300, seed=9)
        assert drain()
        assert drift_status(server)["windows"] >= 1
        started = {thread.name for thread in threading.enumerate() if thread not in others}
        assert {"inprocserve-drift", "inprocserve-control", "inprocserve-refresh"} <= started
    finally:
        server.close()
    # close() stops and joins every thread this server started: drift scoring, the poller, the watcher
    left = [
        thread for thread in threading.enumerate() if thread not in others and thread.name.startswith("inprocserve")
    ]
    assert not left


def test_ks_matches_the_largest_gap_between_the_two_empirical_cdfs_with_ties() -> None:
    rng = np.random.default_rng(30)
    for _ in range(300):
        reference = np.sort(rng.integers(0, 5, int(rng.integers(1, 50))).astype(np.float64))
        sample = rng.integers(0, 6, int(rng.integers(1, 50))).astype(np.float64)
        grid = np.concatenate([reference, sample])
        gaps = np.abs(
            np.searchsorted(reference, grid, side="right") / reference.size
            - np.searchsorted(np.sort(sample), grid, side="right") / sample.size
        )
        assert ks_statistic(reference, sample) == pytest.approx(gaps.max())


def test_the_ks_statistic_looks_up_the_window_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The KS statistic evaluated both CDFs at every reference value: 0.25 s per feature and window against a
    # reference of a million rows (11 s a window for 64 features), so the scoring thread fell ever further
    # behind and most windows were dropped. Its cost is pinned here by what it looks up, not by a clock: every
    # search is for the window's values, never for the reference's (its value is pinned by the test above).
    rng = np.random.default_rng(31)
    reference = np.sort(rng.normal(0, 1, 1_000_000))
    sample = rng.normal(0, 1, 1000)
    searched: list[int] = []
    search = np.searchsorted

    def counting(a: np.ndarray, v: np.ndarray, side: str = "left", sorter: None = None) -> np.ndarray:
        searched.append(np.size(v))
        return search(a, v, side=side, sorter=sorter)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(np, "searchsorted", counting)
    assert ks_statistic(reference, sample) < 0.06
    assert searched and max(searched) == sample.size


def test_a_version_drifting_by_ks_alone_is_logged_with_its_ks(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A shift of 0.35 standard deviations: PSI about 0.1 (under 0.2), KS about 0.14 (over 0.1). The warning
    # named the worst feature with its PSI only ("worst x[0] (PSI 0.101)"), no reason to drift at all.
    save_model(build_scale_model(2.0), repository, "scale", 1)
    rng = np.random.default_rng(32)
    np.savez(repository / "scale" / "reference.npz", x=rng.normal(0, 1, (20_000, 4)).astype(np.float32))
    config = ModelConfig(drift=DriftConfig(reference_file="reference.npz", window=2000, ks_threshold=0.1))
    server = make_server(repository, config=config)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.predict("scale", rng.normal(0.35, 1, (2000, 4)).astype(np.float32))
        assert drain()
    status = drift_status(server)
    assert status["drifting"] is True and status["max_psi"] < 0.2
    (said,) = [r.getMessage() for r in caplog.records if "is drifting" in r.getMessage()]
    worst = max(status["features"], key=lambda name: status["features"][name]["ks"])
    assert f"worst {worst} (KS {status['features'][worst]['ks']:.3f}, threshold 0.1)" in said


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).normal(0, 1, 5001),
        np.random.default_rng(2).integers(0, 4, 3000).astype(np.float64),  # atoms: every quantile repeats
        np.concatenate([np.zeros(900), np.random.default_rng(3).exponential(1, 100)]),  # mostly 0
        np.array([2.5]),
        np.array([1.0, np.nan, 3.0, np.inf, 2.0]),
    ],
    ids=["normal", "four-values", "mostly-zero", "one-row", "non-finite"],
)
def test_a_reference_is_binned_as_numpy_quantiles_and_counts_bin_it(values: np.ndarray) -> None:
    """The reference's bins and shares, read from its one sorted copy, are those of np.quantile and a count
    of every value (what they were computed with before)."""
    feature = _Feature(values, bins=10)
    finite = values[np.isfinite(values)]
    quantiles = np.quantile(finite, np.linspace(0, 1, 11)[1:-1])
    np.testing.assert_array_equal(feature.edges, _bin_edges(quantiles, np.sort(finite)))
    np.testing.assert_allclose(feature.expected, feature.proportions(finite, feature.nonfinite), rtol=0, atol=1e-15)
    assert feature.continuous == (np.unique(finite).size > 20)


def test_a_large_reference_is_held_in_bounded_memory_and_scores_as_the_whole_of_it(
    repository: Path, make_server: ServerFactory
) -> None:
    """A reference of a million rows of 64 features held 512 MiB in every worker for each version (and took
    half a minute to load): past 2**15 rows a feature keeps evenly spaced order statistics, whose KS statistic
    reads as the whole reference's."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    rng = np.random.default_rng(7)
    reference = rng.normal(0, 1, (800_000, 4)).astype(np.float32)
    np.save(repository / "scale" / "reference.npy", reference)
    whole = np.sort(reference[:, 2].astype(np.float64))
    window = rng.normal(0.05, 1, (1000, 4)).astype(np.float32)
    config = ModelConfig(drift=DriftConfig(reference_file="reference.npy", window=1000))

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        server = make_server(repository, config=config)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # sorted float64 copies of every feature: 25.6 MB; 2**15 order statistics of each: 1 MiB
    assert held < reference.nbytes / 4, f"the version holds {held / 2**20:.1f} MiB after loading its reference"

    for start in range(0, 1000, 100):
        server.predict("scale", window[start : start + 100])
    assert drain()
    ks = server.status()["models"]["scale"]["versions"]["1"]["drift"]["features"]["x[2]"]["ks"]
    assert ks == pytest.approx(ks_statistic(whole, window[:, 2].astype(np.float64)), abs=1e-4)
