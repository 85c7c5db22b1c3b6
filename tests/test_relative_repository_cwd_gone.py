"""A relative repository is made absolute when the server is built, against the working directory: where that
folder was deleted under the process (an old release's folder removed by a deploy), the refusal says what to
pass, not a bare ``FileNotFoundError``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import inprocserve


def test_a_relative_repository_in_a_deleted_working_directory_is_a_configuration_error(tmp_path: Path) -> None:
    gone = tmp_path / "release-41"
    gone.mkdir()
    before = os.getcwd()
    os.chdir(gone)
    try:
        gone.rmdir()
        with pytest.raises(inprocserve.ConfigurationError) as refused:
            inprocserve.Server(repository="models")
    finally:
        os.chdir(before)
    said = str(refused.value)
    assert "'models' is relative" in said and "pass an absolute path" in said, said
