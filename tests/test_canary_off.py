"""Stopping a model's canary from the control file when the canary comes from its configuration
(``config.toml``'s ``[rollout.canary]``, or ``ModelConfig(rollout=...)`` in code): ``canary MODEL none``,
``Server.set_canary(model, None, percent=0)`` and the admin ``{"version": null}`` stop it, and ``canary MODEL
config``, ``Server.resume_configured_canary`` and the admin ``{"version": "config"}`` hand it back.

Before, they only removed a canary the control file had set: version 2 of the configuration kept answering its
10 % while the on-call list (docs/operations.md, step 2) said everyone went back to the stable version.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import web
from inprocserve.__main__ import main
from inprocserve._cli_status import summarize
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

CANARY_IN_CONFIG = '[rollout]\nstrategy = "canary"\nstable = 1\n\n[rollout.canary]\nversion = 2\npercent = 10\n'
AB_IN_CONFIG = (
    '[rollout]\nstrategy = "ab"\n\n[rollout.variants.control]\nversion = 1\nweight = 50\n\n'
    "[rollout.variants.bigger]\nversion = 2\nweight = 50\n"
)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m inprocserve ARGS`` run in this process (as tests/test_cli.py's ``cli``)."""
    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as exit_info:
        status = exit_info.code if isinstance(exit_info.code, int) else 2
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["inprocserve", *args], status, captured.out, captured.err)


def fraud_repository(repository: Path, config: str = CANARY_IN_CONFIG, versions: int = 3) -> Path:
    """``fraud`` in versions 1..``versions`` (version v multiplies by v), with ``config`` as its config.toml."""
    for version in range(1, versions + 1):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    (repository / "fraud" / "config.toml").write_text(config)
    return repository


def answering(server: inprocserve.Server, model: str = "fraud") -> set[int]:
    rows = np.ones((1, 4), np.float32)
    return {server.predict(model, rows, context={"user_id": f"user-{n}"}).version for n in range(200)}


def entry_kept_through_kill_and_resume(capsys: pytest.CaptureFixture[str], models: Path) -> str:
    """The fraud entry's text in the control file, checked byte-identical after a `kill` and a `resume`."""
    path = models / ".inprocserve-control.json"

    def entry() -> str:
        text = path.read_text()
        return text[text.index('"fraud"') : text.index("}", text.index('"fraud"'))]

    before = entry()
    assert cli(capsys, "kill", str(models), "fraud").returncode == 0
    assert cli(capsys, "resume", str(models), "fraud").returncode == 0
    assert entry() == before
    return before


def test_canary_none_then_a_canary_then_config_on_a_configured_canary(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    models = fraud_repository(repository)
    server = make_server(models)
    assert answering(server) == {1, 2}
    # The operator's own canary replaces the configured one, and `none` stops both: no v2 left answering.
    assert cli(capsys, "canary", str(models), "fraud", "3", "50").returncode == 0
    server.sync_control()
    assert answering(server) == {1, 3}
    stopped = cli(capsys, "canary", str(models), "fraud", "none")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["models"]["fraud"]["canary_off"] is True
    server.sync_control()
    assert answering(server) == {1}
    # A canary set after it runs (and clears the stop).
    assert cli(capsys, "canary", str(models), "fraud", "3", "50").returncode == 0
    server.sync_control()
    assert answering(server) == {1, 3}
    assert "canary_off" not in server.status()["models"]["fraud"]["control"]
    # `config` hands the canary back to config.toml: v2 answers its 10 % again.
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    back = cli(capsys, "canary", str(models), "fraud", "config")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["models"]["fraud"] == {
        "canary_percent": 0.0,
        "canary_version": None,
        "kill": False,
        "previous_stable": None,
        "stable": None,
    }
    server.sync_control()
    assert answering(server) == {1, 2}
    refused = cli(capsys, "canary", str(models), "fraud", "config", "10")
    assert refused.returncode == 2 and "takes no PERCENT (got 10)" in refused.stderr


def test_canary_none_leaves_a_configured_ab_test_running(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/operations.md: A/B tests, bandits and shadows are stopped with `kill`, not `canary ... none`.
    models = fraud_repository(repository, AB_IN_CONFIG, versions=2)
    server = make_server(models)
    assert answering(server) == {1, 2}
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    server.sync_control()
    assert answering(server) == {1, 2}
    assert cli(capsys, "kill", str(models), "fraud").returncode == 0
    server.sync_control()
    assert answering(server) == {2}  # (the stable version: with no stable alias, the latest)


def test_a_stopped_canary_that_is_not_true_or_false_is_refused(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = fraud_repository(repository)
    control = {"revision": 1, "models": {"fraud": {"canary_version": None, "canary_off": "yes"}}}
    (models / ".inprocserve-control.json").write_text(json.dumps(control))
    refused = cli(capsys, "kill", str(models), "fraud")
    assert refused.returncode == 1
    assert "control: models.fraud.canary_off must be true or false, got 'yes'" in refused.stderr


def test_a_control_file_without_a_stopped_canary_stays_as_it_was(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Files without the key stay byte-identical (an older release reads them; diffs in a ConfigMap stay quiet).
    models = fraud_repository(repository)
    assert cli(capsys, "canary", str(models), "fraud", "3", "10").returncode == 0
    before = entry_kept_through_kill_and_resume(capsys, models)
    assert "canary_off" not in (models / ".inprocserve-control.json").read_text(), before


def test_set_canary_none_stops_a_canary_configured_in_code_and_its_shadow_runs_on(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    config = inprocserve.ModelConfig(
        rollout=inprocserve.RolloutConfig(
            strategy="canary",
            stable=1,
            canary=inprocserve.CanaryConfig(version=2, percent=30),
            shadow=inprocserve.ShadowConfig(versions=(3,)),
        )
    )
    flags = inprocserve.InMemoryFlags()
    server = make_server(repository, models={"fraud": config}, flags=flags, flag_timeout_s=10.0)
    assert answering(server) == {1, 2}
    server.set_canary("fraud", None, percent=0)
    assert answering(server) == {1}
    status = server.status()
    assert status["models"]["fraud"]["control"]["canary_off"] is True
    assert "3" in status["models"]["fraud"]["shadow"]  # (a canary stopped is not a kill: the shadow runs on)
    assert status["models"]["fraud"]["control"]["canary_off_version"] == 2  # (the configured canary's, in code)
    assert (
        "  control file: canary v2 stopped: a configured canary sends no one to its version (`canary ... config` "
        "hands it back)"
    ) in summarize(status)
    page = inprocserve.render_status_page(status)
    assert "canary v2 stopped (control file)" in page
    assert "Canary stopped by the control file: the configured canary (version 2) sends no one" in page
    server.resume_configured_canary("fraud")
    assert answering(server) == {1, 2}
    assert "canary_off" not in server.status()["models"]["fraud"]["control"]
    # A canary-percent flag wins over the control file, as over any canary: stopping it says so.
    flags.set("fraud.canary.percent", 50)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.set_canary("fraud", None, percent=0)
    assert "the canary is now stopped, but the 'fraud.canary.percent' flag is set (50%)" in caplog.text
    assert answering(server) == {1, 2}


def test_the_admin_canary_action_stops_and_hands_back_a_configured_canary(
    repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(fraud_repository(repository))
    stopped = web.run_admin_action(server, "canary", "fraud", {"version": None}, actor="alice")
    assert (stopped["canary_version"], stopped["canary_off"]) == (None, True)
    assert answering(server) == {1}
    back = web.run_admin_action(server, "canary", "fraud", b'{"version": "config"}', actor="alice")
    assert (back["canary_version"], back["canary_off"]) == (None, False)
    assert answering(server) == {1, 2}
    refused = web.admin_answer(server, "canary", "fraud", {"version": "config", "percent": 5}, actor="alice")
    assert refused.status == 400 and "hands the canary back to the configuration" in refused.body["message"]


def test_the_admin_stop_answers_the_canary_version_it_recorded(repository: Path, make_server: ServerFactory) -> None:
    # An on-call script reads what its stop stopped from the answer, as the control file records it: the answer
    # said only `canary_off`, and the version had to be read back from `status`.
    models = fraud_repository(repository)
    server = make_server(models)
    stopped = web.admin_answer(server, "canary", "fraud", b'{"version": null}', actor="alice")
    assert stopped.status == 200
    assert (stopped.body["canary_off"], stopped.body["canary_off_version"]) == (True, 2)
    assert server.status()["models"]["fraud"]["control"]["canary_off_version"] == 2
    back = web.run_admin_action(server, "canary", "fraud", {"version": "config"}, actor="alice")
    assert (back["canary_off"], back["canary_off_version"]) == (False, None)
    own = web.run_admin_action(server, "canary", "fraud", {"version": 3, "percent": 5}, actor="alice")
    assert (own["canary_version"], own["canary_off"], own["canary_off_version"]) == (3, False, None)
    # With no configured canary (an A/B test) the stop records no version: null, not a missing key.
    (models / "fraud" / "config.toml").write_text(AB_IN_CONFIG)
    assert server.refresh() == []
    none = web.run_admin_action(server, "canary", "fraud", {"version": None}, actor="alice")
    assert (none["canary_off"], none["canary_off_version"]) == (True, None)


def test_the_admin_stop_answers_the_version_it_recorded_though_another_worker_writes_right_after(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another worker's admin call lands between this stop and the answer (a second on-call engineer hands the
    # canary back): the answer still says what this stop recorded, and the revision answered is the newer one.
    models = fraud_repository(repository)
    server = make_server(models)
    other = make_server(models)
    stop = server.set_canary

    def stop_then_other_worker_resumes(*args: object, **kwargs: object) -> int | None:
        recorded = stop(*args, **kwargs)  # type: ignore[arg-type]
        other.sync_control()
        other.resume_configured_canary("fraud", actor="bob")
        return recorded

    monkeypatch.setattr(server, "set_canary", stop_then_other_worker_resumes)
    stopped = web.run_admin_action(server, "canary", "fraud", {"version": None}, actor="alice")
    assert (stopped["canary_off"], stopped["canary_off_version"]) == (True, 2)
    assert not server.status()["models"]["fraud"]["control"].get("canary_off")  # (bob's: the revision answered)


def test_set_canary_returns_the_configured_version_a_stop_recorded(
    repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(fraud_repository(repository))
    assert server.set_canary("fraud", None, percent=0) == 2
    assert server.set_canary("fraud", 3, percent=5) is None


def test_canary_none_stops_a_canary_that_a_strategy_flag_turns_on(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # config.toml keeps a canary ready (version 2 at 10 %) under the stable strategy; a `fraud.strategy` flag
    # turns it on at run time. `canary ... none` is the on-call step for a bad canary, whatever turned it on.
    models = fraud_repository(repository, CANARY_IN_CONFIG.replace('strategy = "canary"', 'strategy = "stable"'))
    flags = inprocserve.InMemoryFlags()
    server = make_server(models, flags=flags, flag_timeout_s=10.0)
    assert answering(server) == {1}
    flags.set("fraud.strategy", "canary")
    assert answering(server) == {1, 2}
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    server.sync_control()
    assert answering(server) == {1}
    assert cli(capsys, "canary", str(models), "fraud", "config").returncode == 0
    server.sync_control()
    assert answering(server) == {1, 2}


def test_a_stopped_canary_stays_stopped_through_resume_switch_and_rollback_and_comes_back_to_the_same_users(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/operations.md: the stop is undone only by `canary ... config` (or a canary set), not by `resume`
    # after a kill, nor by a switch or a rollback; handed back, the canary has the users it had.
    models = fraud_repository(repository)
    server = make_server(models)
    rows = np.ones((1, 4), np.float32)

    def on_the_canary() -> set[int]:
        return {n for n in range(200) if server.predict("fraud", rows, context={"user_id": f"user-{n}"}).version == 2}

    before = on_the_canary()
    for command in (("kill",), ("canary", "none"), ("resume",), ("switch", "3"), ("rollback",)):
        assert cli(capsys, command[0], str(models), "fraud", *command[1:]).returncode == 0, command
        server.sync_control()
    assert answering(server) == {1}
    assert server.status()["models"]["fraud"]["control"]["canary_off"] is True
    assert cli(capsys, "canary", str(models), "fraud", "config").returncode == 0
    server.sync_control()
    assert on_the_canary() == before and before


def test_the_compatibility_gate_s_advance_keeps_a_stopped_canary_stopped(
    repository: Path, make_server: ServerFactory
) -> None:
    # The gate names a newer compatible version in a read-modify-write of the model's entry: the stop is kept.
    from inprocserve._control import ControlFile

    from .test_fleet_hold3 import _drop, _gate_named, _stable

    [running] = _gate_named(repository, make_server)
    assert main(["canary", str(repository), "m", "none"]) == 0
    running.sync_control()
    _drop(repository, 3, compatible=True)
    running.refresh()
    running.sync_control()
    assert _stable(repository) == (3, True)
    assert ControlFile(repository).read().models["m"].canary_off is True


def test_status_does_not_say_an_ab_test_stopped_after_canary_none(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # An on-call engineer runs step 2 (`canary ... none`) on a model running an A/B test: both arms keep answering,
    # so `status` must not read as if traffic went back to one version.
    models = fraud_repository(repository, AB_IN_CONFIG, versions=2)
    server = make_server(models)
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    server.sync_control()
    assert answering(server) == {1, 2}
    lines = [line for line in summarize(server.status()) if "canary stopped" in line]
    assert lines == [
        "  control file: canary stopped, but the configured strategy is 'ab': its arms still answer (`kill` stops them)"
    ]


def test_a_stopped_canary_s_version_stays_loaded_until_config_toml_no_longer_names_it(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/operations.md: the stopped canary's version stays loaded and warm (so `config` hands it back at once),
    # through a canary of another version; a config.toml without it frees it at the next `reload`.
    models = fraud_repository(repository)
    server = make_server(models)

    def loaded() -> dict[str, str]:
        return {n: entry["state"] for n, entry in server.status()["models"]["fraud"]["versions"].items()}

    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    server.sync_control()
    assert server.refresh() == []
    assert loaded() == {"1": "ready", "2": "ready", "3": "ready"}  # (3: the version policy's, the latest)
    assert cli(capsys, "canary", str(models), "fraud", "3", "5").returncode == 0
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    server.sync_control()
    assert "2" in loaded()
    (models / "fraud" / "config.toml").write_text("[rollout]\nstable = 1\n")
    assert cli(capsys, "reload", str(models)).returncode == 0
    server.sync_control()
    assert loaded() == {"1": "ready", "3": "ready"}
    assert answering(server) == {1}
    assert server.status()["models"]["fraud"]["control"]["canary_off"] is True  # (the stop itself is kept)


def test_status_says_a_canary_at_0_percent_replaces_an_ab_test(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # `canary ... VERSION 0` stops an A/B test as surely as `kill` (the control file's canary replaces the configured
    # strategy), and `status` printed no control line at all: it read as if the A/B test still ran.
    models = fraud_repository(repository, AB_IN_CONFIG, versions=2)
    server = make_server(models)
    assert cli(capsys, "canary", str(models), "fraud", "1", "0").returncode == 0
    server.sync_control()
    assert answering(server) == {2}  # (the stable version: with no stable alias, the latest)
    lines = [line for line in summarize(server.status()) if line.startswith("  control file:")]
    assert lines == [
        "  control file: canary v1 for 0% of users: it replaces the configured rollout, so the stable version answers "
        "(`canary ... config` hands it back)"
    ]
    assert cli(capsys, "canary", str(models), "fraud", "config").returncode == 0
    server.sync_control()
    assert answering(server) == {1, 2}
    assert not [line for line in summarize(server.status()) if line.startswith("  control file:")]


BANDIT_IN_CONFIG = (
    '[rollout]\nstrategy = "bandit"\n\n[rollout.variants.left]\nversion = 1\n\n[rollout.variants.right]\nversion = 2\n'
)


@pytest.mark.parametrize(("config", "strategy"), [(AB_IN_CONFIG, "ab"), (BANDIT_IN_CONFIG, "bandit")])
def test_the_status_page_does_not_badge_an_ab_test_or_bandit_as_stopped_after_canary_none(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str], config: str, strategy: str
) -> None:
    # The page's badge read "canary stopped (control file)", as if traffic went back to one version, above a
    # sentence listing the arms that still answer; the CLI's `status` says the arms answer.
    models = fraud_repository(repository, config, versions=2)
    server = make_server(models)
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    server.sync_control()
    status = server.status()
    assert status["models"]["fraud"]["rollout"]["strategy"] == strategy
    assert f"the configured strategy is {strategy!r}: its arms still answer" in "\n".join(summarize(status))
    page = inprocserve.render_status_page(status)
    assert "canary stopped; arms still answer (control file)" in page
    assert "canary stopped (control file)" not in page
    assert "Canary stopped by the control file, but its arms still answer (the kill switch stops them)." in page
    # A configured canary model keeps its badge, and the A/B sentence stays off it.
    (models / "fraud" / "config.toml").write_text(CANARY_IN_CONFIG)
    assert server.refresh() == []
    page = inprocserve.render_status_page(server.status())
    assert "canary stopped (control file)" in page and "arms still answer" not in page


# -- the stop is of the version stopped: a later deploy's canary of another version runs ---------------------------


@pytest.fixture
def warned_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning that a stop no longer applies is logged once per model and process: start with none logged."""
    from inprocserve import _registry

    monkeypatch.setattr(_registry, "_STOPS_NOT_APPLYING", set())


def on_version(server: inprocserve.Server, version: int) -> set[int]:
    rows = np.ones((1, 4), np.float32)
    return {n for n in range(200) if server.predict("fraud", rows, context={"user_id": f"user-{n}"}).version == version}


def deploy_canary_v3(models: Path, server: inprocserve.Server) -> None:
    """The team ships v3 as the new canary in config.toml (at the same 10 %), and the workers pick it up."""
    (models / "fraud" / "config.toml").write_text(CANARY_IN_CONFIG.replace("version = 2", "version = 3"))
    assert server.refresh() == []
    server.sync_control()


def test_a_stopped_canary_says_which_version_and_when_the_stop_no_longer_applies(
    repository: Path,
    make_server: ServerFactory,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    warned_afresh: None,
) -> None:
    models = fraud_repository(repository)
    server = make_server(models)
    on_v2 = on_version(server, 2)
    server.set_canary("fraud", None, percent=0)
    assert server.status()["models"]["fraud"]["control"]["canary_off_version"] == 2  # (the server's configuration)
    assert answering(server) == {1}
    assert "  control file: canary v2 stopped" in "\n".join(summarize(server.status()))
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        deploy_canary_v3(models, server)
        server.sync_control()
    # v3 answers its share (the users v2 had: the buckets are the configuration's), v2 no one.
    assert on_version(server, 3) == on_v2 and on_v2
    assert answering(server) == {1, 3}
    warnings = [r.getMessage() for r in caplog.records if "does not apply" in r.getMessage()]
    assert warnings == [
        "model 'fraud': the control file's stop of canary version 2 does not apply to the configured canary version 3, "
        "which now runs; `canary ... none` stops it"
    ]
    status = server.status()
    assert (
        "  control file: stop of v2 no longer applies: configured canary is v3, which runs (`canary ... none` stops it)"
    ) in summarize(status)
    page = inprocserve.render_status_page(status)
    assert "stop of v2 no longer applies: configured canary is v3" in page
    assert "canary v2 stopped (control file)" not in page
    # `canary ... none` again stops v3 (recording no version: the CLI cannot know the servers' configuration), and
    # `config` hands it back as before.
    again = cli(capsys, "canary", str(models), "fraud", "none")
    assert again.returncode == 0, again.stderr
    assert "canary_off_version" not in again.stdout
    server.sync_control()
    assert "  control file: canary stopped: a configured canary" in "\n".join(summarize(server.status()))
    assert answering(server) == {1}
    back = cli(capsys, "canary", str(models), "fraud", "config")
    assert back.returncode == 0, back.stderr
    assert "canary_off" not in back.stdout
    server.sync_control()
    assert on_version(server, 3) == on_v2


def test_a_canary_stopped_with_set_canary_or_the_admin_does_not_stop_the_next_configured_canary_version(
    repository: Path, make_server: ServerFactory, warned_afresh: None
) -> None:
    models = fraud_repository(repository)
    server = make_server(models)
    on_v2 = on_version(server, 2)
    server.set_canary("fraud", None, percent=0)
    assert server.status()["models"]["fraud"]["control"]["canary_off_version"] == 2
    assert answering(server) == {1}
    deploy_canary_v3(models, server)
    assert on_version(server, 3) == on_v2 and on_v2
    assert answering(server) == {1, 3}
    web.run_admin_action(server, "canary", "fraud", {"version": None}, actor="alice")
    assert server.status()["models"]["fraud"]["control"]["canary_off_version"] == 3
    assert answering(server) == {1}


def test_a_stop_whose_version_the_cli_cannot_know_stops_any_configured_canary_version(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # The configuration is in code (no config.toml): the CLI does not know the canary's version, and the stop holds
    # whatever version the configuration names, as before.
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "fraud", version)

    def configured(canary: int) -> dict[str, inprocserve.ModelConfig]:
        rollout = inprocserve.RolloutConfig(
            strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=canary, percent=30)
        )
        return {"fraud": inprocserve.ModelConfig(rollout=rollout)}

    assert answering(make_server(repository, models=configured(2))) == {1, 2}
    stopped = cli(capsys, "canary", str(repository), "fraud", "none")
    assert stopped.returncode == 0, stopped.stderr
    assert "canary_off_version" not in stopped.stdout
    assert answering(make_server(repository, models=configured(2))) == {1}
    assert answering(make_server(repository, models=configured(3))) == {1}


@pytest.mark.parametrize("value", [0, "x", True])
def test_a_stopped_canary_version_that_is_not_a_positive_int_is_refused(
    repository: Path, capsys: pytest.CaptureFixture[str], value: object
) -> None:
    models = fraud_repository(repository)
    entry = {"canary_version": None, "canary_off": True, "canary_off_version": value}
    (models / ".inprocserve-control.json").write_text(json.dumps({"revision": 1, "models": {"fraud": entry}}))
    refused = cli(capsys, "kill", str(models), "fraud")
    assert refused.returncode == 1
    assert (
        "control: models.fraud.canary_off_version must be a positive int (the canary version stopped) or null, got "
        f"{value!r}"
    ) in refused.stderr
    with pytest.raises(inprocserve.ConfigurationError, match="canary_off_version must be a positive int"):
        from inprocserve._control import ControlFile

        ControlFile(models).read()


def test_a_stopped_canary_without_a_version_stays_as_it_was(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stop that knows no version (no config.toml to read) writes no key for it, and its entry stays byte-identical
    # through other commands (an older release reads the file; diffs in a ConfigMap stay quiet).
    models = fraud_repository(repository)
    (models / "fraud" / "config.toml").unlink()
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    before = entry_kept_through_kill_and_resume(capsys, models)
    assert '"canary_off": true' in before
    assert "canary_off_version" not in (models / ".inprocserve-control.json").read_text()


def test_a_cli_stop_holds_on_servers_configured_in_code_whose_canary_is_not_config_toml_s(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # The servers run with their configuration in code (Flask's INPROCSERVE_MODELS: canary v3), while an older
    # config.toml in the repository still names canary v2. The on-call `canary ... none` must stop the canary that
    # answers: the CLI cannot know which configuration the servers use, so it records no version.
    models = fraud_repository(repository)
    rollout = inprocserve.RolloutConfig(
        strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=3, percent=30)
    )
    in_code = {"fraud": inprocserve.ModelConfig(rollout=rollout)}
    assert answering(make_server(models, models=in_code)) == {1, 3}
    stopped = cli(capsys, "canary", str(models), "fraud", "none")
    assert stopped.returncode == 0, stopped.stderr
    assert answering(make_server(models, models=in_code)) == {1}


def test_a_worker_forked_while_the_stop_warning_is_checked_still_warns(warned_afresh: None) -> None:
    # gunicorn --preload: the master published the model (and warned), and forks a worker while another of its
    # threads holds the warning's lock. The worker warns once itself, and does not hang on the copied lock.
    from inprocserve import _registry

    _registry._warn_stop_not_applying("fraud", 2, 3)
    with _registry._STOPS_NOT_APPLYING_LOCK:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker
            warned: list[object] = []
            _registry.logger.warning = lambda *args: warned.append(args)  # type: ignore[method-assign]
            check = threading.Thread(target=_registry._warn_stop_not_applying, args=("fraud", 2, 3), daemon=True)
            check.start()
            check.join(2)
            os._exit(2 if check.is_alive() else 0 if len(warned) == 1 else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "2: the worker hung on the lock; 3: it did not warn"


def test_a_stop_made_in_a_worker_that_has_not_read_the_deployed_canary_yet_stops_the_deployed_one(
    repository: Path, make_server: ServerFactory, warned_afresh: None
) -> None:
    # v3 is deployed as the canary (config.toml); one worker has picked it up, another not yet (its next poll).
    # The on-call stop lands on the late one: it must not record v2 as the version stopped, or the worker that
    # runs v3 keeps sending it its share.
    models = fraud_repository(repository)
    early, late = make_server(models), make_server(models)
    deploy_canary_v3(models, early)
    assert answering(early) == {1, 3}
    late.set_canary("fraud", None, percent=0)
    early.sync_control()
    assert answering(early) == {1}


@pytest.mark.parametrize(("config", "strategy"), [(AB_IN_CONFIG, "ab"), (BANDIT_IN_CONFIG, "bandit")])
def test_a_stopped_canary_on_an_ab_test_or_bandit_with_the_kill_switch_on_says_no_arm_answers(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str], config: str, strategy: str
) -> None:
    # `canary ... none` then `kill`: the stable version alone answers, yet the page badged "canary stopped; arms
    # still answer" beside "kill switch on", and `status` printed "its arms still answer" under "KILL SWITCH ON".
    models = fraud_repository(repository, config, versions=2)
    server = make_server(models)
    assert cli(capsys, "canary", str(models), "fraud", "none").returncode == 0
    assert cli(capsys, "kill", str(models), "fraud").returncode == 0
    server.sync_control()
    assert answering(server) == {2}
    status = server.status()
    lines = [line for line in summarize(status) if line.startswith("  ")]
    assert not [line for line in lines if "arms still answer" in line], lines
    assert "  control file: canary stopped: the kill switch is on, so no arm answers (`resume` turns it off)" in lines
    page = inprocserve.render_status_page(status)
    assert "arms still answer" not in page
    assert "kill switch on" in page and "canary stopped (control file)" in page
