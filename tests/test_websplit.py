"""``inprocserve.web`` is a package of private modules, one job each, behind one public module: its names, their
``__module__``, their annotations, its logger and its imports are what they were when it was one file."""

from __future__ import annotations

import logging
import pickle
import pkgutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import inprocserve
from inprocserve import web
from inprocserve.testing import build_scale_model, save_model

SUBMODULES = sorted(info.name for info in pkgutil.iter_modules(web.__path__, "inprocserve.web."))


def test_the_package_has_its_submodules_and_each_is_private() -> None:
    assert len(SUBMODULES) >= 6
    assert all(name.rpartition(".")[2].startswith("_") for name in SUBMODULES)


@pytest.mark.parametrize("first", [*SUBMODULES, "inprocserve._status_page", "inprocserve._server", "inprocserve.v2"])
def test_each_module_imports_first_in_a_fresh_process(first: str) -> None:
    """No import cycle: the status page and the server import ``inprocserve.web``, which imports neither at once."""
    code = f"import {first}\nfrom inprocserve.web import *\nimport inprocserve.web as web\nprint(len(web.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(len(web.__all__))


def test_every_public_object_is_inprocserve_web_s_and_its_annotations_resolve_there() -> None:
    public = [getattr(web, name) for name in web.__all__]
    defined = [value for value in public if isinstance(value, type | types.FunctionType)]
    assert len(defined) > 35
    assert {value.__module__ for value in defined} == {"inprocserve.web"}
    for value in defined:  # (a class's string annotations are read in the module its __module__ names)
        assert typing.get_type_hints(value.__init__ if isinstance(value, type) else value, localns={"Server": object})
        if isinstance(value, type):
            typing.get_type_hints(value)
    assert repr(web.Readiness(ready=True)).startswith("Readiness(ready=True")


def test_answers_pickle_under_the_public_module() -> None:
    for answer in (
        web.Readiness(ready=True, models=("a",)),
        web.ErrorAnswer(503, {"error": "x"}),
        web.AdminAnswer(200, {}),
    ):
        data = pickle.dumps(answer)
        assert b"inprocserve.web\x94" in data or b"inprocserve.web\n" in data, data[:80]
        assert b"inprocserve.web._" not in data
        assert pickle.loads(data) == answer


def test_the_web_logger_is_still_inprocserve_web(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its records name the public module, as an operator configures logging by it."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    with inprocserve.Server(repository) as server, caplog.at_level(logging.WARNING, logger="inprocserve.web"):
        answer = web.admin_answer(server, "switch", "missing", b'{"version": 1}', actor="test")
    assert answer.status == 404
    assert [record.name for record in caplog.records if "refused" in record.getMessage()] == ["inprocserve.web"]


def test_a_private_name_the_core_reads_on_the_package_is_there() -> None:
    from inprocserve.web import _control_unknown  # noqa: F401  (the status page and v2 read it)
