"""``inprocserve.web`` is a package of private modules, one job each, behind one public module: its names, their
functions' ``__module__``, their annotations, its logger and its imports are what they were when it was one file, and
its classes' source is found where they are defined."""

from __future__ import annotations

import inspect
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


def test_every_public_function_is_inprocserve_web_s_and_every_annotation_resolves() -> None:
    public = [getattr(web, name) for name in web.__all__]
    defined = [value for value in public if isinstance(value, type | types.FunctionType)]
    assert len(defined) > 35
    functions = [value for value in defined if not isinstance(value, type)]
    assert {value.__module__ for value in functions} == {"inprocserve.web"}
    for value in defined:  # (a class's string annotations are read in the module its __module__ names)
        assert typing.get_type_hints(value.__init__ if isinstance(value, type) else value, localns={"Server": object})
        if isinstance(value, type):
            typing.get_type_hints(value)
    assert repr(web.Readiness(ready=True)).startswith("Readiness(ready=True")


@pytest.mark.parametrize("name", [name for name in web.__all__ if isinstance(getattr(web, name), type)])
def test_inspect_finds_each_public_class_s_source(name: str) -> None:
    """In the submodule that defines it, which its ``__module__`` names (set to ``inprocserve.web``, inspect read
    ``__init__.py`` and raised "could not find class definition"), while ``inprocserve.web.<name>`` is the class."""
    cls = getattr(web, name)
    source = inspect.getsource(cls)
    assert f"class {name}" in source and source.lstrip().startswith(("class ", "@"))
    assert cls.__module__.startswith("inprocserve.web._")
    assert getattr(sys.modules[cls.__module__], name) is cls
    assert inspect.getsourcefile(cls) == sys.modules[cls.__module__].__file__


def test_answers_pickle_and_pickles_naming_the_public_module_load() -> None:
    """Pickled under the module that defines each class; a pickle naming ``inprocserve.web.<name>`` (as the classes
    were pickled when their ``__module__`` said so) loads as the same class."""
    for answer in (
        web.Readiness(ready=True, models=("a",)),
        web.ErrorAnswer(503, {"error": "x"}),
        web.AdminAnswer(200, {}),
        web.RepositoryLayout(models=("a",), problems=()),
    ):
        assert pickle.loads(pickle.dumps(answer)) == answer
        cls = type(answer)
        defined_in = cls.__module__
        cls.__module__ = "inprocserve.web"
        try:
            public = pickle.dumps(answer)
        finally:
            cls.__module__ = defined_in
        assert b"inprocserve.web._" not in public
        assert type(pickle.loads(public)) is cls and pickle.loads(public) == answer


def test_the_web_logger_is_still_inprocserve_web(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its records name the public module, as an operator configures logging by it."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    with inprocserve.Server(repository) as server, caplog.at_level(logging.WARNING, logger="inprocserve.web"):
        answer = web.admin_answer(server, "switch", "missing", b'{"version": 1}', actor="test")
    assert answer.status == 404
    assert [record.name for record in caplog.records if "refused" in record.getMessage()] == ["inprocserve.web"]


def test_a_private_name_the_core_reads_on_the_package_is_there() -> None:
    from inprocserve.web import _control_unknown  # noqa: F401  (the status page and v2 read it)
