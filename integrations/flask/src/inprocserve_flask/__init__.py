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
``--preload``. With ``INPROCSERVE_EAGER = True`` the process that runs ``init_app`` only checks the
repository (no onnxruntime: it may be a pre-forking master), and each worker builds and warms its server
right after the fork, before it is ready (see docs/flask.md and ``inprocserve.gunicorn``).
"""

from __future__ import annotations

import logging
import numbers
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.local import LocalProxy

import inprocserve
from inprocserve import web

from ._registration import register_once
from .status_page import add_status_page

logger = logging.getLogger(__name__)

__all__ = ["Inprocserve", "OutsideRequestError", "apredict", "default_context", "predict", "server", "timeout"]

_EXTENSION = "inprocserve"

DEFAULTS: dict[str, Any] = {
    "INPROCSERVE_REPOSITORY": None,
    "INPROCSERVE_MODEL_CONFIG": None,  # inprocserve.ModelConfig: defaults for every model
    "INPROCSERVE_MODELS": {},  # name -> inprocserve.ModelConfig
    "INPROCSERVE_FLAGS": None,  # an inprocserve.FlagProvider
    "INPROCSERVE_FLAG_TIMEOUT_S": 0.05,
    "INPROCSERVE_POLL_INTERVAL_S": None,
    "INPROCSERVE_CONTROL_INTERVAL_S": 0.5,  # how often each worker re-reads the fleet's control file
    "INPROCSERVE_FOLLOW_SYMLINKS": False,  # accept symlinked model/version folders and files (docs/repository.md)
    "INPROCSERVE_EAGER": False,  # check the repository at init_app, build and warm in each worker after fork
    "INPROCSERVE_CONTEXT": None,  # callable() -> dict for rollout decisions; default: default_context
    "INPROCSERVE_USER_HEADER": "X-User-Id",
    "INPROCSERVE_ENDPOINTS": True,  # health, ready and models endpoints
    "INPROCSERVE_URL_PREFIX": "/-/inprocserve",
    "INPROCSERVE_ADMIN_TOKEN": None,  # set it to enable the admin endpoints (and paths in /models)
    "INPROCSERVE_STATUS_PAGE": False,  # serve the HTML status page at {prefix}/status (needs a token)
    "INPROCSERVE_STATUS_PAGE_TOKEN": None,  # its token (default: INPROCSERVE_ADMIN_TOKEN)
    "INPROCSERVE_ERROR_HANDLERS": True,
    "INPROCSERVE_ERROR_STATUS": {},  # exception class -> HTTP status, over the defaults
    "INPROCSERVE_RETRY_AFTER_S": 1,
    "INPROCSERVE_DEADLINE_HEADER": "X-Request-Timeout-Ms",  # remaining budget sent by the caller or proxy
    "INPROCSERVE_TIMEOUT_S": None,  # default budget of a view
    "INPROCSERVE_V2_PROTOCOL": False,  # serve the Open Inference Protocol at /v2 (docs/protocol.md)
    "INPROCSERVE_V2_LIMITS": None,  # an inprocserve.v2.Limits: caps on protocol requests
    # the server's shadow arguments and defaults (docs/rollouts.md, "Shadow traffic")
    "INPROCSERVE_SHADOW_BUDGET": web.SHADOW_SETTINGS["shadow_budget"],  # share of wall-clock time, in (0, 1]
    "INPROCSERVE_SHADOW_QUEUE": web.SHADOW_SETTINGS["shadow_queue"],  # copies waiting for the shadow thread
    "INPROCSERVE_SHADOW_QUEUE_BYTES": web.SHADOW_SETTINGS["shadow_queue_bytes"],  # bytes they may hold
    "INPROCSERVE_ON_SHADOW": web.SHADOW_SETTINGS["on_shadow"],  # callable(ShadowComparison), on the shadow thread
}

# (in the request's WSGI environ, read with the headers: when the view's budget ends, when the request began)
_VIEW_DEADLINE = "inprocserve.view_deadline"
_REQUEST_STARTED = "inprocserve.request_started"

ERROR_STATUS: dict[type[Exception], int] = dict(web.ERROR_STATUS)
"""The default HTTP status of each library error; ``INPROCSERVE_ERROR_STATUS`` is laid over it."""


class _State:
    """Per-app state in ``app.extensions["inprocserve"]``; the server is built once per process."""

    def __init__(self, app: Flask) -> None:
        config = app.config
        self.config = {key: config[key] for key in DEFAULTS}
        repository = self.config["INPROCSERVE_REPOSITORY"]
        if repository is not None:
            # A relative folder is the one init_app checked, under the working directory of then: the server is
            # built later (the first request, a worker after the fork), and built from a working directory changed
            # since (a test's chdir, a job runner's) it served nothing, every request a 500.
            self.config["INPROCSERVE_REPOSITORY"] = os.path.abspath(repository)
        self.app = app
        self.holder = web.ProcessLocalServer(self._build)
        self._closed = False  # closed by Inprocserve.close: forked children no longer warm it up, requests get 503
        self._refusal_logged = False
        # read on every predict: the settings, and the WSGI environ keys of the two headers, resolved once
        self.make_context: Callable[[], Mapping[str, Any]] | None = self.config["INPROCSERVE_CONTEXT"] or None
        self.default_timeout_s: float | None = self.config["INPROCSERVE_TIMEOUT_S"]
        self.user_header: str | None = self.config["INPROCSERVE_USER_HEADER"]
        self.user_key = web.environ_key(self.user_header)
        self.deadline_header: str | None = self.config["INPROCSERVE_DEADLINE_HEADER"]
        self.deadline_key = web.environ_key(self.deadline_header)
        # the endpoints' prefix, for the JSON 404 of a path under it that names none (None: all the app's paths)
        prefix = str(self.config["INPROCSERVE_URL_PREFIX"] or "").rstrip("/")
        self.endpoints_prefix: str | None = prefix if self.config["INPROCSERVE_ENDPOINTS"] and prefix else None

    @property
    def server(self) -> inprocserve.Server:
        """This process's server, built on first use.

        Raises:
            inprocserve.ServerClosedError: ``Inprocserve.close(app)`` closed it (a 503): a request still
                arriving in a process on its way out built a whole new server (every model, its threads).
        """
        refused = self.refused()
        if refused is not None:
            raise refused
        return self.holder.get()

    def refused(self) -> inprocserve.ServerClosedError | None:
        """The error a request gets once ``Inprocserve.close(app)`` closed the server (logged the first time),
        else ``None``."""
        if not self._closed:
            return None
        if not self._refusal_logged:  # (once: every request after the close would log it)
            self._refusal_logged = True
            logger.warning(
                "inprocserve: a request reached app %r after Inprocserve.close(app); refused with a 503, its "
                "server is not built again in this process",
                self.app.name,
            )
        return inprocserve.ServerClosedError(
            "the model server of this app was closed (Inprocserve.close(app)): the process is shutting down; "
            "retry on another worker"
        )

    @property
    def started(self) -> bool:
        """Whether this process's server is built."""
        return self.holder.started

    def warm(self) -> None:
        """Build (load and warm) this process's server now, if it is not built yet (and not closed)."""
        if not self._closed:
            self.holder.get()

    def _build(self) -> inprocserve.Server:
        config = self.config
        return inprocserve.Server(
            config["INPROCSERVE_REPOSITORY"],
            config=config["INPROCSERVE_MODEL_CONFIG"],
            models=config["INPROCSERVE_MODELS"],
            flags=config["INPROCSERVE_FLAGS"],
            flag_timeout_s=config["INPROCSERVE_FLAG_TIMEOUT_S"],
            poll_interval_s=config["INPROCSERVE_POLL_INTERVAL_S"],
            control_interval_s=config["INPROCSERVE_CONTROL_INTERVAL_S"],
            follow_symlinks=config["INPROCSERVE_FOLLOW_SYMLINKS"],
            shadow_budget=config["INPROCSERVE_SHADOW_BUDGET"],
            shadow_queue=config["INPROCSERVE_SHADOW_QUEUE"],
            shadow_queue_bytes=config["INPROCSERVE_SHADOW_QUEUE_BYTES"],
            on_shadow=config["INPROCSERVE_ON_SHADOW"],
        )

    def close(self) -> None:
        self._closed = True
        self.holder.close()


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
        _warn_of_unknown_keys(app.config)
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        for key in ("INPROCSERVE_ADMIN_TOKEN", "INPROCSERVE_STATUS_PAGE_TOKEN"):
            problem = web.token_problem(app.config[key])
            if problem is not None:
                raise inprocserve.ConfigurationError(
                    f"{key} {problem}; use a long random string such as secrets.token_urlsafe(32)"
                )
        _check_settings(app.config)
        _check_endpoint_settings(app.config)
        # Everything that can still refuse a setting runs before the app is touched: a refusal found after
        # the extension was registered (the status page with no token, the start-up check of EAGER) left it
        # half-registered, and init_app, called again once the setting was fixed, raised "already registered".
        endpoints = _blueprint(app.config) if app.config["INPROCSERVE_ENDPOINTS"] else None
        protocol = None
        if app.config["INPROCSERVE_V2_PROTOCOL"]:
            from .v2 import blueprint as v2_blueprint

            protocol = v2_blueprint(app.config)
        if app.config["INPROCSERVE_EAGER"] and app.config["INPROCSERVE_REPOSITORY"] is not None:
            # Check now, so a broken repository fails the start-up (not that of a gunicorn worker replacing
            # an earlier one: see web.check_repository_at_start); build in each worker after the fork, never
            # here: this may be a pre-forking master, which must not import onnxruntime (its forked workers would
            # hang or abort at exit).
            problems = web.check_repository_at_start(
                app.config["INPROCSERVE_REPOSITORY"],
                config=app.config["INPROCSERVE_MODEL_CONFIG"],
                models=app.config["INPROCSERVE_MODELS"],
                follow_symlinks=app.config["INPROCSERVE_FOLLOW_SYMLINKS"],  # (linked releases: checked too)
            )
            _log_problems(problems)
        _warn_of_empty_settings(app.config)
        state = _State(app)
        app.extensions[_EXTENSION] = state
        app.before_request(_note_start)  # the deadline header's budget counts from here
        if app.config["INPROCSERVE_ERROR_HANDLERS"]:
            overrides = dict(app.config["INPROCSERVE_ERROR_STATUS"])
            handler = _error_handler({**ERROR_STATUS, **overrides}, app.config["INPROCSERVE_RETRY_AFTER_S"])
            for error_type in {**ERROR_STATUS, **overrides}:
                app.register_error_handler(error_type, handler)
        if endpoints is not None or protocol is not None:
            app.before_request(_routing_error)  # (routing fails before any blueprint's own hook or handler)
        if endpoints is not None:
            app.register_blueprint(endpoints, url_prefix=app.config["INPROCSERVE_URL_PREFIX"])
        if protocol is not None:
            app.register_blueprint(protocol)
        if app.config["INPROCSERVE_EAGER"]:
            inprocserve.build_after_fork(state.warm)

    @staticmethod
    def warm(app: Flask) -> None:
        """Build and warm the app's server in this process now (for a process that does not fork).

        Under ``flask run`` with its reloader (``--debug``, ``--reload``) the app is loaded by two processes:
        the one that watches the files, which never serves, and the child it starts (again after each code
        change), which serves. Only the child builds; in the watcher this does nothing.
        """
        if _is_reloader_watcher():
            # (it loaded every model and held them, and the server's threads, for as long as the development
            # server ran: twice the memory of the models, for a process that answers no request)
            logger.info("inprocserve: not built in the reloader's file watcher; the process that serves builds it")
            return
        app.extensions[_EXTENSION].server  # noqa: B018 - the property builds it

    @staticmethod
    def close(app: Flask) -> None:
        """Close the app's server in this process, for good (for shutdown hooks and tests): a later request is
        answered 503 (``inprocserve.ServerClosedError``), and no new server is built. Idempotent."""
        state = app.extensions.get(_EXTENSION)
        if state is not None:
            state.close()


def _looked_for(repository: object) -> str:
    """Where a relative repository was looked for, for its refusal: the working directory, which differs between
    ``flask run`` in the project's folder and a server started elsewhere (the message named the relative path
    alone); and, for ``~/...``, that ``~`` is not expanded (it is a folder named ``~`` there)."""
    if not isinstance(repository, str | os.PathLike):
        return ""
    text = os.fspath(repository)
    if os.path.isabs(text):
        return ""
    where = os.path.abspath(text)
    if isinstance(text, str) and text.startswith("~"):
        return f" (~ is not expanded: it was looked for at {where}; write os.path.expanduser({text!r}))"
    return f" (a relative path is read from the working directory at init_app: it was looked for at {where})"


def _is_reloader_watcher() -> bool:
    """Whether this process is the file watcher of ``flask run``'s reloader: it loads the app (as ``flask
    run`` does before it starts the server), then only starts and restarts a child that loads it again and
    serves. ``app.run(debug=True)`` from a script cannot be told apart when the app is loaded (the script
    loads it before it calls ``run``): see docs/flask.md."""
    from werkzeug.serving import is_running_from_reloader

    if is_running_from_reloader():  # the child that serves
        return False
    import click
    from flask.cli import run_command
    from flask.helpers import get_debug_flag

    context = click.get_current_context(silent=True)
    if context is None or context.command is not run_command:
        return False
    reload = context.params.get("reload")
    return bool(get_debug_flag() if reload is None else reload)  # (flask run's own default: on with --debug)


def _check_settings(config: Mapping[str, Any]) -> None:
    """Refuse shadow settings and durations of the wrong type or range at ``init_app``. ``Server`` checks
    most of them too, but it is built lazily in each worker: a bad value would fail the first request of
    every worker instead of the start-up (and a string or NaN in ``INPROCSERVE_TIMEOUT_S``, which only the
    views read, every request).

    Raises:
        inprocserve.ConfigurationError: naming the key and what it must be; a ``ConfigurationTypeError`` (a
            ``TypeError`` too) for a setting of the wrong kind (the flags, the context, the model configs), as
            ``Server`` raises for its own arguments.
    """
    checks: list[tuple[str, Callable[[str, object], str | None]]] = [
        (name, web.shadow_setting_problem) for name in web.SHADOW_SETTINGS
    ]
    checks += [(name, web.seconds_setting_problem) for name in web.SECONDS_SETTINGS]
    for setting, problem_of in checks:
        key = f"INPROCSERVE_{setting.upper()}"
        problem = problem_of(setting, config[key])
        if problem is not None:
            raise inprocserve.ConfigurationError(f"{key} {problem}")
    problem = web.flags_setting_problem(config["INPROCSERVE_FLAGS"])  # (each request was a 500)
    if problem is not None:  # (of the wrong kind: the type Server(flags=...) raises)
        raise inprocserve.ConfigurationTypeError(f"INPROCSERVE_FLAGS {problem}")
    for key in ("INPROCSERVE_USER_HEADER", "INPROCSERVE_DEADLINE_HEADER"):
        problem = web.header_setting_problem(config[key])  # (never read: no user, so no sticky assignment)
        if problem is not None:
            raise inprocserve.ConfigurationError(
                f"{key} {problem}; name the request header as clients send it, such as 'X-User-Id', or None to "
                "read none"
            )
    problem = _url_prefix_problem(config["INPROCSERVE_URL_PREFIX"])
    if problem is not None:  # (werkzeug refused it while registering the blueprint: init_app was half done)
        raise inprocserve.ConfigurationError(f"INPROCSERVE_URL_PREFIX {problem}")
    limits = config["INPROCSERVE_V2_LIMITS"]
    if limits is not None and not isinstance(limits, inprocserve.v2.Limits):  # (a TypeError naming no setting)
        raise inprocserve.ConfigurationTypeError(
            f"INPROCSERVE_V2_LIMITS must be an inprocserve.v2.Limits or None, got {type(limits).__name__}: build it "
            "with inprocserve.v2.Limits(...)"
        )
    if config["INPROCSERVE_CONTEXT"] is not None and not callable(config["INPROCSERVE_CONTEXT"]):
        raise inprocserve.ConfigurationTypeError(  # (called by every predict: each was a 500)
            f"INPROCSERVE_CONTEXT must be a callable returning the rollout context (a dict), or None; got "
            f"{config['INPROCSERVE_CONTEXT']!r}"
        )
    repository = config["INPROCSERVE_REPOSITORY"]
    if repository is not None and not (isinstance(repository, str | os.PathLike) and Path(repository).is_dir()):
        # (a typo: each worker's server, built at its first request, served nothing, then refused every request)
        error = inprocserve.ConfigurationError(
            f"INPROCSERVE_REPOSITORY ({repository!r}) is not a folder{_looked_for(repository)}: create it, or point "
            "it at the folder that holds <model>/<version>/model.onnx"
        )
        if not isinstance(repository, str | os.PathLike):
            raise error
        # A gunicorn worker replacing an earlier one while the folder is briefly gone (a release swapped in by
        # two renames, a network mount) starts anyway: failing, it made gunicorn stop the whole server.
        web.refuse_at_start(error, repository=repository)
    for key in (
        "INPROCSERVE_FOLLOW_SYMLINKS",
        "INPROCSERVE_EAGER",
        "INPROCSERVE_ENDPOINTS",
        "INPROCSERVE_STATUS_PAGE",
        "INPROCSERVE_ERROR_HANDLERS",
        "INPROCSERVE_V2_PROTOCOL",
    ):
        problem = web.bool_setting_problem(config[key])  # ("false" read from the environment is true)
        if problem is not None:
            raise inprocserve.ConfigurationError(f"{key} {problem}")
    problem = _error_status_problem(config["INPROCSERVE_ERROR_STATUS"])
    if problem is not None:
        raise inprocserve.ConfigurationError(f"INPROCSERVE_ERROR_STATUS {problem}")
    problem = web.model_configs_problem(  # (a config.toml-shaped dict: every worker served nothing, 404s)
        config["INPROCSERVE_MODEL_CONFIG"],
        config["INPROCSERVE_MODELS"],
        names=("INPROCSERVE_MODEL_CONFIG", "INPROCSERVE_MODELS"),
    )
    if problem is not None:  # (of the wrong kind: the type Server(config=..., models=...) raises)
        raise inprocserve.ConfigurationTypeError(problem)


def _url_prefix_problem(prefix: object) -> str | None:
    """What is wrong with ``INPROCSERVE_URL_PREFIX``: ``None``, ``""`` or a path that starts with ``/`` and holds
    no empty segment (``/ops//x``) passes. Refused by werkzeug only once the blueprint was registered, after the
    extension was, so ``init_app``, called again once the prefix was fixed, raised "already registered on this app"
    (a number: an ``AttributeError``)."""
    if prefix is None or prefix == "":
        return None
    if not isinstance(prefix, str):
        return f"must be a URL path such as '/-/inprocserve', got {web.short_repr(prefix)}"
    if not prefix.startswith("/"):
        return f"must start with '/', such as {'/' + prefix!r}, got {web.short_repr(prefix)}"
    if "//" in prefix.rstrip("/"):  # (the blueprint drops trailing slashes: '/ops/' is '/ops')
        # url_for gave /ops/x/health (werkzeug merges slashes when it builds) while the admin routes, which merge
        # none (see _blueprint), were served at /ops//x/... only: a link the app built was a 308 away from them
        fixed = "/" + "/".join(part for part in prefix.split("/") if part)
        return f"must not hold an empty segment ('//'), got {web.short_repr(prefix)}: write {fixed!r}"
    return None


def _check_endpoint_settings(config: Mapping[str, Any]) -> None:
    """Refuse settings that only the endpoints read when ``INPROCSERVE_ENDPOINTS`` is off: a token set there
    was ignored without a word (the admin endpoints a 404), and whoever set it took them for on, and protected.

    The status page's own token with the page off is refused the same way: the page was a 404, the token
    ignored without a word.

    Raises:
        inprocserve.ConfigurationError: naming both settings.
    """
    if config["INPROCSERVE_ENDPOINTS"]:
        if config["INPROCSERVE_STATUS_PAGE_TOKEN"] not in (None, "") and not config["INPROCSERVE_STATUS_PAGE"]:
            raise inprocserve.ConfigurationError(
                "INPROCSERVE_STATUS_PAGE_TOKEN is set but INPROCSERVE_STATUS_PAGE is off: the status page is not "
                "served, so the token protects nothing; set INPROCSERVE_STATUS_PAGE = True to serve the page, or "
                "leave INPROCSERVE_STATUS_PAGE_TOKEN unset"
            )
        return
    if config["INPROCSERVE_STATUS_PAGE"]:
        raise inprocserve.ConfigurationError("INPROCSERVE_STATUS_PAGE needs INPROCSERVE_ENDPOINTS = True")
    for key in ("INPROCSERVE_ADMIN_TOKEN", "INPROCSERVE_STATUS_PAGE_TOKEN"):
        # ('' is no token: os.environ.get(name, '') for a variable that is not set, warned of as off)
        if config[key] not in (None, ""):
            raise inprocserve.ConfigurationError(
                f"{key} is set but INPROCSERVE_ENDPOINTS = False: no endpoint is served, so the token turns on and "
                f"protects nothing; set INPROCSERVE_ENDPOINTS = True to serve the admin endpoints and the status "
                f"page, or leave {key} unset"
            )


def _error_status_problem(statuses: object) -> str | None:
    """What is wrong with ``INPROCSERVE_ERROR_STATUS``: it must map exception classes to error statuses (ints in
    400..599). A status given as text (``"503"``) was answered, but lost the ``Retry-After`` of a 503; one out of
    range (``4220``) made a status line no client reads; a class given by its name failed in Flask's
    ``issubclass``, naming no setting."""
    if not isinstance(statuses, Mapping):
        return f"must be a dict of exception class -> HTTP status, got {web.short_repr(statuses)}"
    for error_type, status in statuses.items():
        if not (isinstance(error_type, type) and issubclass(error_type, Exception)):
            return (
                f"maps {web.short_repr(error_type)}, which is not an exception class: use the class itself, such as "
                "inprocserve.InvalidInputError"
            )
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            return (
                f"maps {error_type.__name__} to {web.short_repr(status)}: a status must be an int from 400 to 599 "
                "(say 422)"
            )
    return None


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
    return _default_context(_state(), request.environ)


def _default_context(state: _State, environ: Mapping[str, Any]) -> dict[str, Any]:
    # (the header straight from the WSGI environ: werkzeug's request.headers builds a view per request)
    user_id = None
    if hasattr(state.app, "login_manager"):  # flask-login is set up on this app
        from flask_login import current_user

        if current_user.is_authenticated:
            user_id = current_user.get_id()
    if user_id is None and state.user_key is not None:
        user_id = inprocserve.parse_user_id(environ.get(state.user_key), header=state.user_header or "")
    return {} if user_id is None else {"user_id": str(user_id)}


def _note_start() -> None:
    request.environ[_REQUEST_STARTED] = time.monotonic()


def timeout(seconds: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a view a time budget: predictions made in it get the remaining time as their deadline.

    Works on ``async def`` views too (Flask runs them; the wrapper stays a coroutine function).

    Raises:
        TypeError: ``seconds`` is not a number, or the decorator was used bare (``@timeout``).
        ValueError: ``seconds`` is NaN, zero or negative (``math.inf``: no budget).
    """
    # Checked here, at import: a string, NaN or a bare @timeout failed every request of the view with a 500.
    given: object = seconds  # (typed as what it must be; checked as whatever it is)
    if callable(given):
        raise TypeError("inprocserve_flask.timeout takes the budget in seconds: write @timeout(0.2), not @timeout")
    if isinstance(given, bool) or not isinstance(given, numbers.Real):
        raise TypeError(f"inprocserve_flask.timeout(seconds) needs a number of seconds, got {web.short_repr(given)}")
    if not float(given) > 0:
        raise ValueError(f"inprocserve_flask.timeout(seconds) needs seconds > 0 (math.inf for none), got {seconds!r}")

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        import functools
        import inspect

        if inspect.iscoroutinefunction(view):  # (wrapped in a plain function, Flask took it for a sync view: a 500)

            @functools.wraps(view)
            async def awrapped(*args: Any, **kwargs: Any) -> Any:
                request.environ[_VIEW_DEADLINE] = time.monotonic() + seconds
                return await view(*args, **kwargs)

            return awrapped

        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            request.environ[_VIEW_DEADLINE] = time.monotonic() + seconds
            return view(*args, **kwargs)

        return wrapped

    return decorate


def _remaining_budget() -> float | None:
    """The tightest of the view's budget, the caller's deadline header and the configured default."""
    return _budget(_state(), request.environ)


def _budget(state: _State, environ: Mapping[str, Any]) -> float | None:
    budget = state.default_timeout_s
    milliseconds = None
    if state.deadline_key is not None:
        # a malformed value raises InvalidInputError (a 400 naming the header), never a 500
        value = environ.get(state.deadline_key)
        milliseconds = inprocserve.parse_timeout_ms(value, header=state.deadline_header or "")
    view_deadline = environ.get(_VIEW_DEADLINE)
    if milliseconds is None and view_deadline is None:
        return budget
    now = time.monotonic()
    if view_deadline is not None:
        budget = view_deadline - now if budget is None else min(budget, view_deadline - now)
    if milliseconds is not None:
        left = milliseconds / 1000 - (now - environ.get(_REQUEST_STARTED, now))
        budget = left if budget is None else min(budget, left)
    return budget


class OutsideRequestError(inprocserve.InprocserveError, RuntimeError):
    """:func:`predict` was called where there is no request to read its user and deadline from (a CLI command,
    a job, a thread of your own): call ``server.predict`` there. A ``RuntimeError`` too, as Flask's own
    "Working outside of request context" that it replaces."""


def predict(model: str, inputs: Any, **kwargs: Any) -> inprocserve.Prediction:
    """``server.predict`` with the request's context (user) and remaining time budget filled in.

    Raises:
        OutsideRequestError: there is no request, and ``context`` or ``timeout_s`` was left to be read from it.
        inprocserve.DeadlineExceededError: the request's budget is already spent (then nothing runs).
        Anything ``Server.predict`` raises; with the default error handlers they become HTTP responses.
    """
    server = _from_the_request(model, kwargs, called="predict")
    return server.predict(model, inputs, **kwargs)


async def apredict(model: str, inputs: Any, **kwargs: Any) -> inprocserve.Prediction:
    """``server.apredict`` with the request's context (user) and remaining time budget filled in, for
    ``async def`` views (the budget of ``@timeout`` on the view included).

    Raises:
        The same as :func:`predict`; ``Server.apredict``'s own errors.
    """
    server = _from_the_request(model, kwargs, called="apredict")
    return await server.apredict(model, inputs, **kwargs)


def _from_the_request(model: str, kwargs: dict[str, Any], *, called: str) -> inprocserve.Server:
    """The app's server, with ``kwargs``' ``context`` and ``timeout_s`` filled in from the request where not given
    (``called``: ``"predict"`` or ``"apredict"``, the plug-in's function and the server's method to name)."""
    state = _state()
    server = state.server
    try:  # (free where it does not raise: outside a request, Flask's RuntimeError is replaced below)
        environ = None  # the request's, read only for what is not given: an app context may be enough
        if "context" not in kwargs:
            make_context = state.make_context
            if make_context is not None:
                kwargs["context"] = make_context()
            else:
                environ = request.environ
                kwargs["context"] = _default_context(state, environ)
        if "timeout_s" not in kwargs:
            budget = _budget(state, request.environ if environ is None else environ)
            if budget is not None and budget <= 0:
                raise web.budget_spent(server, model, kwargs.get("version"))
            kwargs["timeout_s"] = budget
    except RuntimeError as exc:
        if has_request_context():
            raise
        raise _outside_a_request(model, kwargs, called=called) from exc
    return server


def _outside_a_request(model: object, kwargs: Mapping[str, Any], *, called: str) -> OutsideRequestError:
    """What to call instead of :func:`predict` (or :func:`apredict`) where there is no request, naming what it wanted
    to read."""
    wanted = " and ".join(f"{name}=" for name in ("context", "timeout_s") if name not in kwargs)
    return OutsideRequestError(
        f"inprocserve_flask.{called} reads the request's user and deadline, and there is no request context "
        f"here; outside a view (a CLI command, a job, a thread), call inprocserve_flask.server.{called}("
        f"{web.short_repr(model)}, inputs) in the app's context (with app.app_context():), or pass {wanted} to "
        f"{called}",
        model=model if isinstance(model, str) else None,
    )


def _error_handler(statuses: Mapping[type[Exception], int], retry_after_s: float) -> Callable[[Exception], Any]:
    def handle(error: Exception) -> Any:
        answer = web.error_answer(error, overrides=statuses, retry_after_s=retry_after_s)
        if answer is None:  # not registered for this class: Flask only calls it for the ones above
            raise error
        response = jsonify(answer.body)
        response.status_code = answer.status
        response.headers.update(_untyped(answer.headers))
        return response

    return handle


def _untyped(headers: Mapping[str, str]) -> dict[str, str]:
    """An answer's ``headers`` without its ``Content-Type``: ``jsonify`` types the JSON with the app's own
    ``app.json.mimetype`` (``application/json; charset=utf-8``, say), as every other JSON answer of the plug-in
    (``health``, ``ready``, ``models``); the answer's plain ``application/json`` replaced it on the errors and the
    admin answers alone."""
    return {name: value for name, value in headers.items() if name.lower() != "content-type"}


def _blueprint(config: Mapping[str, Any]) -> Blueprint:
    blueprint = Blueprint("inprocserve", __name__)
    prefix = config["INPROCSERVE_URL_PREFIX"]

    # (before the routes: raised before any of them is added) Nested ("ops.inprocserve") or registered again, a
    # copy that the JSON 404 and 405 of _routing_error do not know (by blueprint name); on another app, an HTML
    # 500 for /ready and a 503 saying the model server could not start, for /models.
    register_once(
        blueprint,
        config,
        lambda where: (
            f"the inprocserve endpoints are registered by Inprocserve.init_app, once, at INPROCSERVE_URL_PREFIX "
            f"({prefix!r}); they cannot be registered again or nested in another blueprint (here {where}): "
            "to move them, set INPROCSERVE_URL_PREFIX (such as '/ops/-/inprocserve'); for another app, call "
            "Inprocserve(app) on it"
        ),
    )

    token = config["INPROCSERVE_ADMIN_TOKEN"]
    eager = config["INPROCSERVE_EAGER"]
    retry_after_s = config["INPROCSERVE_RETRY_AFTER_S"]
    not_ready_headers = {"Retry-After": web.retry_after(retry_after_s)}

    def authorized() -> bool:
        return web.check_token(request.headers.get("Authorization"), token)

    @blueprint.after_request
    def answer_headers(response: Response) -> Response:
        # every answer of these routes, their errors' too (a library error's, through the app's error handler);
        # the JSON 404 and 405 of _routing_error answer before any route, and add them themselves
        for name, value in _answer_headers(request.endpoint).items():
            response.headers.setdefault(name, value)  # (the status page's own headers stay)
        return response

    # merge_slashes=False, as on every route of the plug-in: werkzeug answered /-/inprocserve//health (and //ready,
    # //models) with an HTML 308 to the path with one slash, where every other path under the prefix with an empty
    # segment is the JSON 404 of _not_found
    @blueprint.get("/health", merge_slashes=False)
    def health() -> Any:
        return {"status": "ok"}  # liveness: the process answers; models are /ready's business

    @blueprint.get("/ready", merge_slashes=False)
    def ready() -> Any:
        state = _state()
        if eager and state.holder.building:  # warming up after the fork: not ready, and do not wait for it
            readiness = web.Readiness.warming_up()
        else:
            readiness = web.probe_readiness(lambda: state.server)  # lazy mode: builds it on the first probe
        if readiness.ready:
            return jsonify(readiness.body()), 200
        return jsonify(readiness.body()), 503, not_ready_headers

    @blueprint.get("/models", merge_slashes=False)
    def models() -> Any:
        try:
            server = web.server_or_none(lambda: _state().server, "GET /models")
        except inprocserve.ServerClosedError as exc:  # (Inprocserve.close(app): not a server that failed to start)
            return jsonify({"error": str(exc)}), 503, not_ready_headers
        if server is None:  # (its cause names files: logged, not answered)
            return jsonify({"error": web.NO_SERVER}), 503, not_ready_headers
        return jsonify(server.status(include_paths=authorized()))

    add_status_page(blueprint, config, lambda: _state().server)

    if not token:
        return blueprint

    def admin(action: str, model: str | None = None) -> Any:
        if not authorized():
            unauthorized = {"error": "unauthorized", "message": web.ADMIN_UNAUTHORIZED}
            return jsonify(unauthorized), 401, {"WWW-Authenticate": "Bearer"}
        refused = web.admin_encoding_refused(request.headers.get("Content-Encoding"))
        if refused is not None:  # (a gzip body was read as raw bytes: refused as "not JSON")
            return jsonify(refused.body), refused.status, _untyped(refused.headers)
        if web.body_end_unknown(request.environ):  # (read as empty: the action ran as if no body was sent)
            return jsonify({"error": "length_required", "message": web.LENGTH_REQUIRED}), 411
        try:
            body = _admin_body()
        except inprocserve.InvalidInputError as exc:  # (broken chunked framing, a client gone mid-upload)
            return jsonify({"error": "invalid_input", "message": str(exc)}), 400
        except RequestEntityTooLarge:  # (werkzeug's HTML page; the Django plug-in answers this code)
            return jsonify({"error": "too_large", "message": _too_large_message()}), 413
        actor = f"admin endpoint from {request.remote_addr}"
        answer = web.admin_answer(_state().server, action, model, body, actor=actor, retry_after_s=retry_after_s)
        return jsonify(answer.body), answer.status, _untyped(answer.headers)

    # merge_slashes=False: werkzeug answered a path with an empty segment (models/fraud%2F/kill, which names a model
    # "fraud/" that cannot exist, arrives as models/fraud//kill) with a 308 to the path with one slash, and a client
    # that follows redirects posted the action again there, on model "fraud": a JSON 404 now, nothing done
    @blueprint.post("/reload", merge_slashes=False)
    def reload() -> Any:
        return admin("reload")

    @blueprint.post("/models/<name>/<any(switch, rollback, canary, kill, resume):action>", merge_slashes=False)
    def model_action(name: str, action: str) -> Any:
        return admin(action, name)

    return blueprint


_METHODS_TAKEN = {"POST": "the admin endpoints take POST (with Authorization: Bearer <token>)"}
"""What the 405 of an endpoint that takes these methods says (others: "this endpoint takes GET or HEAD")."""

_PRIVATE_ENDPOINTS = frozenset({"inprocserve.models", "inprocserve.reload", "inprocserve.model_action"})
"""The endpoints whose answers no cache may store (``web.PRIVATE_ANSWER_HEADERS``): ``/models`` (file-system paths
with the admin token) and the admin actions."""


def _answer_headers(endpoint: str | None) -> Mapping[str, str]:
    """The headers of an answer of the plug-in's ``endpoint`` (the rule's name; ``None`` for a path under the
    prefix that names none): ``nosniff``, and ``no-store`` where :data:`_PRIVATE_ENDPOINTS` says so."""
    return web.PRIVATE_ANSWER_HEADERS if endpoint in _PRIVATE_ENDPOINTS else web.ANSWER_HEADERS


def _routing_error() -> Any:
    """The JSON 405 of this plug-in's endpoints (``Allow`` as werkzeug's), and the JSON 404 of a path under their
    prefix that names none of them, answered before the request is dispatched: werkzeug's HTML "Method Not
    Allowed" page was the only answer of the admin and read-only endpoints that was no JSON, and under ``/v2`` a
    method the route does not list (``PROPFIND``) got it too, where the protocol answers every wrong method with
    its own ``{"error": ...}`` 405; a slightly wrong path (``/-/inprocserve/models%0A``, a typo) got werkzeug's
    HTML 404 page. ``None`` (Flask goes on) for any other request, the app's own routes' included."""
    error = request.routing_exception  # (run before every request of the app: None for a route that matched)
    if error is None:
        return None
    if isinstance(error, NotFound):
        return _not_found()
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return None
    valid = sorted(error.valid_methods, key=lambda method: (method != "GET", method))  # (werkzeug's is a set's order)
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        return None
    try:  # (the rule the path matched with a method it takes)
        rule, args = adapter.match(method=valid[0], return_rule=True)
    except HTTPException:
        return None
    endpoint = str(rule.endpoint)
    if endpoint.startswith("inprocserve_v2."):  # the protocol's own 405 (its Allow is the path's method)
        return current_app.view_functions[endpoint](**args)
    if not endpoint.startswith("inprocserve."):
        return None
    taken = [method for method in valid if method != "OPTIONS"]
    does = _METHODS_TAKEN.get(" ".join(taken), f"this endpoint takes {' or '.join(taken)}")
    message = f"{does}; this request sent {web.short_repr(request.method)}"
    body = {"error": "method_not_allowed", "message": message}
    return jsonify(body), 405, {"Allow": ", ".join(valid), **_answer_headers(endpoint)}


def _not_found() -> Any:
    """The JSON 404 of a path under the endpoints' prefix that names no endpoint (``None`` for another path: the
    app's own 404)."""
    prefix = _state().endpoints_prefix
    path = request.path
    if prefix is None or not path.startswith(prefix) or path == prefix:
        return None
    after = path[len(prefix)]
    if after != "/" and not (after < " " or after == "\x7f"):  # (/-/inprocservex: not under the prefix)
        return None
    if any(  # a prefix the app shares (its own routes under /api beside the endpoints): its 404 is the app's
        rule.rule.startswith(f"{prefix}/") and rule.endpoint.partition(".")[0] not in ("inprocserve", "inprocserve_v2")
        for rule in current_app.url_map.iter_rules()
    ):
        return None
    message = (
        f"no inprocserve endpoint at {web.short_repr(path)}: under {prefix}/ the endpoints are health, ready, models, "
        "status (INPROCSERVE_STATUS_PAGE), reload and models/<name>/<switch|rollback|canary|kill|resume> "
        "(INPROCSERVE_ADMIN_TOKEN)"
    )
    return jsonify({"error": "not_found", "message": message}), 404, dict(_answer_headers(None))


def _too_large_message() -> str:
    """What a client is told, with a 413, of a body over the app's ``MAX_CONTENT_LENGTH``."""
    return (
        f"the request body is larger than this app accepts ({current_app.config['MAX_CONTENT_LENGTH']} bytes, "
        "its MAX_CONTENT_LENGTH): send a smaller one"
    )


def _admin_body() -> bytes:
    """The admin request's whole body (werkzeug's ``get_data``, under Flask's ``MAX_CONTENT_LENGTH``).

    Raises:
        inprocserve.InvalidInputError: it cannot be read to its end: the WSGI server's own error (gunicorn's
            ``NoMoreData`` for chunked framing cut short) was a 500 and a traceback logged, where the protocol's
            endpoints and the Django plug-in's admin views answer 400. Flask's own answers (413) pass unchanged.
            Or it ended before its ``Content-Length`` (see :func:`inprocserve.web.body_cut_short`).
    """
    from werkzeug.exceptions import HTTPException

    body = web.body_reader(lambda _size: request.get_data(), passing=(HTTPException,))(-1)
    limit = request.max_content_length
    terminated = request.environ.get("wsgi.input_terminated")  # (else no body was read: nothing to read on)
    if terminated and request.content_length is None and limit is not None and len(body) >= limit:
        # werkzeug reads a chunked body only up to MAX_CONTENT_LENGTH, and stops there without a word: the rest
        # was left unread, and the first bytes refused as "not JSON" (a 400 where a Content-Length gets the 413)
        more = web.body_reader(request.environ["wsgi.input"].read, passing=(HTTPException,))(1)
        if more:
            raise RequestEntityTooLarge()
    cut_short = web.body_cut_short(len(body), request.content_length)
    if cut_short is not None:
        raise cut_short
    return body


def _warn_of_unknown_keys(config: Mapping[str, Any]) -> None:
    """Log the ``INPROCSERVE_*`` keys of ``config`` the extension does not know, each with the key it is
    close to: a typo (``INPROCSERVE_REPOSITROY``) was taken silently, and the app served nothing. A warning,
    not an error, as for ``config.toml``: a key of a newer release must not stop an older one's start."""

    for key in sorted(k for k in config if isinstance(k, str) and k.startswith("INPROCSERVE_") and k not in DEFAULTS):
        close = web.close_match(key, DEFAULTS)
        meant = f" ({close}?)" if close else ""
        logger.warning(
            "app.config has %s%s, which this release of inprocserve-flask does not know; it is ignored "
            "(see docs/flask.md for the keys)",
            key,
            meant,
        )


_OFF_WHEN_EMPTY = {
    "INPROCSERVE_ADMIN_TOKEN": (
        "the admin endpoints are off",
        "set it to a long random string (secrets.token_urlsafe(32)) to serve them",
    ),
    "INPROCSERVE_USER_HEADER": (
        "no user id header is read, so anonymous requests are bucketed at random in rollouts (a canary, an A/B "
        "test), not sticky per user",
        "name the header as clients send it ('X-User-Id', the default)",
    ),
    "INPROCSERVE_DEADLINE_HEADER": (
        "no deadline header is read, so a caller's remaining budget is ignored",
        "name the header as callers send it ('X-Request-Timeout-Ms', the default)",
    ),
}
"""The settings whose empty string turns a feature off, with what it turns off and how to turn it on (the
Django plug-in's system check ``inprocserve.W006`` says the same)."""


def _warn_of_empty_settings(config: Mapping[str, Any]) -> None:
    """Log a warning, once per ``init_app``, for each setting of :data:`_OFF_WHEN_EMPTY` that is ``""``: it turns
    its feature off as ``None`` does, but it is also what ``os.environ.get(name, "")`` gives (and
    ``app.config.from_prefixed_env`` keeps) for a variable that is not set, so a deployment that forgot the
    variable had the feature off without a word. Still off (no token never opens the admin endpoints): only said,
    so that ``None`` says "off" on purpose, and says nothing."""
    for key, (effect, turn_on) in _OFF_WHEN_EMPTY.items():
        if isinstance(config[key], str) and not config[key]:
            logger.warning(
                "app.config[%r] is '' (an empty string): %s. An empty string is also what os.environ.get(name, '') "
                "gives when the variable is not set: %s; None says off on purpose (os.environ.get(name), with no "
                "default, gives None for a variable that is not set)",
                key,
                effect,
                turn_on,
            )


def _log_problems(problems: list[str]) -> None:
    """What the start-up check found that the workers will serve around (a version the control file or a
    rollout names that is not there, a policy selecting nothing, stray files): said once here, at start-up,
    before each worker says it again."""
    for problem in problems:  # (a link's advice is the setting that passes follow_symlinks=True to the Server)
        problem = web.replace_link_advice(problem, "set INPROCSERVE_FOLLOW_SYMLINKS = True")
        logger.warning("repository check before the workers start: %s", problem)
