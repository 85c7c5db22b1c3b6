"""System checks (``manage.py check``): a missing repository, bad config values, unknown model names."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

import inprocserve
from inprocserve import v2, web

from .conf import DEFAULTS, settings, unknown_keys

LINK_SETTING = "set INPROCSERVE['FOLLOW_SYMLINKS'] = True"
"""What a scan's problem about a symbolic link advises here, for the Server's ``follow_symlinks=True``."""


@register(Tags.compatibility)
def check_inprocserve(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    messages: list[Any] = []
    try:
        config = settings()
    except ImproperlyConfigured as exc:  # INPROCSERVE is not a dict: nothing else can be checked
        return [Error(str(exc), id="inprocserve.E012")]
    messages.extend(_value_errors(config))
    for key in unknown_keys():
        close = web.close_match(str(key), DEFAULTS)  # (a typo's own fix, before the list)
        messages.append(
            Error(
                f"INPROCSERVE has an unknown key {key!r}{f' ({close}?)' if close else ''}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))} (see docs/django.md).",
                id="inprocserve.E004",
            )
        )
    repository = config["REPOSITORY"]
    found: set[str] = set()
    if repository is None:
        if not config["MODELS"]:
            messages.append(
                Warning(
                    "INPROCSERVE['REPOSITORY'] is not set: no model will be served.",
                    hint="Set it to a folder laid out as <model>/<version>/model.onnx.",
                    id="inprocserve.W001",
                )
            )
    elif not isinstance(repository, str | os.PathLike) or not Path(repository).is_dir():
        messages.append(_not_a_directory(repository))
    else:
        # As the server scans it (a linked release, with FOLLOW_SYMLINKS, is served: it was warned of as refused);
        # a value that is no bool is E012's, and the server's refusal
        scan = web.repository_layout(repository, follow_symlinks=config["FOLLOW_SYMLINKS"] is True)
        found = set(scan.models)
        for problem in scan.problems:
            messages.append(Warning(web.replace_link_advice(problem, LINK_SETTING), id="inprocserve.W002"))
    messages.extend(model_config_errors(config))
    if config["V2_LIMITS"] is not None and not isinstance(config["V2_LIMITS"], v2.Limits):
        messages.append(
            Error(
                f"INPROCSERVE['V2_LIMITS'] must be an inprocserve.v2.Limits, got {type(config['V2_LIMITS']).__name__}.",
                hint="Build it with inprocserve.v2.Limits(max_body_bytes=..., max_elements=...).",
                id="inprocserve.E008",
            )
        )
    models = config["MODELS"] if isinstance(config["MODELS"], dict) else {}
    for name in models:
        if repository is not None and found and name not in found:
            messages.append(
                Error(
                    f"INPROCSERVE['MODELS'] configures model {name!r}, which is not in the repository.",
                    hint=f"Models found: {', '.join(sorted(found)) or 'none'}. Check the name or add the model.",
                    id="inprocserve.E002",
                )
            )
    for name in config["REQUIRED_MODELS"] if _names(config["REQUIRED_MODELS"]) else ():
        if repository is not None and found and name not in found:
            messages.append(
                Error(
                    f"INPROCSERVE['REQUIRED_MODELS'] names {name!r}, which is not in the repository.",
                    hint=f"Models found: {', '.join(sorted(found))}. Check the name or add the model.",
                    id="inprocserve.E002",
                )
            )
    for name in ("USER_HEADER", "DEADLINE_HEADER"):
        messages.extend(_header_setting_errors(name, config[name]))
    messages.extend(_empty_string_warnings(config))
    for key in ("ADMIN_TOKEN", "STATUS_PAGE_TOKEN"):
        token_problem = web.token_problem(config[key])
        if token_problem is not None:
            messages.append(
                Error(
                    f"INPROCSERVE['{key}'] {token_problem}.",
                    hint="Use a long random string, for example secrets.token_urlsafe(32).",
                    id="inprocserve.E010",
                )
            )
    if config["STATUS_PAGE"] and not (isinstance(config["STATUS_PAGE_TOKEN"], str) and config["STATUS_PAGE_TOKEN"]):
        messages.append(
            Error(
                "INPROCSERVE['STATUS_PAGE'] is on but INPROCSERVE['STATUS_PAGE_TOKEN'] is not set: "
                "the page answers 404.",
                hint="Set STATUS_PAGE_TOKEN to a long random string (for example secrets.token_urlsafe(32)).",
                id="inprocserve.E007",
            )
        )
    if config["STATUS_PAGE_TOKEN"] not in (None, "") and not config["STATUS_PAGE"]:
        # (the page answered 404 and the token was ignored: whoever set it took the page for served, and protected)
        messages.append(
            Warning(
                "INPROCSERVE['STATUS_PAGE_TOKEN'] is set but INPROCSERVE['STATUS_PAGE'] is off: the status page "
                "answers 404, so the token protects nothing.",
                hint="Set INPROCSERVE['STATUS_PAGE'] = True to serve the page, or leave STATUS_PAGE_TOKEN unset.",
                id="inprocserve.W005",
            )
        )
    messages.extend(_shadow_errors(config))
    messages.extend(_middleware_warnings())
    return messages


@register(Tags.urls)
def check_endpoints_routed(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """inprocserve.W004: ``ADMIN_TOKEN``, ``STATUS_PAGE`` or ``STATUS_PAGE_TOKEN`` is set, but no URLconf
    includes ``inprocserve_django.urls``, which serves what they turn on (the Flask plug-in's
    ``INPROCSERVE_ENDPOINTS = False`` with a token, which it refuses): the token was ignored without a word,
    and whoever set it took the admin endpoints (or the page) for on, and protected. A warning: a project may
    route them in a URLconf of its own per request. (Not run where the middleware refuses invalid settings:
    it would import the URLconf at start-up.)"""
    try:
        config = settings()
    except ImproperlyConfigured:  # (E012 says so)
        return []
    named = [key for key in ("ADMIN_TOKEN", "STATUS_PAGE", "STATUS_PAGE_TOKEN") if config[key] not in (None, False, "")]
    if not named or _urls_included():
        return []
    return [
        Warning(
            f"INPROCSERVE['{named[0]}'] is set, but no URLconf includes inprocserve_django.urls: the admin "
            "endpoints and the status page are not served, so the token turns on and protects nothing.",
            hint='Add path("-/inprocserve/", include("inprocserve_django.urls")) to your urlpatterns '
            f"(docs/django.md), or leave {' and '.join(named)} unset.",
            id="inprocserve.W004",
        )
    ]


@register(Tags.urls)
def check_probes_not_redirected(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """inprocserve.W007: ``SECURE_SSL_REDIRECT`` answers a probe (``health``, ``ready``) with a 301 to ``https://``,
    ``SECURE_REDIRECT_EXEMPT`` leaving it out (each one left out is named). Answered a redirect, ``ready`` says
    nothing of the models: a probe that follows it to the pod's own port, which speaks no TLS, fails (no worker is
    ever ready), and Kubernetes counts one to another host (``SECURE_SSL_HOST``) as a success (ready, whatever the
    models)."""
    names = getattr(django_settings, "MIDDLEWARE", None) or []
    if not getattr(django_settings, "SECURE_SSL_REDIRECT", False) or not any(map(_redirects_to_https, names)):
        return []
    from django.urls import NoReverseMatch, reverse

    exempt = [re.compile(pattern) for pattern in getattr(django_settings, "SECURE_REDIRECT_EXEMPT", None) or []]
    redirected = []
    for probe in ("health", "ready"):
        try:
            # (SecurityMiddleware matches request.path so: without its leading "/", and decoded, where reverse()
            # gives a prefix such as "modèles/" percent-encoded, which no exemption of it matches)
            path = unquote(reverse(f"inprocserve:{probe}")).lstrip("/")
        except NoReverseMatch:  # (not routed: W004 says so where it matters)
            continue
        except Exception:  # (a URLconf that does not import: Django's own checks report it)
            return []
        if not any(pattern.search(path) for pattern in exempt):
            redirected.append(path)
    if not redirected:
        return []
    prefix = redirected[0].rpartition("/")[0]  # (the URLconf's prefix: empty where it is included at the root)
    start = _REGEX_SPECIALS.sub(r"\\\g<0>", f"{prefix}/") if prefix else ""  # ("c++/" as c\+\+/, which matches it)
    return [
        Warning(
            f"SECURE_SSL_REDIRECT answers the probes ({', '.join('/' + path for path in redirected)}) with a 301 to "
            "https://: a probe that follows it to the pod's port, which speaks no TLS, fails (no worker is ever "
            "ready), and Kubernetes counts a redirect to another host (SECURE_SSL_HOST) as a success, ready "
            "whatever the models.",
            hint=f'Exempt the probes, and only them: SECURE_REDIRECT_EXEMPT = [r"^{start}(health|ready)$"] '
            "(docs/django.md).",
            id="inprocserve.W007",
        )
    ]


_REGEX_SPECIALS = re.compile(r"[.^$*+?{}()\[\]\\|]")
"""(The characters of a URL prefix that a regular expression reads as syntax: escaped in the hint's exemption.)"""

_SECURITY_MIDDLEWARE = "django.middleware.security.SecurityMiddleware"


def _redirects_to_https(name: object) -> bool:
    """Whether the middleware ``name`` is Django's ``SecurityMiddleware`` (or a subclass), which answers
    ``SECURE_SSL_REDIRECT``."""
    from django.middleware.security import SecurityMiddleware

    return name == _SECURITY_MIDDLEWARE or _names_subclass(name, SecurityMiddleware)


def _names_subclass(name: object, base: type) -> bool:
    """Whether the dotted path ``name`` (a ``MIDDLEWARE`` entry) imports as ``base`` or a subclass of it (one that
    does not import is left to Django, which reports it)."""
    if not isinstance(name, str) or "." not in name:
        return False
    try:
        found = import_string(name)
    except Exception:
        return False
    return isinstance(found, type) and issubclass(found, base)


def _urls_included() -> bool:
    """Whether a URLconf includes ``inprocserve_django.urls`` (under any prefix or instance namespace: its
    application namespace is reversed). A URLconf that does not import counts as one: Django's own checks
    report it."""
    from django.urls import NoReverseMatch, reverse

    try:
        reverse("inprocserve:health")
    except NoReverseMatch:
        return False
    except Exception:
        return True
    return True


_MIDDLEWARE = "inprocserve_django.middleware.InprocserveMiddleware"


def _middleware_warnings() -> list[Warning]:
    """inprocserve.W003: no ``InprocserveMiddleware`` (nor a subclass) in ``MIDDLEWARE``. It is one line of
    django.md's settings, easy to miss, and without it the library's errors reach Django uncaught: a client's
    invalid input, an unknown model or a full queue answered a 500 page, not a JSON 400, 404 or 503."""
    names = getattr(django_settings, "MIDDLEWARE", None) or []
    if _MIDDLEWARE in names or any(_is_ours(name) for name in names):
        return []
    return [
        Warning(
            "InprocserveMiddleware is not in MIDDLEWARE: the library's errors reach Django uncaught, so a "
            "client's invalid input, an unknown model or an overloaded server is a 500, not a JSON 400, 404 "
            "or 503.",
            hint=f'Add "{_MIDDLEWARE}" at the start of MIDDLEWARE (docs/django.md), or silence '
            "inprocserve.W003 if your views catch inprocserve.InprocserveError themselves.",
            id="inprocserve.W003",
        )
    ]


def _is_ours(name: object) -> bool:
    """Whether the middleware ``name`` is a subclass of ``InprocserveMiddleware`` (one that does not import
    is left to Django, which reports it)."""
    from .middleware import InprocserveMiddleware

    return _names_subclass(name, InprocserveMiddleware)


_REPOSITORY_STATE = {"inprocserve.E002"}
"""Errors about what the repository holds now, which the server tolerates: not refused at start-up."""


def refuse_invalid_settings() -> None:
    """Run this plug-in's system checks where Django runs none: a WSGI or ASGI server (gunicorn, uWSGI,
    uvicorn) loads the application without them, so a bad ``INPROCSERVE`` setting that ``manage.py check``
    reports started every worker anyway, and failed each one's first request, or every request (a 500),
    instead of the start-up. Called when Django builds the middleware (as the server loads the app).

    Errors silenced in ``SILENCED_SYSTEM_CHECKS`` are left alone, as ``manage.py check`` leaves them, and so
    is ``E002`` (``MODELS`` or ``REQUIRED_MODELS`` name a model not in the repository): that is the
    repository's state, not a setting the server refuses. The server serves the models it finds and ``/ready``
    waits for the required ones; refused here, a model's files deployed after the code (or a model folder
    removed before its settings) stopped every worker from starting, and a worker restarted later (gunicorn's
    ``max_requests``) took the whole site down with it.

    Raises:
        ImproperlyConfigured: listing every error, with its id and hint.
    """
    silenced = set(getattr(django_settings, "SILENCED_SYSTEM_CHECKS", ()))
    left_alone = silenced | _REPOSITORY_STATE
    errors = [message for message in check_inprocserve() if message.is_serious() and message.id not in left_alone]
    repository = settings()["REPOSITORY"]
    missing = [error for error in errors if error.id == "inprocserve.E001"]
    if missing and isinstance(repository, str | os.PathLike) and web.replacement_worker() is not None:
        # A gunicorn worker replacing an earlier one while the folder is briefly gone (a release swapped in by
        # two renames, a network mount) starts, and builds its server once the folder is back: refused, it
        # made gunicorn stop the whole server ("Worker failed to boot"). A first start still refuses it.
        web.refuse_at_start(inprocserve.ConfigurationError(missing[0].msg), repository=repository)  # (logs it)
        errors = [error for error in errors if error.id != "inprocserve.E001"]
    if errors:
        raise ImproperlyConfigured("INPROCSERVE is not valid (`manage.py check` reports the same):\n" + listed(errors))


def _not_a_directory(repository: object) -> Error:
    if isinstance(repository, str | os.PathLike) and not Path(repository).is_absolute():
        # A relative path is read from the working directory, which differs between manage.py run in the project's
        # folder, gunicorn started by systemd or a container, and a test runner: a folder found in development was
        # "not a directory" in production, and the message did not say where it was looked for.
        text = os.fspath(repository)
        if isinstance(text, str) and text.startswith("~"):  # (the hint said BASE_DIR / '~/models')
            return Error(
                f"INPROCSERVE['REPOSITORY'] ({repository}) is not a directory: ~ is not expanded, the path is read "
                f"from the working directory, here {Path(repository).absolute()}.",
                hint=f"Write Path({text!r}).expanduser(), or the absolute path; or create it.",
                id="inprocserve.E001",
            )
        return Error(
            f"INPROCSERVE['REPOSITORY'] ({repository}) is not a directory: a relative path is read from the working "
            f"directory, here {Path(repository).absolute()}.",
            hint=f"Give it from settings.py's BASE_DIR, BASE_DIR / {os.fspath(repository)!r}, so that every command "
            "and server finds the same folder wherever it starts; or create it.",
            id="inprocserve.E001",
        )
    return Error(
        f"INPROCSERVE['REPOSITORY'] ({repository}) is not a directory.",
        hint="Create it, or point REPOSITORY at the folder that holds your models.",
        id="inprocserve.E001",
    )


def _bool_errors(config: Mapping[str, Any], key: str) -> list[Error]:
    problem = web.bool_setting_problem(config[key])  # ("false" read from the environment is true)
    if problem is None:
        return []
    hint = (
        f"The default is {DEFAULTS[key]!r}; read an environment variable as os.environ.get(...) == 'true' "
        "(see docs/django.md)."
    )
    return [Error(f"INPROCSERVE['{key}'] {problem}.", hint=hint, id="inprocserve.E012")]


def _header_setting_errors(name: str, value: object) -> list[Error]:
    """inprocserve.E009: a header setting that no request header can match, so it is silently never read."""
    problem = web.header_setting_problem(value)
    if problem is None:
        return []
    return [
        Error(
            f"INPROCSERVE['{name}'] {problem}.",
            hint="Name the request header as clients send it, such as 'X-User-Id', or None to read none.",
            id="inprocserve.E009",
        )
    ]


_OFF_WHEN_EMPTY = {
    "ADMIN_TOKEN": (
        "the admin endpoints are off",
        "Set it to a long random string (secrets.token_urlsafe(32)) to serve them",
    ),
    "USER_HEADER": (
        "no user id header is read, so anonymous requests are bucketed at random in rollouts (a canary, an A/B "
        "test), not sticky per user",
        "Name the header as clients send it ('X-User-Id', the default)",
    ),
    "DEADLINE_HEADER": (
        "no deadline header is read, so a caller's remaining budget is ignored",
        "Name the header as callers send it ('X-Request-Timeout-Ms', the default)",
    ),
}
"""The settings whose empty string turns a feature off, with what it turns off and how to turn it on."""


def _empty_string_warnings(config: Mapping[str, Any]) -> list[Warning]:
    """inprocserve.W006: a setting of ``""`` (``ADMIN_TOKEN``, ``USER_HEADER``, ``DEADLINE_HEADER``), which
    turns its feature off as ``None`` does, but is also what ``os.environ.get("NAME", "")`` gives when the
    variable is not set: a deployment that forgot the variable had the feature off without a word (and a
    blank ``" "`` token was error E010). Still off (no token never opens the admin endpoints): only said, so
    that ``None`` says "off" on purpose."""
    return [
        Warning(
            f"INPROCSERVE['{key}'] is '' (an empty string): {effect}. An empty string is also what "
            f"os.environ.get(name, '') gives when the variable is not set.",
            hint=f"{turn_on}; None says off on purpose (os.environ.get(name), with no default, gives None for a "
            "variable that is not set).",
            id="inprocserve.W006",
        )
        for key, (effect, turn_on) in _OFF_WHEN_EMPTY.items()
        if isinstance(config[key], str) and not config[key]
    ]


def start_check_errors(config: Mapping[str, Any]) -> list[Error]:
    """The errors of the settings EAGER's start-up check is given (``REPOSITORY`` of another type than a path,
    ``FOLLOW_SYMLINKS`` other than True or False, and those of :func:`model_config_errors`): it refused them
    with the core's words (a ``TypeError`` naming no setting, a ``ConfigurationError`` naming ``follow_symlinks``),
    and ``ready()`` names the setting, its check and hint instead. (A path that is not a directory is the
    start-up check's own to judge: a replaced worker starts while a release is swapped in.)"""
    repository = config["REPOSITORY"]
    errors = [] if repository is None or isinstance(repository, str | os.PathLike) else [_not_a_directory(repository)]
    return [*errors, *_bool_errors(config, "FOLLOW_SYMLINKS"), *model_config_errors(config)]


def listed(errors: list[Error]) -> str:
    """Check errors one a line, each with its id and hint (what ``ImproperlyConfigured`` says)."""
    return "\n".join(f"{error.id}: {error.msg}" + (f" HINT: {error.hint}" if error.hint else "") for error in errors)


_FROM_A_DICT = (
    " A dict shaped like config.toml becomes one with inprocserve.ModelConfig().merged({...})"
    ' (for example {"batching": {"max_batch_size": 8}}).'
)
"""(A dict shaped like ``config.toml``, as docs/repository.md shows one, is what such a setting most often is.)"""


def model_config_errors(config: Mapping[str, Any]) -> list[Error]:
    """inprocserve.E003, E005, E006: ``CONFIG`` or ``MODELS`` that are not ``inprocserve.ModelConfig`` objects
    (a dict shaped like ``config.toml``, say), which every build of the server, and EAGER's start-up check,
    refuse."""
    errors: list[Error] = []
    value = config["CONFIG"]
    if value is not None and not isinstance(value, inprocserve.ModelConfig):
        errors.append(
            Error(
                f"INPROCSERVE['CONFIG'] must be an inprocserve.ModelConfig, got {type(value).__name__}.",
                hint="Build it with inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(...)); "
                "bad values raise ConfigurationError with the reason." + _FROM_A_DICT,
                id="inprocserve.E003",
            )
        )
    models = config["MODELS"]
    if not isinstance(models, dict):
        errors.append(Error("INPROCSERVE['MODELS'] must be a dict of name -> ModelConfig.", id="inprocserve.E005"))
        models = {}
    for name, model_config in models.items():
        if not isinstance(model_config, inprocserve.ModelConfig):
            errors.append(
                Error(
                    f"INPROCSERVE['MODELS'][{name!r}] must be an inprocserve.ModelConfig, "
                    f"got {type(model_config).__name__}.",
                    hint="Build it with inprocserve.ModelConfig(...)." + _FROM_A_DICT,
                    id="inprocserve.E006",
                )
            )
    return errors


def _names(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(name, str) for name in value)


def _a_string(value: object, convert: str) -> str:
    """The end of a number setting's hint when it is a string, as a value read from the environment is ("60"): the
    hint named the default alone, and the message's got '60' read as a number to whoever had written it."""
    if not isinstance(value, str):
        return ""
    return f" A value read from the environment is a string: convert it, {convert}(os.environ['...'])."


def _value_errors(config: Mapping[str, Any]) -> list[Error]:
    """inprocserve.E012: values of the wrong type or out of range, which would fail every request (a 500),
    or the first request of every worker (which builds the server)."""
    errors: list[Error] = []
    for setting in web.SECONDS_SETTINGS:
        key = setting.upper()
        problem = web.seconds_setting_problem(setting, config[key])
        if problem is not None:
            errors.append(
                Error(
                    f"INPROCSERVE['{key}'] {problem}.",
                    hint=f"The default is {DEFAULTS[key]!r} (see docs/django.md).{_a_string(config[key], 'float')}",
                    id="inprocserve.E012",
                )
            )
    flags_problem = web.flags_setting_problem(config["FLAGS"])  # (the server refused it at each request)
    if flags_problem is not None:
        errors.append(
            Error(
                f"INPROCSERVE['FLAGS'] {flags_problem}.",
                hint="For example inprocserve.EnvFlags() or inprocserve.InMemoryFlags({...}) (see docs/rollouts.md).",
                id="inprocserve.E012",
            )
        )
    for key in ("FOLLOW_SYMLINKS", "EAGER", "STATUS_PAGE", "V2_PROTOCOL"):
        errors.extend(_bool_errors(config, key))
    if not _names(config["REQUIRED_MODELS"]):
        errors.append(
            Error(
                f"INPROCSERVE['REQUIRED_MODELS'] is {config['REQUIRED_MODELS']!r}: a list of model names is expected.",
                hint="For example ['fraud'], or [] for every model found.",
                id="inprocserve.E012",
            )
        )
    return errors


# each shadow key's hint: what it is for
_SHADOW_HINTS = {
    "SHADOW_BUDGET": "The largest share of wall-clock time shadow runs may take, such as 0.02 (the default: "
    "20 ms a second); 1.0 runs every shadow copy an idle session accepts.",
    "SHADOW_QUEUE": "The shadow copies that may wait for the shadow thread, such as 256 (the default).",
    "SHADOW_QUEUE_BYTES": "The bytes the waiting shadow copies may hold together, such as "
    f"{web.SHADOW_SETTINGS['shadow_queue_bytes']} (32 MiB, the default); a request whose copy would take more "
    "than a quarter of it is not shadowed.",
}


def _shadow_errors(config: Mapping[str, Any]) -> list[Error]:
    """inprocserve.E011: shadow settings ``Server`` would refuse (or, for ``ON_SHADOW``, fail on) in each
    worker's first request, reported at start-up instead."""
    errors: list[Error] = []
    for key, hint in _SHADOW_HINTS.items():
        problem = web.shadow_setting_problem(key.lower(), config[key])
        if problem is not None:
            convert = "float" if key == "SHADOW_BUDGET" else "int"
            hint += _a_string(config[key], convert)
            errors.append(Error(f"INPROCSERVE['{key}'] {problem}.", hint=hint, id="inprocserve.E011"))
    problem = _on_shadow_problem(config["ON_SHADOW"])
    if problem is not None:
        errors.append(
            Error(
                f"INPROCSERVE['ON_SHADOW'] {problem}.",
                hint="Set it to a callable taking an inprocserve.ShadowComparison (called on the shadow thread), "
                "its dotted import path such as 'myproject.shadows.record', or None.",
                id="inprocserve.E011",
            )
        )
    return errors


def _on_shadow_problem(value: object) -> str | None:
    if isinstance(value, str):
        path = value
        try:
            value = import_string(path)
        except Exception as exc:  # (importing the user's module may raise anything)
            return f"is {path!r}, which does not import: {type(exc).__name__}: {exc}"
        if not callable(value):
            return f"is {path!r}, which is not callable but {type(value).__name__}"
    elif value is not None and not callable(value):
        return f"is not a callable, a dotted path to one, or None, but {value!r}"
    return None
