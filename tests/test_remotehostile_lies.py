"""Answers that lie (about their length, their framing, their tensors), a body dripped a byte at a time, and
redirects elsewhere, from the raw-socket server of :mod:`tests.test_remotehostile` to a real
:class:`inprocserve.Server` whose version is a ``remote.toml``: each is a typed error of its own request, naming
the server, and the next request is answered."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve

from .conftest import ServerFactory
from .test_remotehostile import Hostile, Step, predicted, response, serve
from .test_remotehostile import hostile as hostile  # (the fixture)


def outputs(*tensors: dict[str, Any]) -> bytes:
    return json.dumps({"outputs": list(tensors)}).encode()


def y(**fields: Any) -> dict[str, Any]:
    return {"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [2.0] * 8, **fields}


def binary(sizes: list[int], raw: bytes) -> bytes:
    document = outputs(*(y(parameters={"binary_data_size": size}, data=None) for size in sizes))
    document = document.replace(b', "data": null', b"")
    return response(document + raw, headers={"Inference-Header-Content-Length": str(len(document))})


LIES: dict[str, bytes | Step] = {
    # (then closed: a step that is a function ends its connection)
    "longer-content-length": lambda conn: conn.sendall(response(outputs(y()), headers={"Content-Length": "9999"})),
    "shorter-content-length": response(outputs(y()), headers={"Content-Length": "20"}),
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + outputs(y()) + b"\r\n0\r\n\r\n",
    "chunk-longer-than-said": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n"
    + outputs(y())
    + b"\r\n0\r\n\r\n",
    "nested-100000": response(b'{"outputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "datatype-not-data": response(outputs(y(datatype="INT64", data=[2.5] * 8))),
    "bool-datatype-numbers": response(outputs(y(datatype="BOOL", data=[7] * 8))),
    "shape-overflow": response(outputs(y(shape=[2, 2**62, 2**62]))),
    "shape-negative": response(outputs(y(shape=[2, -4]))),
    "shape-huge": response(outputs(y(shape=[2, 10**30]))),
    "binary-size-past-body": binary([64], struct.pack("<8f", *[2.0] * 8)),
    "binary-size-negative": binary([-32], struct.pack("<8f", *[2.0] * 8)),
    "binary-size-not-a-number": binary(["32"], struct.pack("<8f", *[2.0] * 8)),  # type: ignore[list-item]
    "only-another-output": response(outputs(y(name="z"))),
    "duplicated-output": response(outputs(y(), y())),
    "outputs-not-a-list": response(b'{"outputs": {"y": [2.0]}}'),
    "not-json": response(b"<html>gateway</html>", headers={"Content-Type": "text/html"}),
    "json-header-length-past-body": response(outputs(y()), headers={"Inference-Header-Content-Length": "999999"}),
    "status-line-garbage": b"HTTP/1.1 2x0 OK\r\n\r\n",
    "header-line-huge": b"HTTP/1.1 200 OK\r\nX: " + b"a" * (1 << 20) + b"\r\nContent-Length: 2\r\n\r\n{}",
    "many-headers": b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 1000 + b"Content-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_answer_is_its_requests_typed_error_and_the_next_is_answered(
    repository: Path, make_server: ServerFactory, hostile: Hostile, lie: str
) -> None:
    server = serve(repository, make_server, hostile)
    hostile.script = [LIES[lie]]
    with pytest.raises(inprocserve.InferenceError) as error:  # (RemoteUnavailableError is one)
        predicted(server)
    assert type(error.value) in (inprocserve.InferenceError, inprocserve.RemoteUnavailableError), repr(error.value)
    assert "model 'scale' version 1: " in str(error.value)
    np.testing.assert_array_equal(predicted(server), 2.0)
    np.testing.assert_array_equal(predicted(server), 2.0)


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"Infinity"])
def test_numbers_json_does_not_have_are_refused_or_taken_as_what_they_say(
    repository: Path, make_server: ServerFactory, hostile: Hostile, number: bytes
) -> None:
    server = serve(repository, make_server, hostile)
    hostile.script = [response(outputs(y()).replace(b"[2.0, 2.0,", b"[" + number + b", 2.0,", 1))]
    try:
        answer = predicted(server)
    except inprocserve.InferenceError as exc:
        assert "model 'scale' version 1: " in str(exc)
    else:
        assert np.isnan(answer[0, 0]) or np.isinf(answer[0, 0])
    np.testing.assert_array_equal(predicted(server), 2.0)


def test_a_body_dripped_a_byte_a_second_ends_at_the_deadline_and_its_connection_is_dropped(
    repository: Path, make_server: ServerFactory, hostile: Hostile
) -> None:
    def drip(conn: socket.socket) -> None:
        body = outputs(y())
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for byte in body:
            conn.sendall(bytes([byte]))
            time.sleep(1.0)

    server = serve(repository, make_server, hostile)
    hostile.script = [drip]
    connections = hostile.connections
    started = time.monotonic()
    with pytest.raises(inprocserve.DeadlineExceededError):
        predicted(server, timeout_s=1.0)
    overrun = time.monotonic() - started - 1.0
    assert overrun < 0.5, overrun
    np.testing.assert_array_equal(predicted(server), 2.0)
    assert hostile.connections == connections + 1  # the dripped one was not used again


@pytest.mark.parametrize(
    "status", ["301 Moved Permanently", "302 Found", "307 Temporary Redirect", "308 Permanent Redirect"]
)
def test_a_redirect_is_not_followed_and_the_headers_go_nowhere_else(
    repository: Path, make_server: ServerFactory, hostile: Hostile, status: str
) -> None:
    elsewhere = socket.create_server(("127.0.0.1", 0))
    elsewhere.settimeout(0.3)
    try:
        port = elsewhere.getsockname()[1]
        server = serve(repository, make_server, hostile, '[headers]\nAuthorization = "Bearer s3cret-token-value"\n')
        location = f"http://127.0.0.1:{port}/v2/models/scale/infer"
        hostile.script = [response(b"moved", status=status, headers={"Location": location})]
        with pytest.raises(inprocserve.InferenceError) as error:
            predicted(server)
        assert str(error.value).endswith(
            f"answered {status.split()[0]}: moved (a redirect to {location}, not followed: set url in remote.toml to "
            "where the model is served)"
        )
        assert "s3cret" not in str(error.value)
        with pytest.raises(TimeoutError):
            elsewhere.accept()  # nothing was sent there
        assert all(h.get("authorization") == "Bearer s3cret-token-value" for _, h in hostile.requests)
        np.testing.assert_array_equal(predicted(server), 2.0)
    finally:
        elsewhere.close()


@pytest.mark.parametrize(
    ("lie", "said"),
    [
        ("nested-100000", "the answer is not an inference response: its JSON is nested too deeply to parse"),
        ("not-json", "the answer is not an inference response: its JSON is malformed: Expecting value"),
        ("only-another-output", "the answer has no output 'y' (it has none of those the metadata declares)"),
        ("shape-negative", "the answer is not an inference response: tensor 'y': 'shape' must be a list of ints"),
        ("binary-size-past-body", "output 'y': no data, or a binary_data_size that does not fit the body"),
    ],
)
def test_a_broken_answer_says_it_is_the_answers_and_names_the_server_that_gave_it(
    repository: Path, make_server: ServerFactory, hostile: Hostile, lie: str, said: str
) -> None:
    # It said "the request JSON is malformed" of an answer, and named no server: behind a load balancer, which
    # of its pods answers so could not be told, nor a server's broken answers from the model's.
    server = serve(repository, make_server, hostile)
    hostile.script = [LIES[lie]]
    with pytest.raises(inprocserve.InferenceError) as error:
        predicted(server)
    assert said in str(error.value)
    assert str(error.value).endswith(f"(answered by http://127.0.0.1:{hostile.port}/v2/models/scale)")
    np.testing.assert_array_equal(predicted(server), 2.0)
