"""A control file edited by hand, or written by another writer with odd values: what the fleet says about it.

Real servers on real models; the CLI as an operator runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inprocserve import _control, _unique_json
from inprocserve._control import CONTROL_FILENAME
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

X = np.ones((1, 4), np.float32)


@pytest.fixture
def two_models(repository: Path) -> Path:
    for name in ("fraud", "search"):
        for version in (1, 2):
            save_model(build_scale_model(float(version)), repository, name, version)
    return repository


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inprocserve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        check=False,
    )


def test_a_bad_value_in_one_model_s_entry_names_that_model(two_models: Path, make_server: ServerFactory) -> None:
    """A fleet's file holds many models: "canary_percent must lie in 0..100, got 150" sent the operator
    looking through every entry for the one a hand edit broke."""
    server = make_server(two_models, control_interval_s=None)
    server.set_canary("search", 2, percent=10)
    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["models"]["fraud"] = {"canary_version": 2, "canary_percent": 150}  # meant 15
    control.write_text(json.dumps(document))

    assert server.sync_control() == 1  # the last good revision stays in force
    error = server.status()["control"]["error"]
    assert "models.fraud.canary_percent must lie in 0..100, got 150" in error
    refused = run_cli("kill", str(two_models), "search")  # a writer refuses, and says where to look
    assert refused.returncode == 1
    assert "models.fraud.canary_percent must lie in 0..100" in refused.stderr


def test_a_bad_entry_under_a_long_odd_name_is_said_in_one_short_line(
    two_models: Path, make_server: ServerFactory
) -> None:
    """The name of a model's entry is whatever the file holds: quoted whole, 5,000 characters and a line
    break went into status (on every call, readiness's too) and made two lines of the log."""
    server = make_server(two_models, control_interval_s=None)
    server.kill("fraud")
    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["models"]["x" * 5000 + "\nOK fraud"] = "kill"
    control.write_text(json.dumps(document))

    assert server.sync_control() == 1
    error = server.status()["control"]["error"]
    assert "must be an object" in error
    assert "\n" not in error and len(error) < 400


def test_a_long_or_multi_line_actor_is_shown_short_and_followed_without_a_warning(
    two_models: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``updated_by`` and ``updated_at`` are free text (``--actor``, ``actor=``, a hand edit): 900 kB of it went
    whole into every ``status()`` and into each worker's "following control revision" log line, and a line
    break in it forged a line of the log."""
    writer = make_server(two_models, control_interval_s=None)
    reader = make_server(two_models, control_interval_s=None)
    actor = "alice" + "x" * 900_000 + "\nERROR forged line"
    with caplog.at_level("INFO", logger="inprocserve"):
        writer.kill("fraud", actor=actor)
        assert reader.sync_control() == 1
        assert writer.sync_control() == 1  # what it wrote is what it follows: nothing to warn about
    for server in (writer, reader):
        status = server.status()
        assert status["control"]["updated_by"].startswith("alice")
        assert len(json.dumps(status)) < 20_000
        assert "\n" not in status["control"]["updated_by"]
    assert all(len(record.getMessage()) < 2_000 for record in caplog.records)
    assert not any("\n" in record.getMessage() for record in caplog.records)
    assert "another document" not in caplog.text

    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document.update(revision=5, updated_by="bob\x1b[2J", updated_at={"when": "now"})
    control.write_text(json.dumps(document))  # a hand edit
    assert reader.sync_control() == 5
    shown = reader.status()["control"]
    assert shown["updated_by"] == "bob\\x1b[2J" and isinstance(shown["updated_at"], str)
    assert reader.predict("fraud", X).version == 2  # the kill switch stays followed


def test_a_model_named_twice_by_a_hand_edit_is_refused_not_half_followed(
    two_models: Path, make_server: ServerFactory
) -> None:
    """In an incident an operator added ``"fraud": {"kill": true}`` at the top of ``models``, where ``fraud``
    already had its entry further down: JSON keeps the last one, so every worker followed the new revision
    without the kill switch, and nothing said so (status showed no error)."""
    server = make_server(two_models, control_interval_s=None)
    server.switch("fraud", 1)
    control = two_models / CONTROL_FILENAME
    text = control.read_text()
    edited = text.replace('"models": {', '"models": {"fraud": {"kill": true, "stable": 1}, ', 1)
    control.write_text(edited.replace('"revision": 1', '"revision": 2', 1))

    assert server.sync_control() == 1  # not followed: which entry was meant?
    error = server.status()["control"]["error"]
    assert "'fraud' twice" in error
    refused = run_cli("resume", str(two_models), "fraud")  # nor overwritten, dropping one of the two
    assert refused.returncode == 1 and "'fraud' twice" in refused.stderr
    assert control.read_text() == edited.replace('"revision": 1', '"revision": 2', 1)


def with_unknown_keys(repository: Path, revision: int, count: int = 400) -> None:
    """Write the control file again as revision ``revision``, with ``count`` keys this release does not know
    at the top and as many in fraud's entry (a newer release's keys, written during a rolling upgrade)."""
    control = repository / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document.update({f"n{index}": 0 for index in range(count)})
    document["models"]["fraud"].update({f"n{index}": 0 for index in range(count)})
    document["revision"] = revision
    control.write_text(json.dumps(document, separators=(",", ":")))


def test_readiness_and_status_work_out_the_unknown_keys_once_per_revision(
    two_models: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control file of the 1 MiB servers read holds 80,000 keys this release does not know (status names 20
    of them): each readiness probe and each status call sorted, escaped and cut all 80,000 again, 20 ms a call
    (0.05 ms without them), on endpoints a load balancer and a scraper poll. (Counted, not timed: a unit
    test's timings are the shared host's.)"""
    server = make_server(two_models, control_interval_s=None)
    server.kill("fraud")
    with_unknown_keys(two_models, 2)
    assert server.sync_control() == 2  # (unknown keys are ignored: the file is followed)
    status = server.status()["control"]
    assert status["unknown_keys_count"] == 800 and len(status["unknown_keys"]) == 20
    shown: list[str] = []  # each key name escaped and cut for a person
    show = _control._shown_name
    monkeypatch.setattr(_control, "_shown_name", lambda name: shown.append(name) or show(name))

    for _ in range(5):
        server.readiness()
        server.status(include_paths=False)

    assert shown == []  # worked out when the revision was read, not again at each call


def test_a_control_file_that_does_not_change_is_not_parsed_again_each_interval(
    two_models: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker's watcher reads the file every ``control_interval_s`` (0.5 s): one of 850 kB (a newer
    release's keys) was parsed, compared and its keys sorted again at each read, 75 ms of CPU each time (15 %
    of a core per worker, for a file that had not changed). (Counted, not timed, as above.)"""
    server = make_server(two_models, control_interval_s=None)
    server.kill("fraud")
    with_unknown_keys(two_models, 2)
    assert server.sync_control() == 2
    parsed: list[bytes | str] = []
    loads = _unique_json.loads
    monkeypatch.setattr(_unique_json, "loads", lambda raw: parsed.append(raw) or loads(raw))

    for _ in range(10):  # (the watcher's reads)
        assert server.sync_control() == 2
    assert parsed == []
    assert server.predict("fraud", X).version == 2  # (still followed: the kill switch)

    with_unknown_keys(two_models, 3)  # a change (another host's write) is parsed, and followed, as before
    assert server.sync_control() == 3
    assert len(parsed) == 1


def add_by_hand(repository: Path, model: str, entry: dict[str, object], *, revision: int) -> None:
    """Edit the control file as an operator would: a model's entry added, the revision raised."""
    control = repository / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["models"][model] = entry
    document["revision"] = revision
    control.write_text(json.dumps(document))


def test_an_entry_for_a_misspelt_model_is_said_once(
    two_models: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """In an incident an operator added ``"frud": {"kill": true}`` by hand: every worker followed the revision,
    no kill switch was in force for ``fraud``, and neither the log nor status said anything (a misspelt key,
    ``"kil"``, is named with the key it is close to)."""
    server = make_server(two_models, control_interval_s=None)
    server.switch("fraud", 1)
    add_by_hand(two_models, "frud", {"kill": True}, revision=2)
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.sync_control() == 2
        assert server.sync_control() == 2
    said = [record.getMessage() for record in caplog.records if "frud" in record.getMessage()]
    assert len(said) == 1 and "fraud" in said[0]


def test_an_entry_for_a_misspelt_model_is_said_by_a_server_that_starts_with_it(
    two_models: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, for a worker that starts after the hand edit (a deploy, a worker recycled after
    ``max_requests``): it read the file before it loaded its models, when no entry could look like a typo
    of one, took the revision as checked, and said nothing for as long as it followed it."""
    make_server(two_models, control_interval_s=None).switch("fraud", 1)
    add_by_hand(two_models, "frud", {"kill": True}, revision=2)
    with caplog.at_level("WARNING", logger="inprocserve"):
        server = make_server(two_models, control_interval_s=None)
        assert server.sync_control() == 2  # (the watcher's read)
        assert server.sync_control() == 2
    said = [record.getMessage() for record in caplog.records if "frud" in record.getMessage()]
    assert len(said) == 1 and "fraud" in said[0]


def test_entries_for_several_misspelt_models_read_as_a_list(
    two_models: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Each misspelt name is given with the name it is close to, as one item of the list: the hint's own
    "; did you mean" read "'frud'; did you mean 'fraud'?, 'serch'; did you mean 'search'?. Nothing ..."."""
    server = make_server(two_models, control_interval_s=None)
    server.switch("fraud", 1)
    add_by_hand(two_models, "frud", {"kill": True}, revision=2)
    add_by_hand(two_models, "serch", {"kill": True}, revision=3)
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.sync_control() == 3
    said = [record.getMessage() for record in caplog.records if "frud" in record.getMessage()]
    assert len(said) == 1
    assert "'frud' (did you mean 'fraud'?), 'serch' (did you mean 'search'?); nothing here follows them" in said[0]


@pytest.mark.parametrize(
    "entry",
    [{"kill": "yes " * 200_000}, {"stable": -(10**4000)}, {"canary_version": 2, "canary_percent": 10**4000}],
    ids=["a long text for kill", "a huge stable version", "a huge percent"],
)
def test_a_huge_bad_value_is_quoted_short(
    two_models: Path, make_server: ServerFactory, entry: dict[str, object]
) -> None:
    """The value of a hand edit's bad entry was quoted whole: ``"kill": "yes yes ..."`` of 800 kB went into
    ``control.error`` on every status() and readiness call, and into the log line, as did an int of 4,000
    digits."""
    server = make_server(two_models, control_interval_s=None)
    server.kill("fraud")
    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["models"]["fraud"] = entry
    control.write_text(json.dumps(document))

    assert server.sync_control() == 1
    error = server.status()["control"]["error"]
    assert error.startswith("control: models.fraud.") and len(error) < 300


def test_an_unknown_key_with_a_line_break_is_named_on_one_line(
    two_models: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Unknown keys are named in the log's warning, in status and by ``validate``: a key (or the name of its
    model) holding a line break made the warning two lines, the second one whatever the file said."""
    server = make_server(two_models, control_interval_s=None)
    server.kill("fraud")
    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["note\nCRITICAL inprocserve: disk full"] = "x"
    document["models"]["fraud"]["why\x1b[2J"] = "incident 42"
    document["revision"] = 2
    control.write_text(json.dumps(document))
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.sync_control() == 2
    warning = next(record.getMessage() for record in caplog.records if "does not know" in record.getMessage())
    assert "\n" not in warning and "\x1b" not in warning
    assert "note\\nCRITICAL" in warning and "models.fraud.why\\x1b[2J" in warning
    assert server.status()["control"]["unknown_keys"] == [
        "note\\nCRITICAL inprocserve: disk full",
        "models.fraud.why\\x1b[2J",
    ]


def test_a_hand_edit_that_keeps_the_revision_is_followed_and_the_warning_names_a_hand_edit(
    two_models: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator who edits the file by hand (the kill switch back off) and leaves its revision as it was
    is followed; the warning said only "two writers wrote separate copies (a host's synced copy written
    to?)", which sent them looking for a second writer that does not exist."""
    server = make_server(two_models, control_interval_s=None)
    server.kill("fraud", actor="alice")
    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["models"]["fraud"]["kill"] = False  # by hand: revision, updated_by and updated_at kept
    control.write_text(json.dumps(document))
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.sync_control() == 1
    assert server.status()["models"]["fraud"]["control"]["kill"] is False  # followed
    (warning,) = [r.getMessage() for r in caplog.records if "another document under revision 1" in r.getMessage()]
    assert "by hand" in warning and "two writers" in warning, warning


@pytest.mark.parametrize("first", ["revision 3 by hand", "revision 0 by hand, where there was no file"])
def test_a_hand_edit_of_a_hand_written_revision_says_what_is_known_of_both_not_none(
    two_models: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    """Two hand edits under one revision, neither with an author or a time: the warning read "(by None at None;
    was by None at None)"."""
    server = make_server(two_models, control_interval_s=None)
    control = two_models / CONTROL_FILENAME
    revision = 3 if first.startswith("revision 3") else 0
    if revision:
        control.write_text(json.dumps({"revision": revision, "models": {"fraud": {"stable": 1}}}))
        assert server.sync_control() == revision
    control.write_text(json.dumps({"revision": revision, "models": {"fraud": {"stable": 2}}}))
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.sync_control() == revision
    assert server.predict("fraud", X).version == 2  # followed
    (warning,) = [r.getMessage() for r in caplog.records if "another document under revision" in r.getMessage()]
    assert "None" not in warning, warning
    before = (
        "its author and time are not recorded: written by hand?"
        if revision
        else "no change written yet: no control file, or an empty one"
    )
    assert f"(now: its author and time are not recorded: written by hand?; before: {before})" in warning, warning
