"""The checksum file checks the external-data files it lists, as it checks model.onnx.

A team that writes ``sha256sum model.onnx weights.data > model.onnx.sha256`` expects both files checked: a
weights file corrupted in a copy (a flipped byte, bit rot) otherwise loaded wrong weights silently. Every
model here keeps its weights in real external-data files written by ``onnx.save_model``, every listing is
written by the real ``sha256sum``, and every version is loaded by a real Server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import inprocserve
from inprocserve import _integrity, _racy
from inprocserve._registry import Registry
from inprocserve.testing import build_scale_model

from .conftest import ServerFactory, wait_until

X = np.ones((1, 4), dtype=np.float32)
ALL_VERSIONS = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())


def save_external(folder: Path, factor: float, location: str | None = "weights.data") -> Path:
    """``y = x * factor`` saved in ``folder`` with its tensors in external data: all in ``location``, or each
    in a file of its own name (``factor``, ``offset``) when ``location`` is None."""
    if location is not None:
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        build_scale_model(factor),
        folder / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=location is not None,
        location=location,
        size_threshold=0,
    )
    return folder / "model.onnx"


def sha256sum(cwd: Path, *names: str) -> str:
    """What ``sha256sum NAMES`` prints, run in ``cwd``."""
    return subprocess.run(["sha256sum", *names], cwd=cwd, capture_output=True, text=True, check=True).stdout


def flip_a_byte(path: Path, at: int = 3) -> None:
    """Corrupt ``path`` in place keeping its size: float32 2.0 becomes 8.0 (the byte 0x40 becomes 0x41)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def version_status(server: inprocserve.Server, version: int) -> dict[str, object]:
    status: dict[str, object] = server.status()["models"]["m"]["versions"][str(version)]
    return status


LAYOUTS = [
    "sha256sum model.onnx weights.data",
    "sha256sum -b ./model.onnx ./weights.data",
    "data in a sub-folder",
    "a model's SHA256SUMS naming 1/ and 2/",
    "absolute paths",
    "sha256sum * run twice: it lists itself",
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_external_data_file_the_checksum_file_lists_is_checked_too(
    repository: Path, make_server: ServerFactory, layout: str
) -> None:
    """Version 2's weights lost a bit after its checksum file was written: it loaded, answering 8x for 2x."""
    location = "data/w.bin" if layout == "data in a sub-folder" else "weights.data"
    folders = [repository / "m" / "1", repository / "m" / "2"]
    for folder, factor in zip(folders, (1.0, 2.0), strict=True):
        save_external(folder, factor, location)
    for folder in folders:
        if layout == "a model's SHA256SUMS naming 1/ and 2/":
            text = sha256sum(folder.parent, "1/model.onnx", "1/weights.data", "2/model.onnx", "2/weights.data")
        elif layout == "absolute paths":
            text = sha256sum(folder, str(folder / "model.onnx"), str(folder / location))
        elif layout == "sha256sum -b ./model.onnx ./weights.data":
            text = sha256sum(folder, "-b", "./model.onnx", "./weights.data")
        elif layout == "sha256sum * run twice: it lists itself":
            for _ in range(2):
                subprocess.run("sha256sum * > model.onnx.sha256", shell=True, cwd=folder, check=True)
            assert "model.onnx.sha256" in (folder / "model.onnx.sha256").read_text()
            continue
        else:
            text = sha256sum(folder, "model.onnx", location)
        (folder / "model.onnx.sha256").write_text(text)
    weights = folders[1] / location
    listed = digest(weights)
    flip_a_byte(weights)
    server = make_server(repository, config=ALL_VERSIONS)
    assert version_status(server, 1)["state"] == "ready"
    assert server.predict("m", X, version=1)["y"].tolist() == [[1.0] * 4]
    failed = version_status(server, 2)
    assert failed["state"] == "failed"
    assert f"{weights} has sha256 {digest(weights)}, but model.onnx.sha256 expects {listed}" in str(failed["error"])
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("m", X, version=2)


@pytest.mark.parametrize("location", ["weights.data", "data/w.bin"])
@pytest.mark.parametrize("fix", ["renamed into place", "rewritten in place"])
def test_a_new_version_with_corrupted_weights_fails_while_the_old_one_serves_and_is_retried_once_fixed(
    repository: Path, tmp_path: Path, make_server: ServerFactory, location: str, fix: str
) -> None:
    save_external(repository / "m" / "1", 1.0, location)
    server = make_server(repository)
    staged = tmp_path / "staged"
    save_external(staged, 2.0, location)
    (staged / "model.onnx.sha256").write_text(sha256sum(staged, "model.onnx", location))
    good = (staged / location).read_bytes()
    flip_a_byte(staged / location)  # (the copy that went wrong)
    staged.rename(repository / "m" / "2")
    weights = repository / "m" / "2" / location
    problems = server.refresh()
    assert any(f"{weights} has sha256" in problem for problem in problems), problems
    assert version_status(server, 2)["state"] == "failed"
    answer = server.predict("m", X)
    assert answer.version == 1 and answer["y"].tolist() == [[1.0] * 4]  # the old version serves meanwhile
    hashed = _integrity._hashes.derived
    server.refresh()
    assert version_status(server, 2)["state"] == "failed"
    assert _integrity._hashes.derived == hashed  # an unchanged failed version is not checked again
    if fix == "renamed into place":
        (weights.parent / "fixed.tmp").write_bytes(good)
        (weights.parent / "fixed.tmp").replace(weights)
    else:  # (no session maps a failed version's weights: rewriting them in place is safe)
        weights.write_bytes(good)
    assert server.refresh() == []
    answer = server.predict("m", X)
    assert answer.version == 2 and answer["y"].tolist() == [[2.0] * 4]


@pytest.mark.parametrize("missing", ["weights.data", "tokenizer.json"])
def test_a_file_the_checksum_file_lists_that_is_not_there_fails_the_version_until_it_arrives(
    repository: Path, tmp_path: Path, make_server: ServerFactory, missing: str
) -> None:
    """A copy that had not finished: the listing says which file the version lacks."""
    folder = repository / "m" / "1"
    save_external(folder, 2.0)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx", "weights.data", "tokenizer.json"))
    (folder / missing).rename(tmp_path / missing)
    server = make_server(repository)
    error = str(version_status(server, 1)["error"])
    assert f"model.onnx.sha256 lists '{missing}', which is not in the version folder {folder}" in error
    shutil.copy2(tmp_path / missing, folder / missing)
    assert server.refresh() == []
    assert server.predict("m", X)["y"].tolist() == [[2.0] * 4]


def test_an_external_data_file_the_checksum_file_does_not_list_stays_unchecked(
    repository: Path, make_server: ServerFactory
) -> None:
    folders = [repository / "m" / "1", repository / "m" / "2"]
    for folder in folders:
        save_external(folder, 2.0, location=None)  # files "factor" and "offset"
        (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx", "factor"))
    flip_a_byte(folders[0] / "offset", at=0)  # unlisted: loaded as it is (offset 0.0 became 1.4e-45)
    flip_a_byte(folders[1] / "factor")  # listed: refused
    server = make_server(repository, config=ALL_VERSIONS)
    assert version_status(server, 1)["state"] == "ready"
    assert "factor has sha256" in str(version_status(server, 2)["error"])


def test_lines_naming_files_outside_the_version_folder_are_ignored_and_its_own_are_checked(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    """Lines that climb out or name another folder are never read (their digests here are wrong: read, they
    would fail the version); the version's own weights still are."""
    save_external(repository / "m" / "1", 1.0)
    folder = repository / "m" / "2"
    save_external(folder, 2.0)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside")
    wrong = "0" * 64
    hostile = [
        "../1/weights.data",
        "data/../../1/weights.data",
        "/etc/passwd",
        str(outside),
        str(folder.parent / "1" / "weights.data"),
        "weights\x00.data",
        "C:\\models\\m\\2\\weights.data",
    ]
    listing = sha256sum(folder, "model.onnx", "weights.data") + "".join(f"{wrong}  {name}\n" for name in hostile)
    (folder / "model.onnx.sha256").write_text(listing)
    server = make_server(repository, config=ALL_VERSIONS)
    assert version_status(server, 2)["state"] == "ready", version_status(server, 2)
    server.close()
    flip_a_byte(folder / "weights.data")
    server = make_server(repository, config=ALL_VERSIONS)
    assert f"{folder / 'weights.data'} has sha256" in str(version_status(server, 2)["error"])
    assert server.predict("m", X).version == 1


@pytest.mark.parametrize("case", ["a name of 100,000 characters", "a listing over 1 MiB"])
def test_a_checksum_file_too_long_or_naming_a_file_too_long_fails_with_a_short_message(
    repository: Path, make_server: ServerFactory, case: str
) -> None:
    folder = repository / "m" / "1"
    save_external(folder, 2.0)
    listing = sha256sum(folder, "model.onnx", "weights.data")
    if case == "a name of 100,000 characters":
        listing += f"{'0' * 64}  {'w' * 100_000}\n"
        fragment = "model.onnx.sha256 lists 'wwww"
    else:  # (its first 64 KiB were read, and the rest, this version's weights among them, left unchecked)
        listing += "".join(f"{'0' * 64}  other/{n}.data\n" for n in range(15_000))
        fragment = "is over 1 MiB; list this version's files only"
    (folder / "model.onnx.sha256").write_text(listing)
    server = make_server(repository)
    error = str(version_status(server, 1)["error"])
    assert fragment in error and len(error) < 1_000


def test_an_unchanged_listed_file_is_hashed_once(
    repository: Path, tmp_path: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights' digest is cached by (inode, size, mtime, ctime) as model.onnx's is: polls and a second
    server read neither file again; new weights renamed into place are read, the unchanged model is not."""
    monkeypatch.setattr(_racy, "CHANGED_LONG_AGO_S", -60.0)  # (every file settled at first sight)
    folder = repository / "m" / "1"
    save_external(folder, 2.0)
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx", "weights.data"))
    before = _integrity._hashes.derived
    server = make_server(repository)
    assert _integrity._hashes.derived == before + 2  # model.onnx and weights.data
    assert server.refresh() == [] and server.refresh() == []
    make_server(repository)
    assert _integrity._hashes.derived == before + 2
    staged = tmp_path / "staged"
    save_external(staged, 3.0)
    (staged / "model.onnx.sha256").write_text(sha256sum(staged, "model.onnx", "weights.data"))
    assert digest(staged / "model.onnx") == digest(folder / "model.onnx")  # (only the weights differ)
    os.replace(staged / "weights.data", folder / "weights.data")
    os.replace(staged / "model.onnx.sha256", folder / "model.onnx.sha256")
    assert server.refresh() == []
    assert server.predict("m", X)["y"].tolist() == [[3.0] * 4]
    assert _integrity._hashes.derived == before + 3  # the new weights only


@pytest.mark.parametrize("listed", ["vocab/tokenizer.json", ".gitattributes"])
def test_a_listed_file_whose_arrival_no_refresh_sees_does_not_fail_the_version(
    repository: Path, tmp_path: Path, make_server: ServerFactory, listed: str
) -> None:
    """``find . -type f | xargs sha256sum`` lists files in sub-folders and hidden ones, which a refresh does not
    watch: a copy that had not brought one failed the version for good, copied in later or not."""
    folder = repository / "m" / "1"
    save_external(folder, 2.0)
    (folder / listed).parent.mkdir(parents=True, exist_ok=True)
    (folder / listed).write_text("{}")
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx", "weights.data", listed))
    (folder / listed).rename(tmp_path / "away")
    server = make_server(repository)
    assert version_status(server, 1)["state"] == "ready", version_status(server, 1)["error"]
    assert server.predict("m", X)["y"].tolist() == [[2.0] * 4]


@pytest.mark.parametrize("location", ["data/w.bin", ".weights", "data/.w"])
def test_a_listed_data_file_the_model_names_in_a_sub_folder_or_hidden_must_be_there(
    repository: Path, tmp_path: Path, make_server: ServerFactory, location: str
) -> None:
    """Unlike a listed file the model does not name (above), external data in a sub-folder or under a hidden name
    is looked for, and its arrival (which a refresh watches, as the model names it) retries the version."""
    folder = repository / "m" / "1"
    save_external(folder, 2.0, location)
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx", location))
    (folder / location).rename(tmp_path / "away")
    server = make_server(repository)
    error = str(version_status(server, 1)["error"])
    assert f"model.onnx.sha256 lists '{location}', which is not in the version folder {folder}" in error
    shutil.copy2(tmp_path / "away", folder / location)
    assert server.refresh() == []
    assert server.predict("m", X)["y"].tolist() == [[2.0] * 4]


def test_a_listed_file_whose_name_is_not_utf8_is_found(repository: Path, make_server: ServerFactory) -> None:
    """``sha256sum *`` in a folder holding a Latin-1 name (``café.txt`` written on an older system): read as
    U+FFFD, the name named no file, and the version failed as a copy not finished."""
    folder = repository / "m" / "1"
    save_external(folder, 2.0)
    name = b"caf\xe9.txt"
    (folder / os.fsdecode(name)).write_text("notes")
    listing = subprocess.run(
        [b"sha256sum", b"model.onnx", b"weights.data", name], cwd=folder, capture_output=True, check=True
    ).stdout
    assert name in listing
    (folder / "model.onnx.sha256").write_bytes(listing)
    server = make_server(repository)
    assert version_status(server, 1)["state"] == "ready", version_status(server, 1)["error"]
    (folder / os.fsdecode(name)).unlink()  # (and it is the file the line names: gone, the version fails)
    server.close()
    error = str(version_status(make_server(repository), 1)["error"])
    assert "lists 'caf\\udce9.txt', which is not in the version folder" in error


def test_the_lines_gnu_sha256sum_escapes_are_read_as_it_writes_them(
    repository: Path, make_server: ServerFactory
) -> None:
    """``sha256sum *`` writes the line of a name holding a backslash or a line break with a backslash first
    (``\\<digest>  a\\\\b``): first in the file, it was refused as not starting with a digest; the name is a
    file of the folder, not ``a/b``."""
    folder = repository / "m" / "1"
    save_external(folder, 2.0)
    for name in ("a\\b", "new\nline"):
        (folder / name).write_text("notes")
    listing = sha256sum(folder, "a\\b", "model.onnx", "new\nline", "weights.data")
    assert listing.startswith("\\") and "  new\\nline\n" in listing
    (folder / "model.onnx.sha256").write_text(listing)
    server = make_server(repository)
    assert version_status(server, 1)["state"] == "ready", version_status(server, 1)["error"]
    server.close()
    (folder / "a\\b").unlink()
    assert "lists 'a\\\\b', which is not in the version folder" in str(
        version_status(make_server(repository), 1)["error"]
    )


@pytest.mark.parametrize("file", ["weights.data", "model.onnx"])
def test_two_lines_that_give_one_file_different_digests_fail_the_version(
    repository: Path, make_server: ServerFactory, file: str
) -> None:
    """``sha256sum -c`` fails one of them: the first was taken, so a listing the deploy's check refused loaded."""
    folder = repository / "m" / "1"
    save_external(folder, 2.0)
    stale = "0" * 64
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx", "weights.data") + f"{stale}  ./{file}\n")
    server = make_server(repository)
    error = str(version_status(server, 1)["error"])
    assert f"gives '{file}' sha256 {digest(folder / file)} and './{file}' sha256 {stale}, one file" in error


def test_the_locations_hashed_are_the_ones_checked_not_read_again_from_the_model_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model file replaced between the location checks and the hashing (someone who may write the version
    # folder, with good timing): read again, it could name a listed link out of the folder that no check saw,
    # and the refusal printed the digest of the file outside. Here the second reading is made to name it.
    outside = tmp_path / "outside.txt"
    outside.write_text("not the model's\n")
    folder = tmp_path / "v"
    model_file = save_external(folder, 2.0)
    (folder / "link.data").symlink_to(outside)
    listing = sha256sum(folder, "model.onnx", "weights.data") + f"{'1' * 64}  link.data\n"
    (folder / "model.onnx.sha256").write_text(listing)
    monkeypatch.setattr(_integrity, "external_data_locations", lambda _file: ("weights.data", "link.data"))
    _integrity.check_version(model_file, model="m", version=1)  # (link.data, never checked, is never hashed)


@pytest.mark.parametrize("swapped", ["the data file", "its folder", "the model file"])
def test_a_file_swapped_for_a_link_after_the_checks_is_refused_not_hashed_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swapped: str
) -> None:
    """The checks found regular files, no link, in the version folder; the hashing then opened each file by its
    path, so a link put there in between (by whoever may write the folder) was followed, and the file outside
    was hashed, or answered from the digest cache, in place of the one checked. Where links are not followed,
    the hashing opens no link: not the file's, nor a folder's on its path below the version folder."""
    monkeypatch.setattr(_racy, "CHANGED_LONG_AGO_S", -60.0)  # (every file settled at first sight: digests cached)
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "m" / "1"
    model_file = save_external(folder, 2.0, "data/w.bin")
    if swapped == "the model file":
        path = model_file
        shutil.copy2(model_file, outside / "model.onnx")
        model_file.unlink()
        model_file.symlink_to(outside / "model.onnx")
    else:
        path = folder / "data" / "w.bin"
        shutil.copytree(folder / "data", outside / "data")
        if swapped == "its folder":
            shutil.rmtree(folder / "data")
            (folder / "data").symlink_to(outside / "data", target_is_directory=True)
        else:
            path.unlink()
            path.symlink_to(outside / "data" / "w.bin")
    _integrity.file_sha256(path)  # (its digest in the cache: a link is not answered from it either)
    with pytest.raises(OSError, match="a symbolic link, which is not followed"):
        _integrity.file_sha256(path, follow_symlinks=False, within=folder)
    assert _integrity.file_sha256(path, follow_symlinks=True, within=folder) == digest(path)
    if swapped == "the model file":  # (the walk for its external data reads no link either)
        with pytest.raises(inprocserve.ModelLoadError, match=f"the model file {model_file} is a symbolic link"):
            _integrity.check_external_data(model_file, model="m", version=1)


def test_a_load_stops_hashing_once_the_server_is_closing(tmp_path: Path) -> None:
    """A multi-GB data file being hashed held ``Server.close()`` until it was read to its end (seconds to
    minutes): the hashing checks the server's stop event between chunks, and the load fails saying why."""
    folder = tmp_path / "m" / "1"
    model_file = save_external(folder, 2.0)
    big = folder / "big.bin"  # (sparse: 16 GiB hashed take 10 s or more, on no disk)
    with big.open("wb") as file:
        file.truncate(16 << 30)
    stop = threading.Event()
    stop.set()
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx", "weights.data"))
    with _integrity.hashing_stops_on(stop), pytest.raises(inprocserve.ModelLoadError) as caught:
        _integrity.check_version(model_file, model="m", version=1)
    assert f"the server was closed while the model file {model_file} was being hashed; it was not loaded" in str(
        caught.value
    )
    stop.clear()
    failure: list[BaseException] = []

    def hash_the_big_file() -> None:
        with _integrity.hashing_stops_on(stop):
            try:
                _integrity.file_sha256(big)
            except BaseException as exc:  # (what the test asserts)
                failure.append(exc)

    hashing = threading.Thread(target=hash_the_big_file)
    hashing.start()
    _read_so_far(big, lambda position: position >= 8 << 20)  # (hashing it, 8 MiB in)
    stop.set()
    stopped = time.monotonic()
    hashing.join(timeout=60)
    assert time.monotonic() - stopped < 5.0, "the hashing went on past the stop"
    assert [type(exc) for exc in failure] == [_integrity.HashingStopped]
    assert _integrity.file_sha256(model_file) == digest(model_file)  # (outside the block: not stopped)


def test_a_corrupt_version_found_as_the_server_closes_is_still_an_error(
    repository: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh loading a corrupt version when ``close()`` began logged its failure at INFO ("was not loaded,
    the server closing"), as if the close had stopped it: only a load the close stopped (its hashing cut short)
    is told at INFO; a corrupt file is an error whenever it is found. (A checksum mismatch found as the close
    begins is the same case, but the stop cannot be timed to land after its hashing: a file that is no ONNX
    fails before any hashing.)"""
    caplog.set_level(logging.INFO, logger="inprocserve")
    save_external(repository / "m" / "1", 1.0)
    server = inprocserve.Server(repository, control_interval_s=None, poll_interval_s=None)
    (repository / "m" / "2").mkdir()
    (repository / "m" / "2" / "model.onnx").write_bytes(b"not an ONNX model")
    loading, go_on = threading.Event(), threading.Event()
    load_version = Registry._load_version

    def held(registry: Registry, *args: Any, **kwargs: Any) -> None:  # (the load begins once close() has begun)
        loading.set()
        assert go_on.wait(30)
        load_version(registry, *args, **kwargs)

    monkeypatch.setattr(Registry, "_load_version", held)
    refreshing = threading.Thread(target=server.refresh)
    refreshing.start()
    closing = threading.Thread(target=server.close)
    try:
        assert loading.wait(30)
        closing.start()
        wait_until(server._registry._stop.is_set, timeout_s=5.0)  # the close has told the refresh to stop
    finally:
        go_on.set()
        refreshing.join(30)
        closing.join(30)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("model 'm' version 2 failed to load" in e and "cannot load" in e for e in errors), [
        r.getMessage() for r in caplog.records
    ]
    assert not any("was not loaded, the server closing" in r.getMessage() for r in caplog.records)


def _read_so_far(path: Path, enough: Callable[[int], bool], timeout_s: float = 30.0) -> int:
    """How far this process has read ``path`` (its descriptor's position, from /proc), once ``enough``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                    info = Path(f"/proc/self/fdinfo/{fd}").read_text()
                    position = int(info.split("pos:")[1].split()[0])
                    if enough(position):
                        return position
            except (OSError, IndexError):  # (closed meanwhile)
                continue
        time.sleep(0.001)
    raise AssertionError(f"{path} was not read far enough in {timeout_s} s")


def test_close_does_not_wait_for_a_refresh_hashing_a_large_data_file(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's own loads hash under its stop event: ``close()`` during a refresh that hashes a 16 GiB
    data file returns at once (it waited for the whole file before: a minute here), and the refresh ends too,
    logging no error (the load was stopped on purpose, nothing is broken)."""
    caplog.set_level(logging.INFO, logger="inprocserve")
    save_external(repository / "m" / "1", 1.0)
    server = inprocserve.Server(repository, control_interval_s=None, poll_interval_s=None)
    folder = repository / "m" / "2"
    save_external(folder, 2.0)
    (folder / "model.onnx.sha256").write_text(sha256sum(folder, "model.onnx") + f"{'0' * 64}  weights.data\n")
    with (folder / "weights.data").open("r+b") as file:  # (sparse: no disk, and 10 s or more to hash)
        file.truncate(16 << 30)
    ended: list[object] = []

    def refresh() -> None:
        try:
            ended.append(server.refresh())
        except Exception as exc:  # (what the test reads)
            ended.append(exc)

    refreshing = threading.Thread(target=refresh)
    refreshing.start()
    _read_so_far(folder / "weights.data", lambda position: position >= 8 << 20)
    started = time.monotonic()
    server.close()
    took = time.monotonic() - started
    refreshing.join(timeout=60)
    assert took < 5.0, f"close() waited {took:.1f} s for the hashing"
    assert not refreshing.is_alive() and len(ended) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("was not loaded, the server closing" in r.getMessage() for r in caplog.records)
