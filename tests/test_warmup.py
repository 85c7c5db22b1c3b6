"""Warm-up before a version takes traffic: synthesized inputs, or real ones from a file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_add_model, build_gather_model, build_scale_model, save_model

from .conftest import ServerFactory


def test_warmup_inputs_from_a_file(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    np.savez(repository / "scale" / "warmup.npz", x=np.ones((8, 4), np.float32))
    (repository / "scale" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\nruns = 2\n')
    server = make_server(repository)
    assert server.models == {"scale": [1]}


def test_warmup_inputs_from_a_npy_file_for_a_one_input_model(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    np.save(repository / "scale" / "warmup.npy", np.ones((8, 4), np.float32))  # np.save: one array, no names
    (repository / "scale" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npy"\n')
    server = make_server(repository)
    assert server.models == {"scale": [1]}


def make_a_pipe(path: Path) -> None:
    os.mkfifo(path)  # opened for reading, it waits for a writer: Server() blocked for good


def begin_a_copy(path: Path) -> None:
    path.touch()  # a copy just begun: numpy's EOFError escaped, and the error named model.onnx


def damage_an_archive(path: Path) -> None:
    with path.open("wb") as handle:
        np.savez_compressed(handle, x=np.arange(4000, dtype=np.float32).reshape(1000, 4))
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # inside the compressed array: numpy's TokenError (or zlib's error) named model.onnx
    path.write_bytes(bytes(data))


def save_a_csv_as_npy(path: Path) -> None:
    path.write_text("x0,x1,x2,x3\n1,2,3,4\n")  # numpy took it for a pickle: "load it unsafely using allow_pickle"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (make_a_pipe, "not a regular file"),
        (begin_a_copy, "the file is empty (a copy not yet finished?)"),
        (damage_an_archive, "Error"),
        (save_a_csv_as_npy, "not a .npy or .npz file (it starts with b'x0,x1,x2'); write the arrays with np.save"),
    ],
)
@pytest.mark.parametrize("setting", ["warmup.inputs_file", "drift.reference_file"])
def test_a_data_file_that_cannot_be_read_fails_that_version_naming_it(
    repository: Path, make_server: ServerFactory, make: Callable[[Path], None], problem: str, setting: str
) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    save_model(build_scale_model(), repository, "other", 1)
    make(repository / "scale" / "data.npy")
    section, key = setting.split(".")
    (repository / "scale" / "config.toml").write_text(f'[{section}]\n{key} = "data.npy"\n')
    server = make_server(repository)
    error = server.status()["models"]["scale"]["versions"]["1"]["error"]
    assert "data.npy cannot be read" in error and problem in error
    assert "allow_pickle" not in error  # never advice to unpickle a file
    assert server.models == {"other": [1]}


def test_a_npy_warmup_file_for_a_model_of_several_inputs_says_to_use_savez(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_add_model(), repository, "add", 1)
    np.save(repository / "add" / "warmup.npy", np.ones((2, 3), np.float32))
    (repository / "add" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npy"\n')
    server = make_server(repository)
    error = server.status()["models"]["add"]["versions"]["1"]["error"]
    assert "warmup.npy do not fit the model: inputs must be a mapping of input name to array" in error
    assert "np.savez(path, name=array, ...)" in error


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.ones((2, 5), np.float32)}, "expected size 4 on axis 1"),
        ({"y": np.ones((2, 4), np.float32)}, "missing input"),
        ({"x": np.array([{"a": 1}, None], dtype=object)}, "array 'x' holds Python objects (an object array)"),
    ],
)
def test_bad_warmup_inputs_fail_the_load(
    repository: Path, make_server: ServerFactory, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    np.savez(repository / "scale" / "warmup.npz", **arrays)  # the object array needs pickle: refused at load
    (repository / "scale" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\n')
    server = make_server(repository)
    assert server.models == {}
    assert fragment in server.status()["models"]["scale"]["versions"]["1"]["error"]


def test_a_model_that_fails_its_warmup_never_serves(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(table_rows=3), repository, "gather", 1)
    np.savez(repository / "gather" / "warmup.npz", index=np.array([7]))  # out of range: fails inside the run
    (repository / "gather" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\n')
    server = make_server(repository)
    status = server.status()["models"]["gather"]["versions"]["1"]
    assert status["state"] == "failed"
    assert status["error"].startswith("model 'gather' version 1 failed its warm-up run: [ONNXRuntimeError]")
    assert status["error"].count("model 'gather' version 1") == 1, status["error"]  # (named once, not three times)
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("gather", {"index": np.array([1])})
    with pytest.raises(inprocserve.ModelLoadError) as caught:
        make_server(repository, strict=True)
    assert str(caught.value).count("model 'gather' version 1") == 1, caught.value


def test_warmup_can_be_turned_off(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(table_rows=3), repository, "gather", 1)
    config = inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False))
    server = make_server(repository, config=config)
    assert server.predict("gather", {"index": np.array([2])})["rows"].shape == (1, 4)


def test_a_npy_warmup_of_an_object_array_fails_the_load_saying_how_to_save_it(
    repository: Path, make_server: ServerFactory
) -> None:
    # (a .npz member of that kind named the array and how to save it; a .npy gave numpy's advice to unpickle)
    save_model(build_scale_model(), repository, "scale", 1)
    np.save(repository / "scale" / "warmup.npy", np.ones((2, 4), dtype=object), allow_pickle=True)
    (repository / "scale" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npy"\n')
    error = make_server(repository).status()["models"]["scale"]["versions"]["1"]["error"]
    assert "the array holds Python objects (an object array), never unpickled" in error
    assert "allow_pickle" not in error


def test_a_npy_warmup_with_a_header_over_numpys_limit_fails_the_load_without_advice_to_unpickle(
    repository: Path, make_server: ServerFactory
) -> None:
    # numpy's refusal names allow_pickle ("fully trust the .npy file"), and it was reported as an object array
    save_model(build_scale_model(), repository, "scale", 1)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }" + " " * 100_000 + "\n"
    data = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode() + bytes(32)
    (repository / "scale" / "warmup.npy").write_bytes(data)
    (repository / "scale" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npy"\n')
    error = make_server(repository).status()["models"]["scale"]["versions"]["1"]["error"]
    assert "header is larger than numpy reads safely" in error
    assert "allow_pickle" not in error
