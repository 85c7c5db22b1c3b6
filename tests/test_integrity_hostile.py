"""Files a model's ``config.toml`` names, and checksum files, as hostile input: each refusal fails the version
with a ``ModelLoadError`` that names the setting and the file, and the models beside it keep serving."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from inprocserve import ModelLoadError
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory
from .test_integrity import initializer_model, write_version


def a_name_with_a_nul_byte(folder: Path) -> str:
    return "warm\\u0000up.npz"  # (TOML's escape: the file's text holds a NUL byte once read)


def a_link_to_itself(folder: Path) -> str:
    (folder / "loop.npz").symlink_to("loop.npz")
    return "loop.npz"


@pytest.mark.parametrize(
    ("section", "key", "what"),
    [("warmup", "inputs_file", "warm-up inputs file"), ("drift", "reference_file", "drift reference file")],
)
@pytest.mark.parametrize("make", [a_name_with_a_nul_byte, a_link_to_itself], ids=lambda make: make.__name__)
def test_a_file_named_in_config_toml_that_no_path_can_reach_fails_the_version_saying_which_setting(
    repository: Path, make_server: ServerFactory, section: str, key: str, what: str, make: object
) -> None:
    """Python's own errors escaped the check: "cannot load .../model.onnx: ValueError: embedded null byte",
    or "RuntimeError: Symlink loop from ...", naming neither the setting nor what to fix."""
    save_model(build_scale_model(2.0), repository, "m", 1)
    save_model(build_scale_model(2.0), repository, "other", 1)
    folder = repository / "m"
    name = make(folder)  # type: ignore[operator]
    (folder / "config.toml").write_text(f'[{section}]\n{key} = "{name}"\n')
    server = make_server(repository, follow_symlinks=True)
    status = server.status()["models"]["m"]["versions"]["1"]
    assert status["state"] == "failed"
    assert f"the {what} " in status["error"], status["error"]
    assert "ValueError" not in status["error"] and "RuntimeError" not in status["error"]
    assert server.models == {"other": [1]}


@pytest.mark.parametrize("follow_symlinks", [False, True])
def test_external_data_through_a_link_loop_fails_the_version_saying_which_tensor(
    repository: Path, make_server: ServerFactory, follow_symlinks: bool
) -> None:
    """The external-data check resolved the location first: a link to itself failed the version with Python's
    "RuntimeError: Symlink loop from ...", naming no tensor."""
    model_file = write_version(repository, initializer_model({"location": "loop.bin"}))
    (model_file.parent / "loop.bin").symlink_to("loop.bin")
    save_model(build_scale_model(2.0), repository, "other", 1)
    server = make_server(repository, follow_symlinks=follow_symlinks)
    status = server.status()["models"]["m"]["versions"]["1"]
    assert status["state"] == "failed"
    assert "tensor 'w' keeps its data outside the model at 'loop.bin'" in status["error"], status["error"]
    assert "RuntimeError" not in status["error"]
    assert server.models == {"other": [1]}


@pytest.mark.parametrize(
    ("entries", "tensor"),
    [
        ({"location": "w" * 100_000}, "w"),
        ({"location": "/" + "w" * 100_000}, "w"),
        ({"location": "weights.bin", "offset": "9" * 100_000}, "w"),
        ({"location": "w" * 200}, "t" * 100_000),
    ],
    ids=["long location", "long absolute location", "long offset", "long tensor name"],
)
def test_a_model_naming_external_data_with_a_huge_string_fails_with_a_short_message(
    repository: Path, make_server: ServerFactory, entries: dict[str, str], tensor: str
) -> None:
    """A model file is someone else's bytes (a download, a converter): a location or tensor name of 100,000
    characters was quoted whole (twice, with the error of the path it made), into status() and the log."""
    model = initializer_model(entries)
    model.graph.initializer[0].name = tensor
    model.graph.node[0].input[1] = tensor
    write_version(repository, model)
    server = make_server(repository)
    error = server.status()["models"]["m"]["versions"]["1"]["error"]
    assert "keeps its data outside the model" in error
    assert len(error) < 1000, error[:300]


@pytest.mark.parametrize("checksum", [False, True], ids=["without checksum", "with checksum"])
def test_loading_a_pipe_by_path_fails_at_once_instead_of_waiting_for_a_writer(
    tmp_path: Path, make_server: ServerFactory, checksum: bool
) -> None:
    """``server.load("m", path=...)`` of a pipe (a deploy script's ``mkfifo``, a process substitution) opened
    it to read its external-data names and its digest, and waited for a writer for good: the call never
    returned, and the lifecycle lock it held stopped every refresh."""
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    pipe = version / "model.onnx"
    os.mkfifo(pipe)
    if checksum:
        (version / "model.onnx.sha256").write_text("0" * 64 + "  model.onnx\n")
    server = make_server()
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            server.load("m", path=pipe)
            outcome.append(None)
        except BaseException as exc:  # (handed to the test's thread)
            outcome.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(timeout=10)
    if loader.is_alive():  # let it go: writers that close at once (each open of the pipe reads it empty)
        for _ in range(100):
            with contextlib.suppress(OSError):  # (ENXIO: no reader at this instant)
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            loader.join(timeout=0.1)
            if not loader.is_alive():
                break
        pytest.fail("load(path=<a pipe>) was still waiting for a writer after 10 s")
    assert isinstance(outcome[0], ModelLoadError)
    assert f"model file {pipe} is not a regular file" in str(outcome[0])
