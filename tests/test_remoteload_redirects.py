"""Redirects from a remote model server, over real sockets (the raw-socket server of
:mod:`tests.test_remotehostile`): one answered to the load's metadata read says where it pointed and what to change,
as one answered to a call does, and neither is followed; a server answering every call with a redirect (a
misconfigured balancer) is not serving, and opens the circuit as one answering 5xx does."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import ManualClock

from .conftest import ServerFactory
from .test_remotehostile import Hostile, predicted, response
from .test_remotehostile import hostile as hostile  # (the fixture)

TOKEN = "Bearer s3cret-token-value"
REDIRECTS = ["301 Moved Permanently", "302 Found", "307 Temporary Redirect", "308 Permanent Redirect"]


@pytest.fixture
def elsewhere() -> Iterator[socket.socket]:
    """Where the redirects point: a listener that must never see a connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.3)
    yield listener
    listener.close()


class RedirectingGets(Hostile):
    """The hostile server, whose GETs (the load's metadata and readiness reads) are answered ``answer``."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while line := reader.readline():
                headers: dict[str, str] = {}
                while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", "0")))
                with self.lock:
                    self.requests.append((line.decode("latin-1").strip(), headers))
                conn.sendall(self.answer)
        except OSError:
            return
        finally:
            reader.close()
            conn.close()


@pytest.mark.parametrize("status", REDIRECTS)
def test_a_redirect_answered_to_the_load_says_where_it_pointed_and_is_not_followed(
    make_server: ServerFactory, elsewhere: socket.socket, status: str
) -> None:
    # It said only "answered 301: moved", without where to, nor what to change, as a call's redirect does.
    location = f"http://127.0.0.1:{elsewhere.getsockname()[1]}/v2/models/scale"
    remote_server = RedirectingGets(response(b"moved", status=status, headers={"Location": location}))
    try:
        url = f"http://127.0.0.1:{remote_server.port}"
        server = make_server()
        remote = inprocserve.RemoteModel(
            url=url,
            model="scale",
            headers={"Authorization": TOKEN},
            binary_tensors=True,  # (no GET /v2 first)
        )
        with pytest.raises(inprocserve.ModelLoadError) as error:
            server.load("scale", remote=remote)
        assert str(error.value).endswith(
            f"{url}/v2/models/scale answered {status.split()[0]}: moved (a redirect to {location}, not followed: "
            "set url in remote.toml to where the model is served)"
        )
        assert "s3cret" not in str(error.value)
        with pytest.raises(TimeoutError):
            elsewhere.accept()  # nothing was sent there
        assert remote_server.requests and all(h.get("authorization") == TOKEN for _, h in remote_server.requests)
    finally:
        remote_server.close()


def test_a_load_redirect_without_a_location_says_so_and_the_token_in_its_location_is_hidden(
    make_server: ServerFactory,
) -> None:
    for answer, said in (
        (response(b"", status="302 Found"), "answered 302: (no body) (a redirect, not followed: set url in"),
        (
            response(
                b"moved", status="307 Temporary Redirect", headers={"Location": "https://x/?t=s3cret-token-value"}
            ),
            "answered 307: moved (a redirect to https://x/?t=***, not followed: set url in",
        ),
    ):
        remote_server = RedirectingGets(answer)
        try:
            remote = inprocserve.RemoteModel(
                url=f"http://127.0.0.1:{remote_server.port}", model="scale", headers={"Authorization": TOKEN}
            )
            with pytest.raises(inprocserve.ModelLoadError) as error:
                make_server().load("scale", remote=remote)
            assert f"{remote.url}/v2 {said}" in str(error.value)  # (the server's metadata, read first)
        finally:
            remote_server.close()


@pytest.mark.parametrize("status", REDIRECTS)
def test_a_server_answering_redirects_opens_the_circuit_and_it_closes_once_the_server_answers(
    repository: Path, make_server: ServerFactory, hostile: Hostile, elsewhere: socket.socket, status: str
) -> None:
    # A balancer that redirects every call: each redirect was counted as an answer (the circuit's success), so
    # the circuit never opened and each call waited for its redirect, however many failed before.
    folder = repository / "scale" / "1"
    folder.mkdir(parents=True)
    (folder / "remote.toml").write_text(
        f'url = "http://127.0.0.1:{hostile.port}"\nmodel = "scale"\ntimeout_s = 5\nretries = 0\n'
        f'failure_threshold = 3\ncooloff_s = 5.0\n[headers]\nAuthorization = "{TOKEN}"\n'
    )
    clock = ManualClock()
    server = make_server(repository=repository, clock=clock)
    location = f"http://127.0.0.1:{elsewhere.getsockname()[1]}/v2/models/scale/infer"
    redirect = response(b"moved", status=status, headers={"Location": location})
    hostile.script = [redirect] * 10
    for _ in range(3):
        with pytest.raises(inprocserve.RemoteUnavailableError, match=r"not followed: set url in remote\.toml"):
            predicted(server)
    assert len(hostile.script) == 7  # three calls, each sent once (a redirect is not retried)
    with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast") as error:
        predicted(server)  # the circuit is open: not sent
    assert f"a redirect to {location}" in str(error.value)  # (its last error)
    assert len(hostile.script) == 7
    assert server.status()["models"]["scale"]["versions"]["1"]["backend_status"]["circuit"] == "open"
    clock.advance(5)
    with pytest.raises(inprocserve.RemoteUnavailableError, match="a redirect"):
        predicted(server)  # the probe, redirected: open for another cool-off
    assert len(hostile.script) == 6
    with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
        predicted(server)
    hostile.script = []  # the balancer is mended
    clock.advance(5)
    np.testing.assert_array_equal(predicted(server), 2.0)  # the probe, answered: the circuit closes
    assert server.status()["models"]["scale"]["versions"]["1"]["backend_status"]["circuit"] == "closed"
    np.testing.assert_array_equal(predicted(server), 2.0)
    with pytest.raises(TimeoutError):
        elsewhere.accept()  # nothing was ever sent where the redirects pointed
