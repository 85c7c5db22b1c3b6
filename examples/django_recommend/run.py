"""Run the recommendation example: build two rankers, serve the Django project over HTTP, and play 300
users who click what they like best on the page. Interleaving tells which ranker users prefer.

    python examples/django_recommend/run.py
"""

from __future__ import annotations

import json
import secrets
import socketserver
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import recommend

USERS = 300
TASTE = np.array([-0.4, 1.0, 0.2, 0.1, 0.8, 0.0], np.float32)  # what the simulated users actually like


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def wait_ready(base: str, timeout_s: float = 30.0) -> object:
    """The readiness answer, once it is 200: the models load in the background (503 until then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/-/inprocserve/ready") as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        recommend.build_rankers(repository)
        recommend.configure(repository, secret_key=secrets.token_hex(32))  # yours: from DJANGO_SECRET_KEY
        from django.core.wsgi import get_wsgi_application

        httpd = make_server("127.0.0.1", 0, get_wsgi_application(), ThreadingWSGIServer, QuietHandler)
        base = f"http://127.0.0.1:{httpd.server_port}"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        print(f"Serving the Django project on {base}; rankers: A = ranker v1, B = ranker v2")
        print(f"ready: {wait_ready(base)}")
        utility = recommend.ITEMS @ TASTE
        rng = np.random.default_rng(0)
        for user in range(USERS):
            with urllib.request.urlopen(f"{base}/rank?size=8&user=user-{user}") as response:
                page = json.loads(response.read())
            # the user looks at the page and clicks what they like most (tastes are noisy), favouring
            # the top of the page a little, as real users do
            liked = [utility[p] + rng.normal(0, 0.8) - 0.05 * rank for rank, p in enumerate(page["products"])]
            choice = int(np.argmax(liked))
            body = json.dumps({"click_token": page["click_token"], "position": page["positions"][choice]}).encode()
            urllib.request.urlopen(urllib.request.Request(f"{base}/click?user=user-{user}", data=body)).read()
        with urllib.request.urlopen(f"{base}/stats") as response:
            wins = json.loads(response.read())
        httpd.shutdown()
        httpd.server_close()
        from inprocserve_django import reset_server

        reset_server()
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
