"""``resolved_path`` on every Python: a link loop anywhere on a path is ``ELOOP``, and nothing else is.

Python 3.13's ``Path.resolve()`` is ``os.path.realpath(path)``, which leaves a loop in the path it returns and
goes on with the parts after it; 3.11 and 3.12 ``stat()`` the result and raise ``RuntimeError`` on ``ELOOP``.
The tests run with the running Python's ``resolve()`` and, before 3.13, with 3.13's as well.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inprocserve._integrity import resolved_path
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def _resolve_of_python_3_13(self: Path, strict: bool = False) -> Path:
    return type(self)(os.path.realpath(self, strict=strict))


@pytest.fixture(params=["this python", "python 3.13"])
def resolve(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Path.resolve as the running Python has it, or as Python 3.13 has it."""
    if request.param == "python 3.13":
        if sys.version_info >= (3, 13):
            pytest.skip("the running Python is 3.13 or later: its own resolve() is run")
        monkeypatch.setattr(Path, "resolve", _resolve_of_python_3_13)
    yield request.param


def test_a_loop_in_a_folder_on_the_path_is_a_link_loop(tmp_path: Path, resolve: str) -> None:
    """Python 3.13 returned ``<folder>/loop/warm.npz`` (its last part no link): the check passed it, and the
    version failed later on a file it could not read, not naming the setting."""
    (tmp_path / "loop").symlink_to("loop")
    for path in (tmp_path / "loop", tmp_path / "loop" / "warm.npz", tmp_path / "loop" / "a" / "b.npz"):
        with pytest.raises(OSError) as caught:
            resolved_path(path)
        assert caught.value.errno == errno.ELOOP, (path, caught.value)


def test_a_link_to_a_missing_file_a_relative_path_and_the_root_are_no_loop(
    tmp_path: Path, resolve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dangling.npz").symlink_to("missing.npz")
    assert resolved_path(tmp_path / "dangling.npz") == tmp_path.resolve() / "missing.npz"
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert resolved_path(Path("../dangling.npz")) == tmp_path.resolve() / "missing.npz"
    assert resolved_path(Path("x.npz")) == tmp_path.resolve() / "sub" / "x.npz"
    assert resolved_path(Path("/")) == Path("/")


@pytest.mark.parametrize(
    ("section", "key", "what"),
    [("warmup", "inputs_file", "warm-up inputs file"), ("drift", "reference_file", "drift reference file")],
)
def test_a_config_file_reached_through_a_looping_folder_fails_the_version_naming_the_setting(
    repository: Path, make_server: ServerFactory, resolve: str, section: str, key: str, what: str
) -> None:
    save_model(build_scale_model(2.0), repository, "m", 1)
    save_model(build_scale_model(2.0), repository, "other", 1)
    folder = repository / "m"
    (folder / "loop").symlink_to("loop")
    (folder / "config.toml").write_text(f'[{section}]\n{key} = "loop/file.npz"\n')
    server = make_server(repository, follow_symlinks=True)
    status = server.status()["models"]["m"]["versions"]["1"]
    assert status["state"] == "failed"
    assert f"the {what} 'loop/file.npz' must be a path inside the model folder" in status["error"], status["error"]
    assert "cannot be resolved: Too many levels of symbolic links" in status["error"], status["error"]
    assert server.models == {"other": [1]}
