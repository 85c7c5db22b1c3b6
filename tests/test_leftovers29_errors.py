"""``ContextRefusedError`` (OpenFeatureFlags' refusal of a request's context, which reaches the caller) is one
of the library's errors like the others: defined in the one hierarchy, exported as ``inprocserve.`` what it is,
pickled under that name, and answered 400 by the plug-ins' mapping. It lived in the flag module, unexported,
and its tracebacks and pickles named ``inprocserve._flags.ContextRefusedError``."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from openfeature import api

import inprocserve
import inprocserve._errors
import inprocserve._flags
from inprocserve import web

from .conftest import ServerFactory
from .test_flag_hardening import CANARY, ContextOverTheWire, X


def test_it_is_exported_from_the_one_hierarchy() -> None:
    error = inprocserve.ContextRefusedError
    assert error in vars(inprocserve._errors).values() and "ContextRefusedError" in inprocserve._errors.__all__
    assert inprocserve._flags.ContextRefusedError is error  # (its old place still names it)
    assert repr(error) == "<class 'inprocserve.ContextRefusedError'>"
    assert error.__mro__[1] is inprocserve.InvalidInputError
    assert "ContextRefusedError" in (inprocserve._errors.__doc__ or "")


def test_it_pickles_under_its_public_name_and_an_old_pickle_still_loads() -> None:
    refused = inprocserve.ContextRefusedError("the context key 7 is a int, not a string", model="scale", version=2)
    data = pickle.dumps(refused)
    assert b"inprocserve._flags" not in data
    copy = pickle.loads(data)
    assert type(copy) is inprocserve.ContextRefusedError
    assert (str(copy), copy.model, copy.version) == (str(refused), "scale", 2)
    assert repr(copy) == repr(refused)
    # A pickle made where the class was inprocserve._flags.ContextRefusedError (another worker not yet upgraded)
    old = data.replace(
        b"\x8c\x0binprocserve\x94\x8c\x13ContextRefusedError",
        b"\x8c\x12inprocserve._flags\x94\x8c\x13ContextRefusedError",
    )
    assert old != data
    assert type(pickle.loads(old)) is inprocserve.ContextRefusedError


def test_the_getters_raise_it_and_predict_answers_it_as_the_invalid_input_naming_the_model(
    versions: Path, make_server: ServerFactory
) -> None:
    """What a provider of the application's own that hands its reads to OpenFeatureFlags catches, by its public
    name; a prediction names the model in an ``InvalidInputError`` (400), as before."""
    api.set_provider(ContextOverTheWire(), domain="over-the-wire")  # (the canary at 100 %)
    flags = inprocserve.OpenFeatureFlags(domain="over-the-wire")
    with pytest.raises(inprocserve.ContextRefusedError, match="context key 7 is a int, not a string"):
        flags.get_number("scale.canary.percent", 0.0, {"user_id": "u", 7: "pro"})
    server = make_server(versions, config=CANARY, flags=flags)
    assert server.predict("scale", X, context={"user_id": "u"}).variant == "canary"
    with pytest.raises(inprocserve.InvalidInputError, match="model 'scale': the context key 7 is a int") as refused:
        server.predict("scale", X, context={"user_id": "u", 7: "pro"})
    answer = web.error_answer(refused.value)
    assert answer is not None and (answer.status, answer.body["error"]) == (400, "invalid_input")
