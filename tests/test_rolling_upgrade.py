"""A fleet mid-change: hosts on two releases, or with different repository contents, share one control file.

Real servers, real ONNX models and real files; the newer release's writes are written as it would write them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import _repository, render_status_page
from inprocserve._cli import main
from inprocserve._cli_status import summarize
from inprocserve._control import CONTROL_FILENAME, ControlFile, ModelControl
from inprocserve.testing import ManualClock, build_scale_model, save_model

from .conftest import ServerFactory

X = np.ones((1, 4), np.float32)


@pytest.fixture
def fraud(repository: Path) -> Path:
    """``fraud`` v1 and v2 (version v answers x * v)."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    return repository


def test_a_control_file_written_by_a_newer_release_is_followed_and_kept(
    fraud: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    running = make_server(fraud, control_interval_s=None)
    running.switch("fraud", 1)
    # A host already upgraded writes the kill switch, with keys this release does not know.
    path = fraud / CONTROL_FILENAME
    document = json.loads(path.read_text())
    document.update(revision=document["revision"] + 1, format=2)
    document["models"]["fraud"].update(kill=True, stable=2, frozen_until="2026-12-03")
    path.write_text(json.dumps(document))

    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        running.sync_control()
        running.sync_control()  # (read again, same keys: not logged again)
    assert running.predict("fraud", X).version == 2  # the kill switch and the switch are followed
    assert running.status()["control"]["unknown_keys"] == ["format", "models.fraud.frozen_until"]
    assert running.status()["control"]["error"] is None
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 1 and "format, models.fraud.frozen_until" in warnings[0]
    assert "Control file keys this release ignores: format" in render_status_page(running.status())
    assert "control file keys this worker's release ignores: format, models.fraud.frozen_until" in summarize(
        running.status()
    )

    # A worker of this release that starts now serves (it refused every request), and its writes keep the keys.
    starting = make_server(fraud, control_interval_s=60)
    assert starting.status()["control"]["read"] is True
    assert starting.predict("fraud", X, context={"user_id": "u1"}).version == 2
    starting.resume("fraud")
    written = json.loads(path.read_text())
    assert written["format"] == 2 and written["models"]["fraud"]["frozen_until"] == "2026-12-03"
    assert written["models"]["fraud"]["kill"] is False

    # The deploy check names them, as a warning (an older host's check must not fail the upgrade).
    assert main(["validate", str(fraud)]) == 0
    assert "WARNING" in capsys.readouterr().out


def copy_in_pieces(model: bytes, target: Path, pieces: int, between: Callable[[], None]) -> None:
    """Write ``model`` to ``target`` in place, piece by piece, as ``cp`` or ``kubectl cp`` does, calling
    ``between`` after each piece but the last."""
    target.parent.mkdir(parents=True, exist_ok=True)
    step = len(model) // pieces + 1
    with open(target, "wb") as handle:
        for start in range(0, len(model), step):
            handle.write(model[start : start + step])
            handle.flush()
            if start + step < len(model):
                between()


def test_a_lagging_host_serves_the_fleets_version_within_an_interval_of_its_arrival(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    elsewhere = save_model(build_scale_model(2.0), repository.parent / "upgraded", "fraud", 2)
    # The synced copy brings the fleet's switch to v2 before v2 itself.
    ControlFile(repository).set_model("fraud", lambda _: ModelControl(stable=2, previous_stable=1))
    clock = ManualClock()
    host = make_server(repository, control_interval_s=None, clock=clock)

    def watcher_runs_for(seconds: float) -> None:  # (the watcher's calls, every 0.5 s)
        for _ in range(int(seconds / 0.5)):
            host._operations.sync_control(retry_now=False)
            clock.advance(0.5)

    watcher_runs_for(250)  # its tries back off to one a minute (the last at 243 s, the next at 303 s)
    assert host.predict("fraud", X).version == 1
    assert "not in the repository (yet)" in host.status()["control"]["error"]

    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        target = repository / "fraud" / "2" / "model.onnx"
        copy_in_pieces(elsewhere.read_bytes(), target, 4, lambda: watcher_runs_for(0.5))  # (a piece an interval)
        watcher_runs_for(1)
    assert host.predict("fraud", X).version == 2  # (a minute later, before)
    assert host.status()["control"]["error"] is None
    assert not [r for r in caplog.records if "failed to load" in r.getMessage()]  # (never tried half-made)


def test_a_version_a_poll_loads_is_not_reported_missing_until_the_next_try(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    ControlFile(repository).set_model("fraud", lambda _: ModelControl(stable=2, previous_stable=1))
    clock = ManualClock()
    host = make_server(repository, control_interval_s=None, clock=clock)
    host._operations.sync_control(retry_now=False)
    assert "version 2 is not in the repository (yet)" in host.status()["control"]["error"]

    save_model(build_scale_model(2.0), repository, "fraud", 2)
    host.refresh()  # the poller's
    assert host.predict("fraud", X).version == 2
    for _ in range(2):  # the watcher's next intervals
        host._operations.sync_control(retry_now=False)
        clock.advance(0.5)
    assert host.status()["control"]["error"] is None  # it said "not in the repository (yet)" for up to 60 s


def test_a_version_copied_in_place_with_stalls_logs_one_failure_not_one_per_stall(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    elsewhere = save_model(build_scale_model(2.0), repository.parent / "source", "fraud", 2)
    server = make_server(repository, control_interval_s=None)

    def polls_during_a_stall() -> None:  # (the copy stands still for two polls: tried again, half-made)
        server.refresh()
        server.refresh()

    with caplog.at_level(logging.INFO, logger="inprocserve"):
        copy_in_pieces(elsewhere.read_bytes(), repository / "fraud" / "2" / "model.onnx", 6, polls_during_a_stall)
        polls_during_a_stall()
    assert server.predict("fraud", X).version == 2  # loaded once whole
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and "failed to load" in r.getMessage()]
    assert len(failures) == 1  # one per stall (5)


def test_a_config_toml_written_for_a_newer_release_does_not_stop_older_workers_from_serving(
    fraud: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fraud / "fraud" / "config.toml"
    config.write_text("[batching]\nmax_batch_size = 8\n")
    running = make_server(fraud, control_interval_s=None)
    # The shared repository's config.toml gets keys that only the upgraded hosts read.
    config.write_text(
        "[batching]\nmax_batch_size = 16\ntoken_budget = 1048576\n[rollout.canary]\nsticky_hours = 4\n"
        "[tracing]\nsample = 0.1\n"
    )
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        running.refresh()  # (the poller's)
        # A worker of the older release that starts now (recycled, restarted) serves the model.
        starting = make_server(fraud, control_interval_s=None)
        assert starting.predict("fraud", X).version == 2  # it served nothing (unknown model)
        starting.refresh()  # (logged once, not at every poll)
    assert starting.models["fraud"] == [2]
    status = starting.status()["models"]["fraud"]
    assert status["config_error"] is None
    assert "[batching] token_budget, [rollout.canary] sticky_hours, tracing" in status["config_warning"]
    assert status["versions"]["2"]["max_batch_size"] == 16  # (the keys it knows are applied)
    assert "Configuration warning:" in render_status_page(starting.status())
    said = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert len(said) == 2  # (once by each worker, not at each poll)

    # A worker already serving applies the file alike (the keys it knows): the workers of one host serve the
    # same settings, whenever each started. (It kept its old ones, while a restarted worker took the new.)
    assert running.status()["models"]["fraud"]["versions"]["2"]["max_batch_size"] == 16
    assert running.status()["models"]["fraud"]["config_error"] is None
    assert "token_budget" in running.status()["models"]["fraud"]["config_warning"]

    # The deploy check of this release names them as a problem: a typo, most often.
    assert main(["validate", str(fraud)]) == 1
    assert "token_budget" in capsys.readouterr().out


def test_workers_of_one_host_serve_the_same_settings_whenever_they_started(
    fraud: Path, make_server: ServerFactory
) -> None:
    config = fraud / "fraud" / "config.toml"
    config.write_text("[rollout]\nstable = 1\n[rollout.canary]\nversion = 2\npercent = 10\n")
    serving = make_server(fraud, control_interval_s=None)
    assert serving.predict("fraud", X).version == 1
    # The upgrade's config.toml moves the pin and the canary, and has a key only the newer release reads.
    config.write_text("[rollout]\nstable = 2\nfrozen = true\n[rollout.canary]\nversion = 1\npercent = 50\n")
    serving.refresh()  # (the poller's)
    restarted = make_server(fraud, control_interval_s=None)  # a recycled worker of the same host
    settings = []
    for worker in (serving, restarted):
        assert worker.predict("fraud", X).version == 2  # (the serving worker kept v1 for good)
        settings.append({k: v for k, v in worker.status()["models"]["fraud"]["rollout"].items() if k != "variants"})
        assert "[rollout] frozen" in worker.status()["models"]["fraud"]["config_warning"]
    assert settings[0] == settings[1]  # (the canary too)

    # A typo (stabel for stable) is read alike too: not followed by any worker, and said by each.
    config.write_text("[rollout]\nstabel = 1\n")
    serving.refresh()
    restarted.refresh()
    for worker in (serving, restarted, make_server(fraud, control_interval_s=None)):
        assert worker.predict("fraud", X).version == 2  # (the latest: the pin is not there)
        assert "[rollout] stabel (stable?)" in worker.status()["models"]["fraud"]["config_warning"]


def test_a_repository_swapped_by_a_symbolic_link_says_that_the_fleet_state_was_left_behind(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    releases = tmp_path / "releases"
    for release in ("42", "43"):
        for version in (1, 2):
            save_model(build_scale_model(float(version)), releases / release, "fraud", version)
    current = tmp_path / "models"
    current.symlink_to(releases / "42")
    server = make_server(current, control_interval_s=None)
    server.switch("fraud", 1)
    server.kill("fraud")

    (tmp_path / "next").symlink_to(releases / "43")  # the deploy of release 43: an atomic swap of the link
    (tmp_path / "next").replace(current)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.sync_control()
    assert server.predict("fraud", X).version == 2  # release 43 has no control file: revision 0 is followed
    said = [r.getMessage() for r in caplog.records if "went back" in r.getMessage()]
    assert len(said) == 1 and "another folder now" in said[0] and "before such a swap" in said[0]


def test_a_failure_held_back_by_the_log_limit_is_logged_once_it_stays(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    clock = ManualClock()
    server = make_server(repository, control_interval_s=None, clock=clock)
    target = repository / "fraud" / "2" / "model.onnx"
    target.parent.mkdir()
    whole = (repository / "fraud" / "1" / "model.onnx").read_bytes()

    def failures() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "failed to load" in r.getMessage()
        ]

    with caplog.at_level(logging.INFO, logger="inprocserve"):
        target.write_bytes(whole[: len(whole) // 2])  # a copy in progress: logged
        server.refresh()
        clock.advance(5)
        target.write_bytes(b"corrupt " * 64)  # another error: news, logged at once (one such line a minute)
        server.refresh()
        assert len(failures()) == 2
        clock.advance(5)
        target.write_bytes(b"broken " * 64)  # then a third, which stays: held back by the limit
        server.refresh()
        server.refresh()
        assert len(failures()) == 2
        clock.advance(60)
        server.refresh()  # (its files unchanged: not tried again)
        server.refresh()
    assert len(failures()) == 3  # (the third error was never logged: status alone said it)
    first, second, third = failures()
    assert len({first, second, third}) == 3 and "more since" not in third


def test_a_write_keeping_a_newer_releases_keys_never_makes_the_file_too_large_to_read(
    fraud: Path, make_server: ServerFactory
) -> None:
    path = fraud / CONTROL_FILENAME
    # A newer release's entry with a long list (620 kB as written, compact): every server reads the file.
    document = {"revision": 4, "models": {"fraud": {"stable": 1, "buckets": list(range(20000, 120000))}}}
    path.write_text(json.dumps(document, separators=(",", ":")))
    running = make_server(fraud, control_interval_s=None)
    assert running.predict("fraud", X).version == 1

    running.kill("fraud")  # written back indented, it was 1.5 MB: past what servers read (1 MiB)
    starting = make_server(fraud, control_interval_s=None)
    assert starting.status()["control"]["error"] is None  # (it refused every request)
    assert starting.status()["models"]["fraud"]["control"]["kill"] is True
    assert json.loads(path.read_text())["models"]["fraud"]["buckets"] == document["models"]["fraud"]["buckets"]

    # A change that cannot be written within the limit at all is refused, and the file is left as it was.
    document["models"]["fraud"]["buckets"] = "x"  # (padded so that the file is just readable)
    size = len(json.dumps(document, separators=(",", ":")))
    document["models"]["fraud"]["buckets"] = "x" * (1048576 - 10 - size)
    path.write_text(json.dumps(document, separators=(",", ":")))
    assert ControlFile(fraud).read().revision == 4
    written = path.read_bytes()
    with pytest.raises(inprocserve.ConfigurationError, match="more than the 1048576 bytes servers read"):
        ControlFile(fraud).set_model("fraud", lambda state: dataclasses.replace(state, kill=True))
    assert path.read_bytes() == written


def test_a_newer_releases_key_in_an_ab_arm_is_left_out_like_any_other(fraud: Path, make_server: ServerFactory) -> None:
    (fraud / "fraud" / "config.toml").write_text(
        '[rollout]\nstrategy = "ab"\n[rollout.variants.a]\nversion = 1\nweight = 50\nholdout = true\n'
        "[rollout.variants.b]\nversion = 2\nweight = 50\n"
    )
    server = make_server(fraud, control_interval_s=None)
    status = server.status()["models"]["fraud"]
    assert status["config_error"] is None  # (the whole file was refused: the model served nothing)
    assert "[rollout.variants.a] holdout" in status["config_warning"]
    assert {server.predict("fraud", X, context={"user_id": f"u{i}"}).version for i in range(40)} == {1, 2}


def test_the_config_warning_goes_with_the_config_toml(fraud: Path, make_server: ServerFactory) -> None:
    config = fraud / "fraud" / "config.toml"
    config.write_text("[batching]\ntoken_budget = 5\n")
    server = make_server(fraud, control_interval_s=None)
    assert "token_budget" in server.status()["models"]["fraud"]["config_warning"]
    config.unlink()
    server.refresh()
    assert server.status()["models"]["fraud"]["config_warning"] is None  # (it named the removed file for good)


def test_a_config_toml_with_thousands_of_unknown_keys_is_warned_of_bounded(
    fraud: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # 30,000 short keys (80,000 fit the 1 MiB a server reads): each was named with the known key it is close to,
    # which took seconds at every poll of the repository, and every status() carried all of them. The first 20 are
    # named, and the rest counted, as a remote.toml's and the control file's are.
    (fraud / "fraud" / "config.toml").write_text(
        "".join(f"k{i:05} = 1\n" for i in range(30_000)) + "[batching]\nmax_batch_size = 16\nmax_batch_sise = 16\n"
    )
    server = make_server(fraud, control_interval_s=None)
    status = server.status()["models"]["fraud"]
    assert status["versions"]["2"]["max_batch_size"] == 16  # (the keys it knows are applied)
    warning = status["config_warning"]
    assert "does not know k00000, k00001," in warning and "k00019, 29981 more, and serves" in warning
    assert "k00020" not in warning and len(warning) < 1000
    assert main(["validate", str(fraud)]) == 1
    out = capsys.readouterr().out
    assert "k00019, 29981 more" in out and len(out) < 2000


def test_a_try_of_a_revision_scans_each_waiting_model_once_not_the_repository_each_time(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(build_scale_model(1.0), repository, "m00", 1)
    names = [f"m{i:02d}" for i in range(30)]
    for name in names[1:]:
        shutil.copytree(repository / "m00", repository / name)
    control = ControlFile(repository)
    for name in names:  # the fleet's switch of every model to a version this host does not have yet
        control.set_model(name, lambda _: ModelControl(stable=2, previous_stable=1))
    clock = ManualClock()
    host = make_server(repository, control_interval_s=None, clock=clock)
    scanned: list[str] = []
    scan_model = _repository._scan_model
    monkeypatch.setattr(
        _repository, "_scan_model", lambda name, *a, **k: scanned.append(name) or scan_model(name, *a, **k)
    )
    host.sync_control()  # (a try, as the watcher's when a version arrives)
    assert "not in the repository (yet)" in host.status()["control"]["error"]
    assert sorted(scanned) == names  # 900: each model's try scanned all 30 (with 200 models: 14 s, under the lock)


def test_a_misspelt_control_key_is_named_with_the_key_it_is_close_to(
    fraud: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server(fraud, control_interval_s=None)
    server.switch("fraud", 1)
    path = fraud / CONTROL_FILENAME
    document = json.loads(path.read_text())
    document["revision"] += 1
    document["models"]["fraud"]["kil"] = True  # a hand edit: the kill switch meant is not in force
    path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.sync_control()
    assert server.status()["control"]["unknown_keys"] == ["models.fraud.kil"]
    assert any("models.fraud.kil (kill?)" in r.getMessage() for r in caplog.records)
    assert main(["validate", str(fraud)]) == 0
    assert "models.fraud.kil (kill?)" in capsys.readouterr().out


def test_a_control_file_with_one_very_long_unknown_key_is_shown_cut_short(
    fraud: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # One key of 900 kB fits the 1 MiB a server reads: the count of keys was bounded, not their length, so
    # every status() (the unauthenticated GET /models too) carried it whole, and the warning as much.
    long_key, long_name = "k" * 900_000, "m" * 50_000
    document = {"revision": 1, "models": {"fraud": {"stable": 1, "kil": True}, long_name: {"x" * 50_000: 1}}}
    (fraud / CONTROL_FILENAME).write_text(json.dumps({**document, long_key: 1}))
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(fraud, control_interval_s=None)
    said = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(said) == 1 and len(said[0]) < 2000 and "models.fraud.kil (kill?)" in said[0]
    status = server.status()
    assert len(json.dumps(status)) < 5_000
    keys = status["control"]["unknown_keys"]
    assert keys == ["k" * 100 + "...", "models.fraud.kil", f"models.{'m' * 100}....{'x' * 100}..."]
    assert status["control"]["unknown_keys_count"] == 3
    assert len(render_status_page(status)) < 10_000
    older = {**status, "control": {**status["control"], "unknown_keys": [long_key]}}  # a server of before the cut
    line = next(line for line in summarize(older) if "ignores" in line)
    assert len(line) < 1000 and line.endswith("k" * 300 + "..., and 2 more")
    assert len(render_status_page(older)) < 10_000
    assert main(["validate", str(fraud)]) == 0
    assert len(capsys.readouterr().out) < 5_000
    assert server.predict("fraud", X)["y"][0, 0] == 1.0


def test_a_control_file_with_thousands_of_unknown_keys_is_shown_bounded(
    fraud: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # 80,000 short keys fit the 1 MiB a server reads: all named, every status() carried 790 kB of them, the
    # status page and the CLI as much, the warning was one line of 630 kB, and describing them took 1.7 s of
    # the start. The first 20 (sorted) are named, and the rest counted; the warning is still said once.
    document = {"revision": 1, "models": {"fraud": {"stable": 1}}, **{f"k{i:05d}": 0 for i in range(80_000)}}
    (fraud / CONTROL_FILENAME).write_text(json.dumps(document, separators=(",", ":")))
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(fraud, control_interval_s=None)
        server.sync_control()
        server.sync_control()
    said = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(said) == 1 and "k00000, k00001" in said[0] and ", and 79980 more" in said[0]
    assert len(said[0]) < 2000
    status = server.status()
    control = status["control"]
    assert control["unknown_keys"] == [f"k{i:05d}" for i in range(20)] and control["unknown_keys_count"] == 80_000
    assert len(json.dumps(status)) < 10_000
    page = render_status_page(status)
    assert "k00019, and 79980 more" in page and len(page) < 10_000
    line = next(line for line in summarize(status) if "ignores" in line)
    assert line.endswith("k00019, and 79980 more")
    older = {**status, "control": {**control, "unknown_keys": [f"k{i:05d}" for i in range(80_000)]}}
    del older["control"]["unknown_keys_count"]  # a server of before the count sends every key: bounded too
    line = next(line for line in summarize(older) if "ignores" in line)
    assert line.endswith("k00019, and 79980 more") and len(line) < 1000
    assert len(render_status_page(older)) < 10_000
    assert main(["validate", str(fraud)]) == 0
    out = capsys.readouterr().out
    assert "k00019, and 79980 more" in out and len(out) < 5_000
    assert server.predict("fraud", X)["y"][0, 0] == 1.0  # and the fleet's revision is followed
