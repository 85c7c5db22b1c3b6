"""The mistakes a team makes in its first hour, followed as docs/quickstart.md and docs/repository.md lay
the repository out: each error says what to fix, not only what was not found.

(A model folder whose file sits one level too high, or a version folder named ``v1``, was answered "unknown
model 'fraud' (servable models: none)", the same words as a typo in the name; a version on disk that the
version policy does not serve was "no servable version 1", as if it were absent.)
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import inprocserve
from inprocserve._registry import did_you_mean
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

ROW = {"x": np.ones((1, 4), np.float32)}


def place(repository: Path, relative: str) -> None:
    """A scale model's file at ``repository/relative`` (a path a newcomer might choose)."""
    target = repository / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_scale_model(2.0), target)


@pytest.mark.parametrize("relative", ["fraud/model.onnx", "fraud/v1/model.onnx", "fraud/1/fraud.onnx"])
def test_a_model_folder_without_a_version_says_so_not_only_unknown_model(
    make_server: ServerFactory, repository: Path, relative: str
) -> None:
    place(repository, relative)
    server = make_server(repository)
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.predict("fraud", ROW)
    message = str(caught.value)
    assert "unknown model 'fraud'" in message  # (the start that the plug-ins' 404 and older callers read)
    assert "no version folder" in message and "validate" in message, message
    assert str(repository) not in message  # (it reaches HTTP clients: no host paths)


def test_a_typo_in_the_name_gets_no_layout_hint(make_server: ServerFactory, repository: Path) -> None:
    place(repository, "fraud/1/model.onnx")
    server = make_server(repository)
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.predict("frad", ROW)
    assert str(caught.value) == "unknown model 'frad' (servable models: fraud); did you mean 'fraud'?"


@pytest.mark.parametrize(("sent", "meant"), [("fruad", "fraud"), ("Scale", "scale"), ("fraud-v2", "fraud")])
def test_an_unknown_model_names_the_served_model_it_is_close_to(
    make_server: ServerFactory, repository: Path, sent: str, meant: str
) -> None:
    """A typo was answered with the list of every served model, in which the caller had to spot its own."""
    place(repository, "fraud/1/model.onnx")
    place(repository, "scale/1/model.onnx")
    server = make_server(repository)
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.predict(sent, ROW)
    assert str(caught.value).endswith(f"(servable models: fraud, scale); did you mean {meant!r}?"), caught.value
    assert caught.value.model == sent and caught.value.version is None


@pytest.mark.parametrize("sent", ["churn", "fraud" * 200_000])
def test_an_unknown_model_close_to_none_gets_no_guess_and_a_long_one_is_not_echoed(
    make_server: ServerFactory, repository: Path, sent: str
) -> None:
    place(repository, "fraud/1/model.onnx")
    server = make_server(repository)
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.predict(sent, ROW)
    message = str(caught.value)
    assert "did you mean" not in message and message.endswith("(servable models: fraud)"), message[:300]
    assert len(message) < 200, message[:300]


def test_a_version_on_disk_that_the_policy_does_not_serve_names_the_policy(
    make_server: ServerFactory, repository: Path
) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    server = make_server(repository)  # version_policy "latest": 2 alone
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.predict("fraud", ROW, version=1)
    message = str(caught.value)
    assert message.startswith("model 'fraud' has no servable version 1 (servable: 2)"), message
    assert "version_policy" in message and "in the repository" in message, message
    with pytest.raises(inprocserve.ModelNotFoundError) as absent:  # a number that is nowhere: no such hint
        server.predict("fraud", ROW, version=7)
    assert str(absent.value) == "model 'fraud' has no servable version 7 (servable: 2)"


def test_a_layout_fixed_on_disk_serves_and_drops_the_hint(make_server: ServerFactory, repository: Path) -> None:
    place(repository, "fraud/model.onnx")
    server = make_server(repository)
    (repository / "fraud" / "model.onnx").rename(repository / "fraud" / "model.tmp")
    (repository / "fraud" / "1").mkdir()
    (repository / "fraud" / "model.tmp").rename(repository / "fraud" / "1" / "model.onnx")
    server.refresh()
    assert server.predict("fraud", ROW).version == 1


@pytest.mark.parametrize(
    ("build", "fix"),
    [
        (lambda: inprocserve.ModelConfig(version_policy="all"), "inprocserve.VersionPolicy.all()"),
        (lambda: inprocserve.ModelConfig(version_policy={"latest": 2}), "inprocserve.VersionPolicy.latest(2)"),
        (lambda: inprocserve.ModelConfig(batching={"max_batch_size": 8}), "inprocserve.BatchingConfig("),
        (lambda: inprocserve.ModelConfig(pool={"size": 2}), "ModelConfig().merged({'pool': {...}})"),
    ],
)
def test_a_config_toml_value_given_to_model_config_in_code_says_how_to_build_it(build: Any, fix: str) -> None:
    """repository.md's table gives version_policy as "all" and { latest = 2 } (config.toml's words): the same
    in code was "version_policy must be a VersionPolicy, got 'all'", naming no way to make one."""
    with pytest.raises(inprocserve.ConfigurationError) as caught:
        build()
    assert fix in str(caught.value), caught.value


def test_validate_pointed_at_a_model_folder_says_to_pass_the_repository(repository: Path) -> None:
    """``validate models/fraud`` (the model folder, not the repository) advised moving each version's file
    into a version folder of its own ("move it into a version folder: models/fraud/1/1/model.onnx")."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    model_folder = repository / "fraud"
    report = inprocserve.check_repository(model_folder)
    text = "\n".join(report["problems"])
    assert "1/1/model.onnx" not in text, text
    assert f"pass the folder that holds it ({repository})" in text, text


def test_an_empty_list_of_rows_is_said_to_hold_no_rows(make_server: ServerFactory, repository: Path) -> None:
    """A client's ``{"transactions": []}`` was "expected 2 dimensions [batch, 4], got 1 (shape [0])": true
    of the array numpy makes of ``[]``, but the request's fault is that it holds no row."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    server = make_server(repository)
    with pytest.raises(inprocserve.InvalidInputError) as caught:
        server.predict("fraud", {"x": []})
    assert "send at least one row" in str(caught.value), caught.value
    with pytest.raises(inprocserve.InvalidInputError) as one_axis_short:  # a row without its list: no such hint
        server.predict("fraud", {"x": [1.0, 2.0, 3.0, 4.0]})
    assert "send at least one row" not in str(one_axis_short.value)


@pytest.mark.parametrize(
    ("variable", "text", "fix"),
    [
        ("INPROCSERVE_FLAG_FRAUD_KILL", "True", "true or false, unquoted and in lower case"),
        ("INPROCSERVE_FLAG_FRAUD_KILL", '"true"', "true or false, unquoted and in lower case"),
        ("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", '"10"', "write the number unquoted"),
    ],
)
def test_a_flag_written_as_text_says_how_to_write_it(
    make_server: ServerFactory, repository: Path, monkeypatch: pytest.MonkeyPatch, variable: str, text: str, fix: str
) -> None:
    """rollouts.md's env column (INPROCSERVE_FLAG_FRAUD_KILL=true): written True, as Python spells it, the
    kill switch was "unusable flag: flag 'fraud.kill' must be a boolean, got 'True'", which does not say
    that EnvFlags reads JSON, where the word is true."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    canary = inprocserve.RolloutConfig(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2))
    monkeypatch.setenv(variable, text)
    server = make_server(
        repository, flags=inprocserve.EnvFlags(), models={"fraud": inprocserve.ModelConfig(rollout=canary)}
    )
    answer = server.predict("fraud", ROW, context={"user_id": "u-1"})
    assert answer.variant == "stable" and "unusable flag" in answer.reason
    assert fix in answer.reason, answer.reason


def test_a_flag_of_the_wrong_kind_gets_no_spelling_hint(make_server: ServerFactory, repository: Path) -> None:
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    flags = inprocserve.InMemoryFlags({"fraud.kill": "yes"})
    server = make_server(repository, flags=flags)
    answer = server.predict("fraud", ROW)
    assert answer.reason.endswith("must be a boolean, got 'yes'"), answer.reason


def test_a_server_without_a_repository_says_so_when_a_model_is_asked_for(make_server: ServerFactory) -> None:
    """Flask's Inprocserve(app) called before app.config["INPROCSERVE_REPOSITORY"] is set (the keys are read
    once, in init_app) builds a server with no repository: every request was "unknown model 'fraud'
    (servable models: none)", the words of a typo."""
    server = make_server()
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.predict("fraud", ROW)
    message = str(caught.value)
    assert message.startswith("unknown model 'fraud' (servable models: none)"), message
    assert "no model repository" in message and "INPROCSERVE_REPOSITORY" in message, message


def test_a_server_without_a_repository_that_serves_models_loaded_by_hand_lists_them(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    path = save_model(build_scale_model(2.0), tmp_path / "elsewhere", "scale", 1)
    server = make_server()
    server.load("scale", path=path)
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.predict("fraud", ROW)
    assert str(caught.value) == "unknown model 'fraud' (servable models: scale)"


def test_score_given_a_model_folder_says_to_give_a_version_folder(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m inprocserve score models/fraud rows.npy out.npy`` (the model folder, between the version
    folder and the repository it takes) said "the repository models/fraud serves no models; pick one with
    --name": no model to pick, and --name could not help."""
    from inprocserve._cli import main

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    np.save(tmp_path / "rows.npy", np.ones((3, 4), np.float32))
    code = main(["score", "--quiet", str(repository / "fraud"), str(tmp_path / "rows.npy"), str(tmp_path / "y.npy")])
    error = capsys.readouterr().err
    assert code == 1 and "pick one with --name" not in error, error
    assert f"{repository / 'fraud'} is a model folder" in error and str(repository / "fraud" / "2") in error, error
    assert f"{repository} --name fraud" in error, error


@pytest.mark.parametrize("given", ["fraud", "."])
def test_inspect_given_a_model_folder_or_the_repository_names_a_version_folder_to_give(
    repository: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    """``inspect models/fraud`` said "no such model file" of a folder that holds two versions of one."""
    from inprocserve._cli import main

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    folder = repository / given
    assert main(["inspect", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "give one of its version folders" in error and str(folder / "fraud" if given == "." else folder) in error
    assert str((folder / "fraud" / "2") if given == "." else (folder / "2")) in error, error


def test_validate_given_a_model_file_says_to_give_the_repository_or_inspect_the_file(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``validate models/fraud/2/model.onnx`` said only "model repository '...model.onnx' is not a directory"."""
    from inprocserve._cli import main

    file = save_model(build_scale_model(2.0), repository, "fraud", 2)
    assert main(["validate", str(file)]) == 2
    error = capsys.readouterr().err
    assert "is not a directory" in error and f"validate {repository}" in error and f"inspect {file}" in error, error


def test_guessing_the_meant_model_compares_a_few_names_whatever_the_client_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any client may send unknown names, and each comparison costs tens of microseconds: among 1,000 served
    names of the sent name's length none is compared (16 ms a refused request before); among names of other
    lengths the typo's own is still found."""
    compared: list[str] = []
    ratio = difflib.SequenceMatcher.ratio

    def counted(matcher: difflib.SequenceMatcher[str]) -> float:
        compared.append(str(matcher.a))
        return ratio(matcher)

    monkeypatch.setattr(difflib.SequenceMatcher, "ratio", counted)
    same_length = [f"model-{i:04d}" for i in range(1000)]
    assert did_you_mean("model-00x1", same_length) == ""
    assert compared == []
    others = [f"a-model-with-a-much-longer-name-{i}" for i in range(1000)]
    assert did_you_mean("fruad", ["fraud", *others]) == "; did you mean 'fraud'?"
    assert did_you_mean("fruad" * 100_000, ["fraud", *others]) == ""
    assert len(compared) <= 8, len(compared)
