"""Hostile entries dropped into a polled repository while it serves: odd model names, symbolic links out of
the repository, external data pointing at /etc/passwd. None may ever answer; the good model never stops."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from ..conftest import ServerFactory
from ..test_integrity import initializer_model
from .conftest import Tally, deadline_after, report, soak_seconds

X = np.ones((1, 4), dtype=np.float32)
NAMES = ["..", ".hidden", "a b", "x" * 200, "caf\u00e9", "-", "m;rm -rf", "$(id)", "UPPER", "a.b-c_d"]
VALID = {"UPPER", "a.b-c_d"}  # odd-looking but valid names: these may serve


def plant(repository: Path, outside: Path, round_: int) -> dict[str, str]:
    """One round of hostile entries; returns model name -> what it is (names that must never serve)."""
    planted: dict[str, str] = {}
    depth = len(repository.resolve().parts) + 2
    passwd = initializer_model({"location": "../" * depth + "etc/passwd", "length": "16"})
    save_model(passwd, repository, f"passwd{round_}", 1)
    planted[f"passwd{round_}"] = "external data ../../etc/passwd"
    absolute = initializer_model({"location": "/etc/passwd", "length": "16"})
    save_model(absolute, repository, f"absolute{round_}", 1)
    planted[f"absolute{round_}"] = "external data /etc/passwd"
    (repository / f"linked{round_}").symlink_to(outside, target_is_directory=True)
    planted[f"linked{round_}"] = "model folder linked out of the repository"
    version = repository / f"vlinked{round_}"
    version.mkdir()
    (version / "1").symlink_to(outside / "1", target_is_directory=True)
    planted[f"vlinked{round_}"] = "version folder linked out"
    weights = repository / f"weightlink{round_}" / "1"
    save_model(initializer_model({"location": "w.bin"}), repository, f"weightlink{round_}", 1)
    (weights / "w.bin").symlink_to("/etc/passwd")
    planted[f"weightlink{round_}"] = "external data through a link to /etc/passwd"
    for name in NAMES:
        try:  # written directly: save_model itself refuses the names a repository scan refuses
            folder = repository / name / "1"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model.onnx").write_bytes(build_scale_model(9.0).SerializeToString())
        except OSError:
            continue  # the file system refuses it itself
        if name in VALID:
            continue
        planted.setdefault(name, "hostile name")
    return planted


@pytest.mark.skipif(not os.path.exists("/etc/passwd"), reason="needs /etc/passwd to aim at")
def test_hostile_entries_never_serve_and_the_good_model_keeps_answering(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "good", 1)
    outside = tmp_path / "outside" / "m"
    save_model(build_scale_model(5.0), tmp_path / "outside", "m", 1)
    server = make_server(repository, poll_interval_s=0.05)
    end = deadline_after(soak_seconds())
    tally = Tally()
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                ok = np.array_equal(server.predict("good", {"x": X})["y"], X * 2)
            except Exception as exc:
                tally.untyped.append(repr(exc))
                return
            tally.counts["good_answered"] += 1
            if not ok:
                tally.wrong.append("good model answered wrongly")

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    planted: dict[str, str] = {}
    rounds = asked = 0
    try:
        while deadline_after(0) < end or rounds == 0:
            planted.update(plant(repository, outside, rounds))
            server.refresh()
            for name, what in planted.items():
                asked += 1
                try:
                    result = server.predict(name, {"x": X})
                except inprocserve.InprocserveError as exc:
                    tally.counts[type(exc).__name__] += 1
                    continue
                except Exception as exc:
                    tally.untyped.append(f"{name}: {exc!r}")
                    continue
                tally.wrong.append(f"{name} ({what}) answered {result['y']!r}")
            rounds += 1
            if rounds % 3 == 0:  # clear out, so the folder does not grow without bound
                for entry in repository.iterdir():
                    if entry.name != "good":
                        if entry.is_symlink() or entry.is_file():
                            entry.unlink()
                        else:
                            shutil.rmtree(entry)
                planted.clear()
                server.refresh()
    finally:
        stop.set()
        thread.join(timeout=30)
    report("hostile_repository", {"rounds": rounds, "asked": asked, **tally.counts, "wrong": len(tally.wrong)})
    assert not tally.wrong, tally.wrong[:3]
    assert not tally.untyped, tally.untyped[:3]
    assert tally.counts["good_answered"] > 0
    # every planted entry was asked for, and refused as not found (``planted`` itself is emptied every third
    # round, so it cannot be the count)
    assert asked > 0 and tally.counts["ModelNotFoundError"] == asked, (asked, tally.counts)
