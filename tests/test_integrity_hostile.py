"""Files a model's ``config.toml`` names, and checksum files, as hostile input: each refusal fails the version
with a ``ModelLoadError`` that names the setting and the file, and the models beside it keep serving."""

from __future__ import annotations

from pathlib import Path

import pytest

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
