"""The public surface: exports, the error tree, pickling."""

from __future__ import annotations
import __future__

import inspect
import pickle
import re
from pathlib import Path

import pytest

import inprocserve
import inprocserve._errors

from .conftest import run_python


def test_all_is_sorted_and_every_name_exists() -> None:
    assert list(inprocserve.__all__) == sorted(inprocserve.__all__)
    for name in inprocserve.__all__:
        assert hasattr(inprocserve, name), name


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(inprocserve).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)  # submodules: inprocserve.v2, inprocserve.web, inprocserve.testing, ...
        and not isinstance(value, __future__._Feature)  # ``from __future__ import annotations``
    }
    assert set(inprocserve.__all__) == public | {"__version__"}


def test_what_dir_and_tab_completion_offer_is_the_public_api() -> None:
    """Not the modules the package itself imports (``importlib``, ``logging``, ``types``, ``typing``) nor
    ``__future__``'s ``annotations``, which an editor's completion offered as if they were the library's."""
    offered = {name for name in dir(inprocserve) if not name.startswith("_")}
    assert offered == {*inprocserve.__all__, "testing", "v2", "web"} - {"__version__"}
    assert "__version__" in dir(inprocserve)


@pytest.mark.parametrize("name", [n for n in inprocserve.__all__ if callable(getattr(inprocserve, n))])
def test_exports_say_where_users_import_them_from(name: str) -> None:
    value = getattr(inprocserve, name)
    assert value.__module__ == "inprocserve"
    if isinstance(value, type):
        assert repr(value) == f"<class 'inprocserve.{name}'>"


def test_exported_errors_and_configs_survive_pickling_under_their_public_name() -> None:
    for name in inprocserve._errors.__all__:
        error = getattr(inprocserve, name).__new__(getattr(inprocserve, name))
        inprocserve.InprocserveError.__init__(error, "message", model="m", version=1)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and (str(copy), copy.model, copy.version) == ("message", "m", 1)
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=8))
    assert pickle.loads(pickle.dumps(config)) == config
    assert b"inprocserve._config" not in pickle.dumps(config)


def _in_web(module: str) -> bool:
    """Defined in ``inprocserve.web`` or one of its submodules (not in a module merely named like it)."""
    return module == "inprocserve.web" or module.startswith("inprocserve.web.")


def test_the_web_glue_is_a_public_module() -> None:
    from inprocserve import web

    defined = {
        name
        for name, value in vars(web).items()
        if not name.startswith("_") and callable(value) and _in_web(value.__module__)
    }
    assert list(web.__all__) == sorted(web.__all__)
    assert set(web.__all__) == defined | {
        "ADMIN_ACTIONS",
        "ADMIN_UNAUTHORIZED",
        "ANSWER_HEADERS",
        "ERROR_STATUS",
        "LENGTH_REQUIRED",
        "NO_SERVER",
        "PRIVATE_ANSWER_HEADERS",
        "SECONDS_SETTINGS",
        "SHADOW_SETTINGS",
    }


def test_the_status_page_is_public() -> None:
    assert {"STATUS_PAGE_CSP", "render_status_page"} <= set(inprocserve.__all__)
    assert callable(inprocserve.render_status_page)


def test_private_modules_are_not_exported() -> None:
    assert not [name for name in inprocserve.__all__ if name.startswith("_") and name != "__version__"]


@pytest.mark.parametrize(
    ("error", "parents"),
    [
        (inprocserve.ConfigurationError, (inprocserve.InprocserveError, ValueError)),
        (inprocserve.ConfigurationTypeError, (inprocserve.ConfigurationError, TypeError)),
        (inprocserve.ModelNotFoundError, (inprocserve.InprocserveError, LookupError)),
        (inprocserve.ModelLoadError, (inprocserve.InprocserveError,)),
        (inprocserve.InferenceError, (inprocserve.InprocserveError,)),
        (inprocserve.InvalidInputError, (inprocserve.InferenceError, ValueError)),
        (inprocserve.InputTooLargeError, (inprocserve.InvalidInputError,)),
        (inprocserve.OutOfMemoryError, (inprocserve.InferenceError,)),
        (inprocserve.RemoteUnavailableError, (inprocserve.InferenceError,)),
        (inprocserve.RunTimeLimitError, (inprocserve.InferenceError,)),
        (inprocserve.OverloadedError, (inprocserve.InprocserveError,)),
        (inprocserve.QueueFullError, (inprocserve.OverloadedError,)),
        (inprocserve.DeadlineExceededError, (inprocserve.InprocserveError, TimeoutError)),
        (inprocserve.ServerClosedError, (inprocserve.InprocserveError,)),
    ],
)
def test_error_tree(error: type[Exception], parents: tuple[type[Exception], ...]) -> None:
    for parent in parents:
        assert issubclass(error, parent)


@pytest.mark.parametrize(
    "error",
    [
        inprocserve.InvalidInputError("input 'x': bad", model="fraud", version=3),
        inprocserve.QueueFullError("full", model="fraud", version=1),
        inprocserve.ServerClosedError("closed"),
        inprocserve.RemoteUnavailableError("http://127.0.0.1:8000 is unavailable", model="fraud", version=3),
    ],
)
def test_errors_survive_pickling_with_their_context(error: inprocserve.InprocserveError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert (copy.model, copy.version) == (error.model, error.version)


def test_library_logger_has_a_null_handler_and_no_configuration() -> None:
    import logging

    logger = logging.getLogger("inprocserve")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert logger.level == logging.NOTSET


def test_the_protocol_package_is_reachable_after_a_plain_import() -> None:
    # docs/protocol.md and the plug-ins' V2_LIMITS settings write ``inprocserve.v2.Limits(...)`` in a settings
    # module or app factory that has only run ``import inprocserve``: it raised AttributeError there.
    script = (
        "import sys, inprocserve\n"
        "assert 'inprocserve.v2' not in sys.modules  # imported on first use, not by every process\n"
        "limits = inprocserve.v2.Limits(max_body_bytes=16 * 2**20)\n"
        "print(type(limits).__module__, limits.max_body_bytes, inprocserve.testing.build_scale_model.__name__)\n"
        "try:\n"
        "    inprocserve.no_such_name\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"inprocserve.v2._codec {16 * 2**20} build_scale_model",
        "module 'inprocserve' has no attribute 'no_such_name'",
    ]


def test_the_error_tree_of_docs_errors_md_draws_every_exported_error_under_its_base() -> None:
    # FlagError (raised by every flag provider's getters) was exported but missing from the tree.
    text = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    tree = text.split("```\n", 2)[1]
    parents: dict[int, str] = {}
    drawn: dict[str, str | None] = {}
    for line in tree.splitlines():
        match = re.match(r"^((?:│   |    |├── |└── )*)(\w+)", line)
        if match is None or not match.group(2).endswith("Error"):
            continue
        depth = len(match.group(1)) // 4
        parents[depth] = match.group(2)
        drawn[match.group(2)] = parents.get(depth - 1) if depth else None
    exported = {name for name in inprocserve.__all__ if name.endswith("Error")}
    assert set(drawn) == exported
    for name, parent in drawn.items():
        if parent is not None:
            assert getattr(inprocserve, name).__mro__[1] is getattr(inprocserve, parent), name
