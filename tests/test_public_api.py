"""The public surface: exports, the error tree, pickling."""

from __future__ import annotations

import pickle

import pytest

import inprocserve


def test_all_is_sorted_and_every_name_exists() -> None:
    assert list(inprocserve.__all__) == sorted(inprocserve.__all__)
    for name in inprocserve.__all__:
        assert hasattr(inprocserve, name), name


def test_the_status_page_is_public() -> None:
    assert {"STATUS_PAGE_CSP", "render_status_page"} <= set(inprocserve.__all__)
    assert callable(inprocserve.render_status_page)


def test_private_modules_are_not_exported() -> None:
    assert not [name for name in inprocserve.__all__ if name.startswith("_") and name != "__version__"]


@pytest.mark.parametrize(
    ("error", "parents"),
    [
        (inprocserve.ConfigurationError, (inprocserve.InprocserveError, ValueError)),
        (inprocserve.ModelNotFoundError, (inprocserve.InprocserveError, LookupError)),
        (inprocserve.ModelLoadError, (inprocserve.InprocserveError,)),
        (inprocserve.InferenceError, (inprocserve.InprocserveError,)),
        (inprocserve.InvalidInputError, (inprocserve.InferenceError, ValueError)),
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
