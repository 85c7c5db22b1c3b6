"""Hostile clients against a real gunicorn (``--preload``, two gthread workers) serving the Flask plug-in's
endpoints, admin token, status page and Open Inference Protocol (``gunicorn_hostile_app.py``) over loopback.

Requests are written byte by byte on a socket: a header's bytes reach the app as the WSGI server decodes them
(Latin-1), which neither urllib nor Flask's test client lets a test send. Each hostile request gets a 4xx that
says what to fix, the log gets no traceback, and the next ordinary request is answered.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.ports import listening_socket
from tests.processes import stop_process

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
TOKEN = "hostile-clients-token"  # (gunicorn_hostile_app.TOKEN)
INFER = "/v2/models/scale/infer"
GOOD = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


@dataclass
class Served:
    port: int
    log: Path

    def send(
        self,
        method: str,
        path: str,
        headers: dict[str, bytes | str] | None = None,
        body: bytes = b"",
        *,
        length: int | None = None,
        chunked: bool = False,
    ) -> Answer:
        """One request on a fresh connection, its header values written as the bytes given. With ``length``, the
        ``Content-Length`` says so whatever the body's size, and the client stops sending after the body (it
        shuts its side of the connection down, and reads the answer); ``chunked``: no ``Content-Length``, the body
        is sent as it is given (its chunked framing), then the client stops sending."""
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
        if not chunked:
            lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
        for name, value in (headers or {}).items():
            lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")))
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as connection:
            connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            if length is not None or chunked:
                connection.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := connection.recv(1 << 16):
                received += chunk
        head, _, content = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in header_lines)
        if fields.get("Transfer-Encoding") == "chunked":
            content = _unchunked(content)
        return Answer(int(status_line.split()[1]), fields, content)

    def log_since(self, offset: int) -> str:
        """What gunicorn and the workers logged past ``offset`` (the log's size before a test's requests)."""
        return self.log.read_bytes()[offset:].decode(errors="replace")

    def infers(self) -> None:
        """An ordinary inference is answered (the server serves on)."""
        answer = self.send("POST", INFER, {"Content-Type": "application/json"}, GOOD)
        assert answer.status == 200, answer
        assert answer.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [2, 4, 6, 8]}]


def _unchunked(content: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, content = content.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            return body
        body, content = body + content[:size], content[size + 2 :]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("hostile")
    repository = folder / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    listener = listening_socket()  # handed to gunicorn: no other process can take its port first
    env = {
        **os.environ,
        "INPROCSERVE_TEST_REPOSITORY": str(repository),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), str(ROOT / "integrations" / "flask" / "src")]),
    }
    command = [
        sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--threads", "4", "--bind",
        f"fd://{listener.fileno()}", "--graceful-timeout", "5", "--chdir", str(HERE), "gunicorn_hostile_app:app",
    ]  # fmt: skip
    log = folder / "gunicorn.log"
    with listener, open(log, "wb") as output:
        master = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()]
        )
        served = Served(listener.getsockname()[1], log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if served.send("GET", "/v2/health/ready").status == 200:
                    break
            except OSError:  # (refused or reset: the socket listens before gunicorn has the app)
                pass
            assert master.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield served
    finally:
        stop_process(master)


@pytest.mark.parametrize(
    "authorization",
    [b"Basic \xff\xfe", b"Basic " + "caf\u00e9:".encode("latin-1") + TOKEN.encode(), b"Bearer \xe9" + TOKEN.encode()],
    ids=["basic-latin1", "basic-latin1-with-token", "bearer-latin1"],
)
def test_credentials_that_are_not_ascii_are_a_401_on_the_status_page_not_a_500(
    served: Served, authorization: bytes
) -> None:
    # A WSGI server decodes a header's bytes as Latin-1: base64.b64decode refused the text of "Basic \xff\xfe"
    # with a ValueError no one caught, a 500 and a traceback in the log for each such request.
    logged = served.log.stat().st_size
    answer = served.send("GET", "/-/inprocserve/status", {"Authorization": authorization})
    assert answer.status == 401, answer
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert b"needs its token" in answer.body
    assert served.send("GET", "/-/inprocserve/status", {"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert "Traceback" not in served.log_since(logged)
    served.infers()


@pytest.mark.parametrize("sent", [60, len(GOOD) - 1], ids=["part-of-the-json", "all-but-one-byte"])
def test_a_body_that_ends_before_its_content_length_is_a_400_naming_the_length(served: Served, sent: int) -> None:
    # gunicorn ends a body early, without an error, when the client stops sending: the part read was refused as
    # "the request JSON is malformed: Unterminated string ...", blaming JSON the client had right.
    answer = served.send("POST", INFER, {"Content-Type": "application/json"}, GOOD[:sent], length=len(GOOD))
    assert answer.status == 400, answer
    message = answer.json()["error"]
    assert isinstance(message, str)
    assert f"ended after {sent} bytes, before the {len(GOOD)} its Content-Length declares" in message, message
    assert "JSON" not in message
    served.infers()


@pytest.mark.parametrize(
    "body",
    [b'{"version": 1', b'{"version": 1, "percent": 5}'],
    ids=["cut-inside-the-json", "whole-json-but-short-of-its-length"],
)
def test_an_admin_body_that_ends_before_its_content_length_is_a_400_and_not_acted_on(
    served: Served, body: bytes
) -> None:
    # The part read was refused as "not JSON", blaming JSON the client had right, or, a whole JSON object in it,
    # acted on as if it were the body the client meant to send.
    token = {"Authorization": f"Bearer {TOKEN}"}
    path = "/-/inprocserve/models/scale/canary"
    answer = served.send("POST", path, token, body, length=len(body) + 20)
    assert answer.status == 400, answer
    document = answer.json()
    assert document["error"] == "invalid_input"
    expected = f"ended after {len(body)} bytes, before the {len(body) + 20} its Content-Length declares"
    assert expected in str(document["message"]), document
    status = served.send("GET", "/-/inprocserve/models", token)
    control = status.json()["models"]["scale"]["control"] or {}  # (None until a first action)
    assert status.status == 200 and control.get("canary_version") is None, control
    served.infers()


HUGE_INTEGER = b"1" * 5_000  # past Python's 4300 digits for int(): json refuses to read it


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (INFER, GOOD.replace(b"[1, 2", b"[" + HUGE_INTEGER + b", 2"), "no datatype, shape or parameter takes"),
        (INFER, GOOD.replace(b'"shape": [1', b'"shape": [' + HUGE_INTEGER), "no datatype, shape or parameter takes"),
        ("/-/inprocserve/models/scale/canary", b'{"version": 1, "percent": ' + HUGE_INTEGER + b"}", "no field takes"),
    ],
    ids=["v2-data", "v2-shape", "admin-percent"],
)
def test_an_integer_of_thousands_of_digits_is_a_400_the_client_can_act_on(
    served: Served, path: str, body: bytes, words: str
) -> None:
    # json raises Python's own ValueError for it, whose words were answered: "the request JSON is malformed:
    # Exceeds the limit (4300 digits) ...; use sys.set_int_max_str_digits() to increase the limit" (advice for
    # the server's code), and an admin body "is not JSON", though it is.
    answer = served.send("POST", path, {"Authorization": f"Bearer {TOKEN}"}, body)
    assert answer.status == 400, answer
    document = answer.json()
    message = str(document.get("message", document["error"]))
    assert "more than 4300 digits" in message and words in message, message
    assert "sys." not in message and "malformed" not in message and "not JSON" not in message
    served.infers()


@pytest.mark.parametrize(
    "chunks",
    [b'100\r\n{"version": 1}', b'ffffffffffffffff\r\n{"version": 1}', b"-5\r\n{}"],
    ids=["chunk-cut-short", "chunk-past-any-body", "negative-size"],
)
def test_a_broken_chunked_admin_body_is_a_json_400_not_a_500(served: Served, chunks: bytes) -> None:
    # request.get_data() raised gunicorn's NoMoreData (InvalidChunkSize) from the admin view: a 500 page and a
    # traceback logged, where the protocol's endpoints and the Django plug-in's admin views answered a 400.
    logged = served.log.stat().st_size
    headers = {"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"}
    answer = served.send("POST", "/-/inprocserve/models/scale/switch", headers, chunks, chunked=True)
    assert answer.status == 400, answer
    document = answer.json()
    assert document["error"] == "invalid_input"
    assert "cannot be read to its end" in str(document["message"]), document
    assert "Traceback" not in served.log_since(logged)
    token = {"Authorization": f"Bearer {TOKEN}"}
    switched = served.send("POST", "/-/inprocserve/models/scale/switch", token, b'{"version": 1}')
    assert switched.status == 200 and switched.json()["stable"] == 1, switched


def test_an_empty_outputs_list_is_answered_with_every_output(served: Served) -> None:
    # "outputs": [] was taken as "send none": the model ran and the answer held no output, where KServe's and
    # MLServer's servers answer every output for it (as for no "outputs" at all).
    body = json.dumps({**json.loads(GOOD), "outputs": []}).encode()
    answer = served.send("POST", INFER, {"Content-Type": "application/json"}, body)
    assert answer.status == 200, answer
    assert answer.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [2, 4, 6, 8]}]
