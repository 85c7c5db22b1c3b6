"""Model integrity: external-data locations, symlinks, checksums and files named in config.toml.

Every hostile model here is a real ONNX file that onnxruntime would open; the library must refuse it
before onnxruntime does, whatever onnxruntime version is installed.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, external_data_helper, helper, numpy_helper

import inprocserve
from inprocserve._integrity import check_version, external_data, file_sha256
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, past_the_tick, within_one_tick

WEIGHTS = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


def external_tensor(name: str, values: np.ndarray, entries: dict[str, str]) -> onnx.TensorProto:
    """A tensor whose data lives in another file, described by ``entries`` (location, offset, length)."""
    tensor = numpy_helper.from_array(values, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def io(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])


def model_with(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def initializer_model(entries: dict[str, str]) -> onnx.ModelProto:
    """``y = x * w`` with ``w`` stored externally."""
    weight = external_tensor("w", WEIGHTS, entries)
    return model_with(
        helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [io("x")], [io("y")], [weight])
    )


def constant_model(entries: dict[str, str]) -> onnx.ModelProto:
    """``w`` as a Constant node's tensor attribute instead of an initializer."""
    weight = external_tensor("w", WEIGHTS, entries)
    nodes = [helper.make_node("Constant", [], ["w"], value=weight), helper.make_node("Mul", ["x", "w"], ["y"])]
    return model_with(helper.make_graph(nodes, "g", [io("x")], [io("y")]))


def subgraph_model(entries: dict[str, str]) -> onnx.ModelProto:
    """``w`` as an initializer of an If node's branch (a subgraph)."""
    weight = external_tensor("w", WEIGHTS, entries)
    out = helper.make_tensor_value_info("branch", TensorProto.FLOAT, [4])
    then = helper.make_graph([helper.make_node("Identity", ["w"], ["branch"])], "then", [], [out], [weight])
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["branch"], value=numpy_helper.from_array(WEIGHTS, "c"))], "else", [], [out]
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("If", ["cond"], ["picked"], then_branch=then, else_branch=other),
        helper.make_node("Mul", ["x", "picked"], ["y"]),
    ]
    return model_with(helper.make_graph(nodes, "g", [io("x")], [io("y")], [cond]))


def sparse_model(entries: dict[str, str]) -> onnx.ModelProto:
    """A sparse initializer whose values are stored externally."""
    values = external_tensor("w", WEIGHTS, entries)
    indices = numpy_helper.from_array(np.array([0, 1, 2, 3], dtype=np.int64), "w_indices")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [io("x")], [io("y")])
    graph.sparse_initializer.append(sparse)
    return model_with(graph)


BUILDERS = [initializer_model, constant_model, subgraph_model, sparse_model]


def write_version(repository: Path, model: onnx.ModelProto, version: int = 1, name: str = "m") -> Path:
    path = save_model(model, repository, name, version)
    (path.parent / "weights.bin").write_bytes(WEIGHTS.tobytes())
    return path


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_external_data_inside_the_version_folder_serves(
    repository: Path, make_server: ServerFactory, build: Any
) -> None:
    write_version(repository, build({"location": "weights.bin", "offset": "0", "length": "16"}))
    server = make_server(repository)
    result = server.predict("m", {"x": np.ones((2, 4), dtype=np.float32)})
    np.testing.assert_array_equal(result["y"], np.tile(WEIGHTS, (2, 1)))


HOSTILE = [
    ({"location": "../../../../../../../../../../etc/passwd"}, "may not climb out"),
    ({"location": "/etc/passwd"}, "only paths relative"),
    ({"location": "sub/../../weights.bin"}, "may not climb out"),
    ({"location": "..\\..\\weights.bin"}, "may not climb out"),
    ({"location": "C:/Windows/win.ini"}, "only paths relative"),
    ({"location": ""}, "names no location"),
    ({}, "names no location"),
    ({"location": "missing.bin"}, "not a file in the version folder"),
    ({"location": "."}, "not a file in the version folder"),
    ({"location": "weights.bin", "offset": "8", "length": "16"}, "beyond the end"),
    ({"location": "weights.bin", "offset": "17"}, "beyond the end"),
    ({"location": "weights.bin", "length": "8"}, "less than the 16 bytes"),
    ({"location": "weights.bin", "offset": "-1"}, "not a non-negative integer"),
    ({"location": "weights.bin", "offset": "1e3"}, "not a non-negative integer"),
    ({"location": "weights.bin", "length": "9" * 30}, "not a non-negative integer"),
]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize(("entries", "fragment"), HOSTILE, ids=[str(e) for e, _ in HOSTILE])
def test_hostile_external_data_is_refused_before_onnxruntime_opens_it(
    repository: Path, make_server: ServerFactory, build: Any, entries: dict[str, str], fragment: str
) -> None:
    write_version(repository, build(entries))
    server = make_server(repository)
    status = server.status()["models"]["m"]["versions"]["1"]
    assert status["state"] == "failed"
    assert fragment in status["error"]
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)})


def test_an_absolute_location_to_a_real_file_outside_is_refused(repository: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(WEIGHTS.tobytes())
    path = write_version(repository, initializer_model({"location": str(outside)}))
    with pytest.raises(inprocserve.ModelLoadError, match="only paths relative"):
        check_version(path, model="m", version=1)


def test_external_data_through_a_link_out_of_the_folder_is_refused_even_when_following_links(
    repository: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s3cret!!" * 4)
    path = write_version(repository, initializer_model({"location": "link.bin"}))
    (path.parent / "link.bin").symlink_to(secret)
    for follow in (False, True):
        with pytest.raises(inprocserve.ModelLoadError, match="outside the version folder"):
            check_version(path, model="m", version=1, follow_symlinks=follow)


def test_external_data_through_a_link_inside_the_folder_needs_follow_symlinks(
    repository: Path, make_server: ServerFactory
) -> None:
    path = write_version(repository, initializer_model({"location": "link.bin"}))
    (path.parent / "link.bin").symlink_to(path.parent / "weights.bin")
    with pytest.raises(inprocserve.ModelLoadError, match="through a symbolic link"):
        check_version(path, model="m", version=1)
    server = make_server(repository, follow_symlinks=True)
    assert server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)})["y"].tolist() == [WEIGHTS.tolist()]


def test_the_walker_finds_what_onnx_itself_marks_external(tmp_path: Path) -> None:
    """Cross-check of the wire-format walker against onnx's own reading, on a model onnx wrote."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"w{i}") for i in range(5)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"]) for i in range(5)]
    nodes.append(helper.make_node("Identity", ["h4"], ["y"]))
    model = model_with(helper.make_graph(nodes, "g", [io("x")], [io("y")], inits))
    external_data_helper.convert_model_to_external_data(model, location="data.bin", size_threshold=0)
    onnx.save(model, tmp_path / "model.onnx")
    expected = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in external_data_helper._get_all_tensors(onnx.load(tmp_path / "model.onnx", load_external_data=False))
        if external_data_helper.uses_external_data(t)
    }
    found = {ref.tensor: ref.entries for ref in external_data((tmp_path / "model.onnx").read_bytes())}
    assert found == expected and len(found) == 5
    check_version(tmp_path / "model.onnx", model="m", version=1)


def test_a_model_without_external_data_has_no_references() -> None:
    assert external_data(build_scale_model(2.0).SerializeToString()) == []


@pytest.mark.parametrize("data", [b"\x0a\xff", b"\x0a\x05abc", b"\x3a\x02\x2a", b"\xff" * 11, b"\x03"])
def test_malformed_protobuf_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        external_data(data)


def test_a_group_field_is_skipped_like_protobuf_does() -> None:
    # an unknown group (field 99) before the graph: protobuf skips it, so must the walker
    group = bytes([0x9B, 0x06, 0x08, 0x01, 0x9C, 0x06])
    model = initializer_model({"location": "../../etc/passwd"})
    refs = external_data(group + model.SerializeToString())
    assert [r.entries["location"] for r in refs] == ["../../etc/passwd"]


# -- symbolic links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["model folder", "version folder", "model file"])
def test_symlinks_are_refused_by_default_and_followed_on_request(
    tmp_path: Path, make_server: ServerFactory, link: str
) -> None:
    elsewhere, repository = tmp_path / "elsewhere", tmp_path / "models"
    real = save_model(build_scale_model(3.0), elsewhere, "m", 1)
    repository.mkdir()
    if link == "model folder":
        (repository / "m").symlink_to(elsewhere / "m", target_is_directory=True)
    elif link == "version folder":
        (repository / "m").mkdir()
        (repository / "m" / "1").symlink_to(real.parent, target_is_directory=True)
    else:
        (repository / "m" / "1").mkdir(parents=True)
        (repository / "m" / "1" / "model.onnx").symlink_to(real)
    refused = make_server(repository)
    assert "m" not in refused.status()["models"] or not refused.status()["models"]["m"]["versions"]
    assert any("symbolic link" in problem for problem in refused.refresh())
    followed = make_server(repository, follow_symlinks=True)
    x = np.ones((1, 4), dtype=np.float32)
    assert followed.predict("m", {"x": x})["y"].tolist() == [[3.0] * 4]


# -- checksums --------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "style", ["sha256sum", "bare", "upper", "binary mode", "windows lines", "utf-8 with bom", "powershell utf-16"]
)
def test_a_matching_checksum_loads(repository: Path, make_server: ServerFactory, style: str) -> None:
    path = save_model(build_scale_model(2.0), repository, "m", 1)
    digest = sha256_of(path)
    line = f"{digest}  model.onnx\n"
    data = {
        "sha256sum": line.encode(),
        "bare": digest.encode(),
        "upper": digest.upper().encode() + b"\n",
        "binary mode": f"{digest} *model.onnx\n".encode(),  # sha256sum -b
        "windows lines": line.replace("\n", "\r\n").encode(),
        "utf-8 with bom": codecs.BOM_UTF8 + line.encode(),  # Notepad, PowerShell's Set-Content -Encoding UTF8
        "powershell utf-16": (digest.upper() + "\r\n").encode("utf-16"),  # (Get-FileHash model.onnx).Hash > ...
    }[style]
    path.with_name("model.onnx.sha256").write_bytes(data)
    server = make_server(repository)
    assert server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)})["y"].tolist() == [[2.0] * 4]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0" * 64 + "  model.onnx\n", "expects 0000"),
        ("", "does not start with a sha256"),
        ("not-a-digest  model.onnx", "does not start with a sha256"),
        ("a" * 63, "does not start with a sha256"),
        ("SHA256 (model.onnx) = " + "0" * 64, "it starts with 'SHA256'"),  # the BSD format (sha256sum --tag)
    ],
)
def test_a_checksum_mismatch_is_a_failed_version_never_served(
    repository: Path, make_server: ServerFactory, text: str, fragment: str
) -> None:
    save_model(build_scale_model(1.0), repository, "m", 1)
    path = save_model(build_scale_model(2.0), repository, "m", 2)
    path.with_name("model.onnx.sha256").write_text(text)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    status = server.status()["models"]["m"]["versions"]
    assert status["2"]["state"] == "failed" and fragment in status["2"]["error"]
    result = server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)})
    assert result.version == 1 and result["y"].tolist() == [[1.0] * 4]
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)}, version=2)


@pytest.mark.parametrize(
    "layout",
    [
        "model.onnx listed second",
        "paths from the model folder",
        "paths from the repository, another model's first",
        "blank lines, windows lines, a bom",
    ],
)
def test_a_checksum_file_that_lists_several_files_is_read_at_the_line_of_model_onnx(
    repository: Path, make_server: ServerFactory, layout: str
) -> None:
    """``sha256sum *.data model.onnx > model.onnx.sha256`` (or a model's SHA256SUMS copied into each version
    folder) was refused as "... has sha256 <its digest>, but model.onnx.sha256 expects <another file's digest>":
    only the first line was read, whatever file it named."""
    path = save_model(build_scale_model(2.0), repository, "m", 2)
    digest, other = sha256_of(path), "ab" * 32
    text = {
        "model.onnx listed second": f"{other}  model.onnx.data\n{digest} *model.onnx\n",
        "paths from the model folder": f"{other}  1/model.onnx\n{digest}  2/model.onnx\n{other}  3/model.onnx\n",
        # (another model's version 2 ends as this one's does: it was taken for it, and the file refused)
        "paths from the repository, another model's first": (
            f"{other}  churn/2/model.onnx\n{digest}  ./m/2/model.onnx\n"
        ),
        "blank lines, windows lines, a bom": f"\ufeff\r\n{other}  weights.bin\r\n\r\n{digest}  model.onnx\r\n",
    }[layout]
    path.with_name("model.onnx.sha256").write_bytes(text.encode())
    for other_file in ("model.onnx.data", "weights.bin"):  # (listed files must be there; the model reads neither)
        path.with_name(other_file).write_bytes(b"not what the listing says")
    server = make_server(repository)
    assert server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)})["y"].tolist() == [[2.0] * 4]


def test_a_checksum_file_that_lists_several_files_but_not_model_onnx_is_refused_saying_so(
    repository: Path, make_server: ServerFactory
) -> None:
    """It was refused as "... but model.onnx.sha256 expects <the first file's digest>", which read as a model
    file changed in transit."""
    path = save_model(build_scale_model(2.0), repository, "m", 1)
    path.with_name("model.onnx.sha256").write_text(f"{'ab' * 32}  weights.bin\n{'cd' * 32}  tokenizer.json\n")
    server = make_server(repository)
    error = server.status()["models"]["m"]["versions"]["1"]["error"]
    assert "lists 2 files ('weights.bin', 'tokenizer.json'), none of them model.onnx" in error
    assert "sha256sum model.onnx > model.onnx.sha256" in error


def test_a_tampered_model_is_refused_on_hot_reload(repository: Path, make_server: ServerFactory) -> None:
    path = save_model(build_scale_model(1.0), repository, "m", 1)
    path.with_name("model.onnx.sha256").write_text(sha256_of(path))
    server = make_server(repository)
    tampered = save_model(build_scale_model(5.0), repository, "m", 2)
    tampered.with_name("model.onnx.sha256").write_text(sha256_of(path))  # the digest of another file
    server.refresh()
    assert server.status()["models"]["m"]["versions"]["2"]["state"] == "failed"
    assert server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)}).version == 1


def test_the_hash_is_cached_until_the_file_changes_even_with_its_mtime_put_back(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"a" * 100)
    first = file_sha256(path)
    assert file_sha256(path) == first  # (cached: a re-check does not read the file again)
    stat = path.stat()
    time.sleep(0.01)  # (a coarse ctime clock)
    with path.open("r+b") as handle:  # same inode, same size, mtime put back (cp -p): the ctime moved
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_sha256(path) == hashlib.sha256(b"b" + b"a" * 99).hexdigest() != first  # the stale digest passed


def test_a_model_file_copied_over_within_the_second_it_was_verified_is_verified_again(
    whole_second_folder: Path, make_server: ServerFactory
) -> None:
    # On a file system whose times tick in whole seconds, a file of the same size copied over model.onnx in
    # the second of the load that verified it keeps its inode, size and times: the digest kept for them
    # passed the other file, and the next load (another server, a reload) served a model that the checksum
    # file does not describe.
    repository = whole_second_folder / "models"

    def verify_then_copy_over() -> tuple[os.stat_result, os.stat_result]:
        shutil.rmtree(repository, ignore_errors=True)
        path = save_model(build_scale_model(2.0), repository, "m", 1)
        path.with_name("model.onnx.sha256").write_text(sha256_of(path))
        before = path.stat()
        make_server(repository=repository).close()
        path.write_bytes(build_scale_model(5.0).SerializeToString())  # (truncated and written: same inode)
        return before, path.stat()

    within_one_tick(verify_then_copy_over)
    server = make_server(repository=repository)
    version = server.status()["models"]["m"]["versions"]["1"]
    assert version["state"] == "failed"
    assert "but model.onnx.sha256 expects" in version["error"]


# -- files named in config.toml ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.npz", "{outside}", "1/../../outside.npz"])
def test_a_warmup_file_outside_the_model_folder_fails_the_load(
    repository: Path, make_server: ServerFactory, name: str
) -> None:
    outside = repository.parent / "outside.npz"
    np.savez(outside, x=np.ones((1, 4), dtype=np.float32))
    save_model(build_scale_model(2.0), repository, "m", 1)
    name = name.format(outside=outside)
    (repository / "m" / "config.toml").write_text(f'[warmup]\ninputs_file = "{name}"\n')
    server = make_server(repository)
    status = server.status()["models"]["m"]["versions"]["1"]
    assert status["state"] == "failed" and "must be a path inside the model folder" in status["error"]


def test_a_warmup_file_linked_out_of_the_model_folder_fails_the_load(
    repository: Path, make_server: ServerFactory
) -> None:
    outside = repository.parent / "outside.npz"
    np.savez(outside, x=np.ones((1, 4), dtype=np.float32))
    save_model(build_scale_model(2.0), repository, "m", 1)
    (repository / "m" / "warmup.npz").symlink_to(outside)
    (repository / "m" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\n')
    status = make_server(repository).status()["models"]["m"]["versions"]["1"]
    assert status["state"] == "failed" and "must be a path inside the model folder" in status["error"]


@pytest.mark.parametrize("name", ["../reference.npz", "{outside}"])
def test_a_drift_reference_outside_the_model_folder_fails_the_load(
    repository: Path, make_server: ServerFactory, name: str
) -> None:
    outside = repository.parent / "reference.npz"
    np.savez(outside, x=np.ones((50, 4), dtype=np.float32))
    save_model(build_scale_model(2.0), repository, "m", 1)
    name = name.format(outside=outside)
    (repository / "m" / "config.toml").write_text(f'[drift]\nreference_file = "{name}"\n')
    status = make_server(repository).status()["models"]["m"]["versions"]["1"]
    assert status["state"] == "failed" and "must be a path inside the model folder" in status["error"]


def test_a_drift_reference_inside_the_model_folder_still_works(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "m", 1)
    np.savez(repository / "m" / "reference.npz", x=np.ones((50, 4), dtype=np.float32))
    (repository / "m" / "config.toml").write_text('[drift]\nreference_file = "reference.npz"\n')
    assert make_server(repository).status()["models"]["m"]["versions"]["1"]["state"] == "ready"


# -- the optimized-graph cache ----------------------------------------------------------------------------


def cached_graphs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("model.optimized-"))


def test_a_changed_graph_optimization_never_reuses_the_old_cached_graph(
    repository: Path, make_server: ServerFactory
) -> None:
    path = save_model(build_scale_model(2.0), repository, "m", 1)
    past_the_tick(path)
    x = np.ones((1, 4), dtype=np.float32)

    def serve(level: str) -> list[list[float]]:
        pool = inprocserve.PoolConfig(optimized_model_cache=True, graph_optimization=level)  # type: ignore[arg-type]
        server = make_server(repository, config=inprocserve.ModelConfig(pool=pool))
        try:
            return server.predict("m", {"x": x})["y"].tolist()  # type: ignore[no-any-return]
        finally:
            server.close()

    assert serve("basic") == [[2.0] * 4]
    (basic,) = cached_graphs(path.parent)
    # Plant a different graph under the "basic" key: a server with the same options loads it (the cache
    # is really used), one with another level must not.
    basic.write_bytes(build_scale_model(7.0).SerializeToString())
    os.utime(basic, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert serve("basic") == [[7.0] * 4]
    assert serve("disable") == [[2.0] * 4]
    assert serve("all") == [[2.0] * 4]
    assert len(cached_graphs(path.parent)) == 3


def test_a_cached_graph_with_hostile_external_data_is_never_loaded(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_model(build_scale_model(2.0), repository, "m", 1)
    past_the_tick(path)
    config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(optimized_model_cache=True))
    make_server(repository, config=config).close()
    (cached,) = cached_graphs(path.parent)
    cached.write_bytes(initializer_model({"location": "../../../../../../../../etc/passwd"}).SerializeToString())
    os.utime(cached, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    with caplog.at_level("WARNING", logger="inprocserve._ort_backend"):
        server = make_server(repository, config=config)
    messages = [r.getMessage() for r in caplog.records]
    assert any("may not climb out" in m and "deleting the cached graph" in m for m in messages)
    # Never loaded: the version is built from model.onnx again (the cache is derived data), and the planted
    # graph is gone.
    assert server.predict("m", {"x": np.ones((1, 4), np.float32)})["y"].tolist() == [[2.0] * 4]
    (rebuilt,) = cached_graphs(path.parent)
    assert b"passwd" not in rebuilt.read_bytes()


def test_the_walker_looks_into_functions_and_their_attribute_defaults() -> None:
    in_node = external_tensor("w_node", WEIGHTS, {"location": "../node.bin"})
    default = external_tensor("w_default", WEIGHTS, {"location": "../default.bin"})
    function = helper.make_function(
        "local",
        "f",
        ["x"],
        ["y"],
        [helper.make_node("Constant", [], ["y"], value=in_node)],
        [helper.make_opsetid("", 17)],
    )
    function.attribute_proto.append(helper.make_attribute("scale", default))
    model = initializer_model({"location": "weights.bin"})
    model.functions.append(function)
    found = sorted(ref.tensor for ref in external_data(model.SerializeToString()))
    assert found == ["w", "w_default", "w_node"]


VALID_BYTES = subgraph_model({"location": "weights.bin"}).SerializeToString()


@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, len(VALID_BYTES) - 1), st.integers(0, 255)).map(
            lambda flip: VALID_BYTES[: flip[0]] + bytes([flip[1]]) + VALID_BYTES[flip[0] + 1 :]
        ),
        st.integers(0, len(VALID_BYTES)).map(lambda cut: VALID_BYTES[:cut]),
    )
)
@settings(max_examples=500, derandomize=True, database=None, deadline=None)
def test_the_walker_reads_any_bytes_or_says_they_are_no_model(data: bytes) -> None:
    try:
        references = external_data(data)
    except ValueError as exc:
        assert "not a valid ONNX model" in str(exc)
        return
    assert all(isinstance(ref.entries, dict) for ref in references)


def test_load_by_path_refuses_a_linked_model_file_unless_links_are_followed(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    real = save_model(build_scale_model(3.0), tmp_path / "real", "m", 1)
    link = tmp_path / "link.onnx"
    link.symlink_to(real)
    with pytest.raises(inprocserve.ModelLoadError, match=r"model file .* is a symbolic link"):
        make_server().load("m", path=link)
    server = make_server(follow_symlinks=True)
    server.load("m", path=link)
    assert server.predict("m", {"x": np.ones((1, 4), dtype=np.float32)})["y"].tolist() == [[3.0] * 4]


def test_a_version_failed_by_a_dangling_checksum_link_loads_once_its_target_arrives(
    repository: Path, make_server: ServerFactory
) -> None:
    """Links were left out of what a failed version is retried on: the target's arrival changed nothing."""
    path = save_model(build_scale_model(2.0), repository, "m", 1)
    target = repository.parent / "checksums" / "m-1.sha256"
    path.with_name("model.onnx.sha256").symlink_to(target)
    server = make_server(repository)
    assert server.status()["models"]["m"]["versions"]["1"]["state"] == "failed"
    target.parent.mkdir()
    target.write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  model.onnx\n")
    assert server.refresh() == []
    assert server.models == {"m": [1]}


@pytest.mark.parametrize("kind", ["pipe", "folder", "link to a device", "dangling link"])
def test_a_checksum_file_that_is_no_file_fails_the_version_at_once(
    repository: Path, make_server: ServerFactory, kind: str
) -> None:
    path = save_model(build_scale_model(2.0), repository, "m", 1)
    sidecar = path.with_name("model.onnx.sha256")
    if kind == "pipe":  # opening it waited for a writer: the server never came up
        os.mkfifo(sidecar)
    elif kind == "folder":
        sidecar.mkdir()
    elif kind == "link to a device":  # /dev/zero was read without end
        sidecar.symlink_to("/dev/zero")
    else:  # counted as no checksum: the version loaded unchecked
        sidecar.symlink_to(repository / "checksums" / "model.onnx.sha256")
    servers: list[inprocserve.Server] = []
    starting = threading.Thread(target=lambda: servers.append(make_server(repository)), daemon=True)
    starting.start()
    starting.join(timeout=20)
    if starting.is_alive():
        if kind == "pipe":  # let the stuck load go on (a writer that closes at once), so the test ends
            os.close(os.open(sidecar, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"Server() did not return with a {kind} as model.onnx.sha256")
    version = servers[0].status()["models"]["m"]["versions"]["1"]
    assert version["state"] == "failed"
    if kind == "dangling link":
        assert "model.onnx.sha256 cannot be read" in version["error"]
    else:
        assert "model.onnx.sha256 is not a regular file (a folder, a pipe or a device)" in version["error"]


def test_a_model_file_cut_short_while_it_is_scanned_fails_the_scan_not_the_process(tmp_path: Path) -> None:
    """The scan for external data read a memory map of model.onnx: a release copied over it in place (`cp`
    truncates first) while a refresh scanned it killed the whole process with SIGBUS (the hostile-repository
    soak, under load). Read, the scan sees the bytes it read, or a short file."""
    model = tmp_path / "model.onnx"
    script = f"""
import sys
from pathlib import Path

import inprocserve._integrity as integrity
from inprocserve.testing import build_scale_model

model = Path({str(model)!r})
model.write_bytes(build_scale_model(2.0).SerializeToString())
walk = integrity.external_data

def cut_short_meanwhile(data):
    model.write_bytes(b"")  # (cp's first step: the file truncated, then written again)
    return walk(data)

integrity.external_data = cut_short_meanwhile
print("locations", integrity.external_data_locations(model))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "locations ()" in done.stdout


def test_load_by_path_of_a_dangling_link_says_what_it_points_to(tmp_path: Path, make_server: ServerFactory) -> None:
    """A link to a deleted release's model file was "model file ... does not exist": the link is there."""
    link = tmp_path / "m" / "3" / "model.onnx"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "releases" / "m-3" / "model.onnx")
    with pytest.raises(inprocserve.ModelLoadError) as caught:
        make_server(follow_symlinks=True).load("m", path=link)
    assert (
        f"model file {link} is a symbolic link to {tmp_path / 'releases' / 'm-3' / 'model.onnx'}, which does not "
        in (str(caught.value))
    )
