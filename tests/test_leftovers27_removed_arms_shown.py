"""A bandit arm a reload removed, shown where an operator reads a rollout's arms: the status page, served by a
real Flask app over loopback HTTP, and ``python -m inprocserve status`` reading the same app.

Version N of the ``scale`` model answers ``y = x * N``. The removed arm's name holds markup and a right-to-left
override (arm names come from a config.toml): both show as inert text.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inprocserve import _rollout
from inprocserve.__main__ import main

X = np.ones((1, 4), np.float32)
TOKEN = "status-token-removed-arms"
ARM = "b<i>\u202e"  # what the page and the CLI must show inert
HEAD = '[rollout]\nstrategy = "bandit"\nstable = 1\nseed = 7\n[rollout.variants]\na = { version = 1 }\n'
ARM_B = '"b<i>\\u202e" = { version = 2 }\n'


@pytest.fixture
def app_url(versions: Path) -> Iterator[tuple[str, list[str]]]:
    """A Flask app whose bandit over a, b and c served 60 keys, one outcome credited to b, then a reload that
    removed arm b and its version 2; yields the app's URL and the request ids b served."""
    flask = pytest.importorskip("flask")
    inprocserve_flask = pytest.importorskip("inprocserve_flask")
    from werkzeug.serving import make_server

    toml = versions / "scale" / "config.toml"
    toml.write_text(HEAD + ARM_B + "c = { version = 3 }\n")
    app = flask.Flask("removed_arms")
    app.config.update(
        INPROCSERVE_REPOSITORY=str(versions),
        INPROCSERVE_STATUS_PAGE=True,
        INPROCSERVE_STATUS_PAGE_TOKEN=TOKEN,
        INPROCSERVE_ADMIN_TOKEN=TOKEN,
    )
    extension = inprocserve_flask.Inprocserve(app)
    server = inprocserve_flask.server  # (the app's, within its context)
    with app.app_context():
        results = [server.predict("scale", X, context={"user_id": f"u{i}"}) for i in range(60)]
        on_b = [result.request_id for result in results if result.variant == ARM]
        assert len(on_b) >= 2
        assert server.record_outcome(on_b[0], 1.0) == ARM
        toml.write_text(HEAD + "c = { version = 3 }\n")
        shutil.rmtree(versions / "scale" / "2")
        assert server.refresh() == []
        assert set(server.status()["models"]["scale"]["rollout"]["removed_variants"]) == {ARM}
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}", on_b
    finally:
        http.shutdown()
        thread.join(timeout=10)
        http.server_close()
        extension.close(app)


def _page(url: str) -> str:
    request = urllib.request.Request(f"{url}/-/inprocserve/status", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
        return str(answer.read().decode("utf-8"))


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m inprocserve ARGS`` run in this process (as tests/test_cli.py's ``cli``)."""
    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as exit_info:
        status = exit_info.code if isinstance(exit_info.code, int) else 2
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["inprocserve", *args], status, captured.out, captured.err)


def test_the_status_page_shows_a_removed_arm_its_final_numbers_and_how_long_they_are_kept(
    app_url: tuple[str, list[str]],
) -> None:
    url, on_b = app_url
    page = _page(url)
    assert "<h3>Removed arms</h3>" in page
    shown = "b&lt;i&gt;\\u202e"  # (escaped, the override shown as its escape: not obeyed)
    assert "\u202e" not in page and "<i>" not in page
    assert (
        f"<tr><td>{shown}<span class=\"badge warn\">removed</span></td><td class='n'>2</td>"
        f"<td class='n'>{len(on_b)}</td><td class='n'>1</td><td class='n'>1</td></tr>"
    ) in page
    assert "for an hour after the reload that removed them" in page
    assert _rollout._ASSIGNMENT_TTL_S == 3600.0  # (the hour the page and the CLI say)


def test_status_prints_a_removed_arm_its_final_numbers_and_how_long_they_are_kept(
    app_url: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, on_b = app_url
    result = _cli(capsys, "status", url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        f"  removed arm b<i>\\u202e (v2): served {len(on_b)}, outcomes 1, mean reward 1; removed by a reload, no "
        "new request goes to it, kept for late outcomes by request id for an hour after that reload"
    ) in lines
    assert "\u202e" not in result.stdout
    rollout_line = next(line for line in lines if line.startswith("  rollout bandit: served "))
    assert "b<i>" not in rollout_line  # (it answers no more: not among the arms that do)


def test_a_removed_arm_that_is_no_object_is_a_malformed_status_named_by_its_place() -> None:
    from inprocserve._cli_status import MalformedStatusError, summarize

    document = {"models": {"m": {"ready": True, "rollout": {"strategy": "bandit", "removed_variants": {"b": 3}}}}}
    with pytest.raises(MalformedStatusError, match=r"models\.m\.rollout\.removed_variants\.b is a number"):
        summarize(document)
