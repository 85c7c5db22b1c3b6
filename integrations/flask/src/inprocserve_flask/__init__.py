"""Flask extension for inprocserve.

::

    from flask import Flask
    from inprocserve_flask import Inprocserve, predict

    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = "models/"
    Inprocserve(app)

    @app.post("/score")
    def score():
        result = predict("fraud", {"x": request.json["rows"]})   # user and deadline taken from the request
        return {"probability": result["y"][:, 1].tolist(), "version": result.version}

The server is created lazily, once per process, on first use — so it works under gunicorn with
``--preload`` — or at start-up with ``INPROCSERVE_EAGER = True``.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from werkzeug.local import LocalProxy

import inprocserve

__all__ = ["Inprocserve", "default_context", "predict", "server", "timeout"]

_EXTENSION = "inprocserve"

DEFAULTS: dict[str, Any] = {
    "INPROCSERVE_REPOSITORY": None,
    "INPROCSERVE_MODEL_CONFIG": None,  # inprocserve.ModelConfig: defaults for every model
    "INPROCSERVE_MODELS": {},  # name -> inprocserve.ModelConfig
    "INPROCSERVE_FLAGS": None,  # an inprocserve.FlagProvider
    "INPROCSERVE_FLAG_TIMEOUT_S": 0.05,
    "INPROCSERVE_POLL_INTERVAL_S": None,
    "INPROCSERVE_FOLLOW_SYMLINKS": False,  # accept symlinked model/version folders and files (docs/repository.md)
    "INPROCSERVE_EAGER": False,  # create the server (load models) at init_app instead of first use
    "INPROCSERVE_CONTEXT": None,  # callable() -> dict for rollout decisions; default: default_context
    "INPROCSERVE_USER_HEADER": "X-User-Id",
    "INPROCSERVE_ENDPOINTS": True,  # health, ready and models endpoints
    "INPROCSERVE_URL_PREFIX": "/-/inprocserve",
    "INPROCSERVE_ADMIN_TOKEN": None,  # set it to enable the reload and switch endpoints
    "INPROCSERVE_ERROR_HANDLERS": True,
    "INPROCSERVE_ERROR_STATUS": {},  # exception class -> HTTP status, over the defaults
    "INPROCSERVE_RETRY_AFTER_S": 1,
    "INPROCSERVE_DEADLINE_HEADER": "X-Request-Timeout-Ms",  # remaining budget sent by the caller or proxy
    "INPROCSERVE_TIMEOUT_S": None,  # default budget of a view
}

ERROR_STATUS: dict[type[Exception], int] = {
    inprocserve.InvalidInputError: 400,
    inprocserve.ModelNotFoundError: 404,
    inprocserve.OverloadedError: 503,
    inprocserve.ServerClosedError: 503,
    inprocserve.DeadlineExceededError: 504,
}


class _State:
    """Per-app state in ``app.extensions["inprocserve"]``; the server is built once per process."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = {key: config[key] for key in DEFAULTS}
        self._server: inprocserve.Server | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def server(self) -> inprocserve.Server:
        if self._server is None or self._pid != os.getpid():
            with self._lock:
                if self._server is None or self._pid != os.getpid():
                    self._server = self._build()
                    self._pid = os.getpid()
        return self._server

    @property
    def started(self) -> bool:
        return self._server is not None and self._pid == os.getpid()

    def _build(self) -> inprocserve.Server:
        config = self.config
        return inprocserve.Server(
            config["INPROCSERVE_REPOSITORY"],
            config=config["INPROCSERVE_MODEL_CONFIG"],
            models=config["INPROCSERVE_MODELS"],
            flags=config["INPROCSERVE_FLAGS"],
            flag_timeout_s=config["INPROCSERVE_FLAG_TIMEOUT_S"],
            poll_interval_s=config["INPROCSERVE_POLL_INTERVAL_S"],
            follow_symlinks=config["INPROCSERVE_FOLLOW_SYMLINKS"],
        )

    def close(self) -> None:
        with self._lock:
            if self._server is not None and self._pid == os.getpid():
                self._server.close()
            self._server = None


class Inprocserve:
    """The Flask extension: ``Inprocserve(app)``, or ``ext = Inprocserve()`` then ``ext.init_app(app)``.

    Reads ``INPROCSERVE_*`` keys from ``app.config`` once, at ``init_app`` (see ``DEFAULTS``), and keeps
    its state in ``app.extensions["inprocserve"]``; nothing is stored on the extension object, so one
    instance serves any number of apps.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if _EXTENSION in app.extensions:
            raise RuntimeError("inprocserve is already registered on this app; call init_app once")
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        state = _State(app.config)
        app.extensions[_EXTENSION] = state
        if app.config["INPROCSERVE_ERROR_HANDLERS"]:
            statuses = {**ERROR_STATUS, **app.config["INPROCSERVE_ERROR_STATUS"]}
            retry_after = app.config["INPROCSERVE_RETRY_AFTER_S"]
            for error_type, status in statuses.items():
                app.register_error_handler(error_type, _error_handler(status, retry_after))
        if app.config["INPROCSERVE_ENDPOINTS"]:
            app.register_blueprint(_blueprint(app.config), url_prefix=app.config["INPROCSERVE_URL_PREFIX"])
        if app.config["INPROCSERVE_EAGER"]:
            state.server  # noqa: B018 - builds it now, so a broken repository fails the start-up

    @staticmethod
    def close(app: Flask) -> None:
        """Close the app's server in this process (for shutdown hooks and tests)."""
        state = app.extensions.get(_EXTENSION)
        if state is not None:
            state.close()


def _state() -> _State:
    try:
        return current_app.extensions[_EXTENSION]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError("inprocserve is not registered on this app: call Inprocserve(app)") from None


server: inprocserve.Server = LocalProxy(lambda: _state().server)  # type: ignore[assignment]
"""The current app's :class:`inprocserve.Server` (built on first use in this process)."""


def default_context() -> dict[str, Any]:
    """The rollout context of the current request: the logged-in user (flask-login) if any, else the
    ``INPROCSERVE_USER_HEADER`` header, so canary and A/B assignments are sticky per user."""
    context: dict[str, Any] = {}
    user_id = None
    if hasattr(current_app, "login_manager"):  # flask-login is set up on this app
        from flask_login import current_user

        if current_user.is_authenticated:
            user_id = current_user.get_id()
    if user_id is None:
        header = _state().config["INPROCSERVE_USER_HEADER"]
        user_id = inprocserve.parse_user_id(request.headers.get(header), header=header)
    if user_id is not None:
        context["user_id"] = str(user_id)
    return context


def timeout(seconds: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a view a time budget: predictions made in it get the remaining time as their deadline."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            g._inprocserve_view_deadline = time.monotonic() + seconds
            return view(*args, **kwargs)

        return wrapped

    return decorate


def _remaining_budget() -> float | None:
    """The tightest of the view's budget, the caller's deadline header and the configured default."""
    config = _state().config
    budgets = []
    view_deadline = g.get("_inprocserve_view_deadline")
    if view_deadline is not None:
        budgets.append(view_deadline - time.monotonic())
    header = config["INPROCSERVE_DEADLINE_HEADER"]
    # a malformed value raises InvalidInputError (a 400 naming the header), never a 500
    milliseconds = inprocserve.parse_timeout_ms(request.headers.get(header), header=header)
    if milliseconds is not None:
        started = g.get("_inprocserve_request_started", time.monotonic())
        budgets.append(milliseconds / 1000 - (time.monotonic() - started))
    if config["INPROCSERVE_TIMEOUT_S"] is not None:
        budgets.append(config["INPROCSERVE_TIMEOUT_S"])
    return min(budgets) if budgets else None


def predict(model: str, inputs: Any, **kwargs: Any) -> inprocserve.Prediction:
    """``server.predict`` with the request's context (user) and remaining time budget filled in.

    Raises:
        inprocserve.DeadlineExceededError: the request's budget is already spent (then nothing runs).
        Anything ``Server.predict`` raises; with the default error handlers they become HTTP responses.
    """
    state = _state()
    if "context" not in kwargs:
        make_context = state.config["INPROCSERVE_CONTEXT"] or default_context
        kwargs["context"] = make_context()
    if "timeout_s" not in kwargs:
        budget = _remaining_budget()
        if budget is not None and budget <= 0:
            raise inprocserve.DeadlineExceededError(
                f"model {model!r}: the request's time budget was spent before predict", model=model
            )
        kwargs["timeout_s"] = budget
    return state.server.predict(model, inputs, **kwargs)


def _error_handler(status: int, retry_after: float) -> Callable[[Exception], Any]:
    def handle(error: Exception) -> Any:
        code = {400: "invalid_input", 404: "model_not_found", 503: "unavailable", 504: "deadline_exceeded"}
        response = jsonify({"error": code.get(status, type(error).__name__), "message": str(error)})
        response.status_code = status
        if status == 503:
            response.headers["Retry-After"] = str(int(max(1, retry_after)))
        return response

    return handle


def _blueprint(config: Mapping[str, Any]) -> Blueprint:
    blueprint = Blueprint("inprocserve", __name__)
    token = config["INPROCSERVE_ADMIN_TOKEN"]

    @blueprint.before_app_request
    def note_start() -> None:
        g._inprocserve_request_started = time.monotonic()

    @blueprint.get("/health")
    def health() -> Any:
        return {"status": "ok"}  # liveness: the process answers; models are /ready's business

    @blueprint.get("/ready")
    def ready() -> Any:
        status = _state().server.status()  # builds the server (loads the models) on the first probe
        not_ready = {name: m for name, m in status["models"].items() if not m["ready"]}
        if status["closed"] or not_ready or not status["models"]:
            reasons = {name: _first_error(m) for name, m in not_ready.items()}
            return jsonify({"ready": False, "models": reasons, "closed": status["closed"]}), 503
        return {"ready": True, "models": sorted(status["models"])}

    @blueprint.get("/models")
    def models() -> Any:
        return jsonify(_state().server.status())

    if token:

        def authorized() -> bool:
            supplied = request.headers.get("Authorization", "")
            return hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode())

        @blueprint.post("/reload")
        def reload() -> Any:
            if not authorized():
                return jsonify({"error": "unauthorized"}), 401
            return {"problems": _state().server.refresh()}

        @blueprint.post("/models/<name>/switch")
        def switch(name: str) -> Any:
            if not authorized():
                return jsonify({"error": "unauthorized"}), 401
            body = request.get_json(silent=True)
            version = body.get("version") if isinstance(body, dict) else None
            # bool is an int to Python, and a huge int is no version: both are the client's mistake
            if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31:
                message = 'send a JSON object {"version": <positive int>}'
                return jsonify({"error": "invalid_input", "message": message}), 400
            _state().server.switch(name, version)
            return {"model": name, "stable": version}

    return blueprint


def _first_error(model_status: Mapping[str, Any]) -> str | None:
    if model_status.get("config_error"):
        return str(model_status["config_error"])
    for version in model_status.get("versions", {}).values():
        if version.get("error"):
            return str(version["error"])
    return "no servable version"
