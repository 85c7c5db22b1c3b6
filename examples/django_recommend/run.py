"""Run the recommendation example: build two rankers, serve the Django project over HTTP, and play 300
users who click what they like best on the page. Interleaving tells which ranker users prefer.

    python examples/django_recommend/run.py                        # a threaded WSGI server in this process
    python examples/django_recommend/run.py --asgi                 # uvicorn (a child process), async views
    python examples/django_recommend/run.py --build-rankers DIR    # only write the rankers, to serve yourself

``--asgi`` starts uvicorn as recommend.py's docstring shows, on a socket this script binds (127.0.0.1, a
free port) and hands over with ``--fd``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import recommend

HERE = Path(__file__).resolve().parent
USERS = 300
TASTE = np.array([-0.4, 1.0, 0.2, 0.1, 0.8, 0.0], np.float32)  # what the simulated users actually like
HTTP_TIMEOUT_S = 30.0


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def wait_ready(base: str, *, timeout_s: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> object:
    """The readiness answer, once it is 200: the models load in the background (503 until then). With
    ``process`` (the server), stop waiting as soon as it exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/-/inprocserve/ready", timeout=HTTP_TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
        except (urllib.error.URLError, OSError):  # not answering yet
            if process is None:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base} was not ready within {timeout_s:g} s")
        time.sleep(0.1)


@contextlib.contextmanager
def serve_wsgi(repository: Path, secret_key: str) -> Iterator[str]:
    """The project under a threaded WSGI server in this process; yields its base URL."""
    recommend.configure(repository, secret_key=secret_key)
    from django.core.wsgi import get_wsgi_application
    from inprocserve_django import reset_server

    httpd = make_server("127.0.0.1", 0, get_wsgi_application(), ThreadingWSGIServer, QuietHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        reset_server()


def die_with_parent() -> None:
    """``preexec_fn`` for uvicorn: on Linux, SIGTERM it when this script dies, even by SIGKILL (a test's
    timeout), so that it never outlives the demo."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def serve_asgi(repository: Path, secret_key: str, score_token: str) -> Iterator[str]:
    """The project under uvicorn, a child process, with the settings in its environment; yields its base URL.

    The socket is bound here and handed to uvicorn (``--fd``): its port is known before uvicorn starts, and
    no other process can take it meanwhile.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    environment = {
        **os.environ,
        "DJANGO_RECOMMEND_REPOSITORY": str(repository),
        "DJANGO_SECRET_KEY": secret_key,
        "DJANGO_RECOMMEND_SCORE_TOKEN": score_token,
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE), "recommend:asgi_application"]
    command += ["--fd", str(listener.fileno()), "--log-level", "warning", "--no-access-log"]
    with listener:  # closed here once uvicorn holds its own copy
        process = subprocess.Popen(command, env=environment, pass_fds=[listener.fileno()], preexec_fn=die_with_parent)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        wait_ready(base, process=process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def call(url: str, body: object = None, *, token: str | None = None) -> dict[str, object]:
    """GET ``url``, or POST ``body`` as JSON; the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def play_users(base: str) -> dict[str, int]:
    """USERS users each open a page and click the product they like best; returns the interleaving wins."""
    utility = recommend.ITEMS @ TASTE
    rng = np.random.default_rng(0)
    for user in range(USERS):
        page = call(f"{base}/rank?size=8&user=user-{user}")
        products, positions = page["products"], page["positions"]
        assert isinstance(products, list) and isinstance(positions, list)
        # the user looks at the page and clicks what they like most (tastes are noisy), favouring
        # the top of the page a little, as real users do
        liked = [utility[p] + rng.normal(0, 0.8) - 0.05 * rank for rank, p in enumerate(products)]
        choice = int(np.argmax(liked))
        call(f"{base}/click?user=user-{user}", {"click_token": page["click_token"], "position": positions[choice]})
    wins = call(f"{base}/stats")
    return {key: int(value) for key, value in wins.items() if isinstance(value, int)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asgi", action="store_true", help="serve with uvicorn and the async views")
    parser.add_argument("--build-rankers", metavar="DIR", type=Path, help="write the two rankers into DIR, and exit")
    args = parser.parse_args(argv)
    if args.build_rankers is not None:
        recommend.build_rankers(args.build_rankers)
        print(f"wrote the rankers to {args.build_rankers}/ranker (serve them: see recommend.py's docstring)")
        return
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        recommend.build_rankers(repository)
        secret_key = secrets.token_hex(32)  # yours: from DJANGO_SECRET_KEY
        score_token = secrets.token_hex(32)  # yours: from DJANGO_RECOMMEND_SCORE_TOKEN
        served = serve_asgi(repository, secret_key, score_token) if args.asgi else serve_wsgi(repository, secret_key)
        with served as base:
            server = "uvicorn (ASGI, async views)" if args.asgi else "a threaded WSGI server"
            print(f"Serving the Django project with {server} on {base}; rankers: A = ranker v1, B = ranker v2")
            print(f"ready: {wait_ready(base)}")
            wins = play_users(base)
            if args.asgi:  # what another service would ask: ranker A's scores, from the loop's batcher
                products = [3, 17, 5]
                scored = call(f"{base}/score", {"products": products}, token=score_token)
                print(f"POST /score {{'products': {products}}} -> {scored}")
    decided = wins["A"] + wins["B"]
    print(
        f"{wins['queries']} interleaved pages, one click each: ranker A won {wins['A']}, ranker B won "
        f"{wins['B']}, ties {wins['ties']}"
    )
    if decided:
        print(
            f"users preferred ranker {'B' if wins['B'] > wins['A'] else 'A'} in "
            f"{max(wins['A'], wins['B']) / decided:.0%} of decided pages"
        )


if __name__ == "__main__":
    main()
