"""``inprocserve_django.predict`` called the way the core and Flask plug-in are (``predict("fraud", inputs)``,
no request first): the error says to pass the request, not what Python or ``request.META`` say.

(The README shows the Flask view's ``predict("fraud", {...})`` next to the Django view's
``predict(request, "fraud", {...})``: a view written from the first raised "predict() missing 1 required
positional argument: 'inputs'" though the inputs were there, and with the request last "'str' object has no
attribute 'META'".)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import inprocserve_django
import pytest
from django.http import HttpRequest, JsonResponse
from django.test import RequestFactory, override_settings
from inprocserve_django import OutsideRequestError, apredict, get_server, predict, reset_server

import inprocserve
from inprocserve.testing import build_scale_model, save_model

ROWS = {"x": [[1.0, 2.0, 3.0, 4.0]]}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[None]:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    with override_settings(INPROCSERVE={"REPOSITORY": str(tmp_path / "models")}):
        yield
    reset_server()


def test_predict_without_the_request_says_to_pass_it_first(served: None) -> None:
    with pytest.raises(TypeError) as caught:
        predict("scale", ROWS)
    message = str(caught.value)
    assert "predict(request, 'scale', inputs)" in message and "get_server().predict" in message, message


def test_predict_with_the_request_last_says_to_pass_it_first(served: None) -> None:
    request = RequestFactory().post("/score")
    with pytest.raises(TypeError) as caught:
        predict("scale", ROWS, request)
    assert "predict(request, 'scale', inputs)" in str(caught.value), caught.value


def test_apredict_without_the_request_says_to_pass_it_first(served: None) -> None:
    import asyncio

    with pytest.raises(TypeError) as caught:
        asyncio.run(apredict("scale", ROWS))
    assert "apredict(request, 'scale', inputs)" in str(caught.value), caught.value


def test_the_documented_call_still_answers(served: None) -> None:
    request = RequestFactory().post("/score")
    assert predict(request, "scale", ROWS).version == 1
    assert predict(request, "scale", inputs=ROWS).version == 1  # (inputs by name, as before)
    assert get_server().predict("scale", ROWS).version == 1


def test_predict_with_no_request_outside_a_view_says_what_to_call(served: None) -> None:
    """A task or a command has no request: predict(None, ...) raised "'NoneType' object has no attribute
    'META'", then a plain TypeError; it is the plug-in's own error, still a TypeError for the handlers that
    caught one, and says both ways out."""
    with pytest.raises(OutsideRequestError) as caught:
        predict(None, "scale", ROWS)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, TypeError) and isinstance(error, inprocserve.InprocserveError)
    message = str(error)
    assert "pass its request, predict(request, 'scale', inputs)" in message, message
    assert "get_server().predict('scale', inputs), with context=" in message and "timeout_s=" in message, message
    assert error.model == "scale"


def test_apredict_with_no_request_says_what_to_await(served: None) -> None:
    import asyncio

    with pytest.raises(OutsideRequestError) as caught:
        asyncio.run(apredict(None, "scale", ROWS))  # type: ignore[arg-type]
    assert "(await aget_server()).apredict('scale', inputs)" in str(caught.value), caught.value
    assert isinstance(caught.value, TypeError)


def test_outside_request_error_is_exported_and_survives_pickling() -> None:
    import pickle

    assert "OutsideRequestError" in inprocserve_django.__all__
    error = pickle.loads(pickle.dumps(OutsideRequestError("no request", model="scale")))
    assert type(error) is OutsideRequestError and error.model == "scale" and str(error) == "no request"


def test_predict_in_an_async_view_says_to_await_apredict(served: None) -> None:
    """``predict`` (not ``apredict``) in an ``async def`` view blocked the worker's event loop, and every other
    request on it, for the whole run (and built the server there, on a first request), with no error for an
    anonymous request, while a logged-in user's request failed on Django's ``SynchronousOnlyOperation`` (the
    session read): the error now says to await ``apredict``."""

    async def ascore(request: HttpRequest) -> JsonResponse:
        result = predict(request, "scale", ROWS)  # (apredict forgotten)
        return JsonResponse({"y": result["y"].tolist()})

    with pytest.raises(TypeError) as caught:
        asyncio.run(ascore(RequestFactory().post("/ascore")))
    message = str(caught.value)
    assert "await inprocserve_django.apredict(request, 'scale', inputs)" in message, message
