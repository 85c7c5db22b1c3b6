"""``status URL``: read a running app's ``/-/inprocserve/models`` endpoint and summarize it.

Plain ``urllib`` (no HTTP client dependency). The endpoint is the one both plug-ins serve; ``--token-file``
(or ``--token``) sends the admin token as ``Authorization: Bearer ...`` for apps that guard it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from ._cli_common import CANNOT_RUN, OK, PROBLEMS, Subparsers, add_command, fail, positive_float, printable
from ._control import shown_unknown_keys

__all__ = ["MalformedStatusError", "add_status", "fetch_status", "status_url", "summarize"]

ENDPOINT = "/-/inprocserve/models"
_MAX_BYTES = 32 * 1024 * 1024  # a status document is kilobytes; refuse to buffer something that is not one


def add_status(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "status",
        summary="read a running app's model status endpoint and print a summary",
        examples="  python -m inprocserve status http://127.0.0.1:8000\n"
        "  python -m inprocserve status http://127.0.0.1:8000/api/-/inprocserve/models\n"
        "  python -m inprocserve status --token-file /run/secrets/admin_token --json http://127.0.0.1:8000\n"
        "  printenv INPROCSERVE_ADMIN_TOKEN | python -m inprocserve status --token-file - http://127.0.0.1:8000\n\n"
        f"A URL without a path gets {ENDPOINT} appended. Exit status 1 when a model is not ready or\n"
        "there is none, the server is closed, its control file cannot be read or applied (control.error),\n"
        "or a model's fleet-wide hold could not be written (FLEET NOT HELD),\n"
        "2 when the endpoint cannot be read or answers a malformed status document. Control characters in\n"
        "names and messages are printed as escapes (\\x1b, \\n).\n",
    )
    parser.add_argument("url", help=f"the app's base URL, or the full URL of its {ENDPOINT} endpoint")
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the admin token from FILE ('-': standard input), sent as 'Authorization: Bearer TOKEN'",
    )
    token.add_argument(
        "--token",
        help="the admin token itself: every local user can read it in the process list while this runs; "
        "prefer --token-file",
    )
    parser.add_argument("--json", action="store_true", help="print the endpoint's JSON as it came")
    parser.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds to wait for the answer (> 0, default 10)"
    )
    parser.set_defaults(run=_status)


def status_url(url: str) -> str:
    """The endpoint to read for ``url``: a bare ``scheme://host[:port]`` gets the default path appended.

    Raises:
        ValueError: ``url`` is not an http(s) URL with a host.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (read for its check: a port out of range or not a number)
    except ValueError as exc:  # (said alone, "Invalid IPv6 URL" named neither the argument nor the address)
        raise ValueError(f"{url!r} is not a URL that can be read ({exc}); e.g. http://127.0.0.1:8000") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if not path:
        path = ENDPOINT
    elif path.endswith("/-/inprocserve"):
        path += "/models"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def fetch_status(url: str, *, token: str | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET the status document at ``url`` (already an endpoint URL, see ``status_url``).

    Raises:
        ValueError: ``timeout_s`` is not a finite number > 0, or ``token`` holds a character a header cannot
            carry (a line break: the message does not show it).
        ConnectionError: the endpoint could not be read or did not answer a status document; the
            message says why and what to try.
    """
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not (math.isfinite(timeout_s) and timeout_s > 0)
    ):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, not {timeout_s!r}")
    if token and any(not (" " <= char <= "~" or "\xa0" <= char <= "\xff" or char == "\t") for char in token):
        # http.client refuses such a header with an error that quotes it: a token file of two lines (the token
        # and a comment) printed the token on stderr, into a deploy log or a cron mail.
        raise ValueError(
            "the admin token holds a line break or another character an HTTP header cannot carry (not shown); "
            "give the token alone, on one line"
        )
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_SameOriginRedirects(url, carries_token=bool(token)))
    try:
        body = _within(timeout_s, lambda: _read(opener, request, timeout_s), url)
    except (_RedirectRefusedError, _NoAnswerError):
        raise
    except urllib.error.HTTPError as exc:
        refused = (
            "the token given is not the one it takes" if token is not None else "pass the admin token with --token-file"
        )
        hint = {
            401: refused,
            403: refused,
            404: f"is the endpoint enabled? If the app mounts it elsewhere than {ENDPOINT}, give the full URL",
        }.get(exc.code, "see the app's log")
        # (the reason phrase is the endpoint's own text: a hostile one's escapes retitled or cleared the terminal)
        raise ConnectionError(f"{url} answered HTTP {exc.code} {printable(str(exc.reason))}: {hint}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach {url}: {printable(str(reason))}") from exc
    except http.client.HTTPException as exc:  # not an HTTP answer (a bad status line, over-long headers)
        raise ConnectionError(f"{url} did not answer HTTP ({type(exc).__name__}: {str(exc)[:200]!r})") from exc
    if len(body) > _MAX_BYTES:
        raise ConnectionError(f"{url} answered more than {_MAX_BYTES} bytes: not a status document")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # (nested too deeply: not a status document either)
        raise ConnectionError(f"{url} did not answer JSON ({exc}): is it an inprocserve status endpoint?") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise ConnectionError(f"{url} answered JSON without a 'models' object: is it an inprocserve status endpoint?")
    return document


def _read(opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout_s: float) -> bytes:
    with opener.open(request, timeout=timeout_s) as response:  # the scheme is checked: http(s) only
        return response.read(_MAX_BYTES + 1)  # type: ignore[no-any-return]


def _within(timeout_s: float, call: Callable[[], bytes], url: str) -> bytes:
    """``call()``'s answer, or its error, if it comes within ``timeout_s``; else ``ConnectionError``.

    urllib's ``timeout`` bounds each socket operation, not the call: an endpoint that sent its answer (or its
    headers) a byte a second held ``status --timeout 2`` for as long as it liked, and a deploy check with it.
    The call runs on a daemon thread, left behind when the time is up (it ends at its socket's next timeout,
    or with the process)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((call(), None))
        except BaseException as exc:  # handed to the caller, raised there
            outcome.append((None, exc))

    thread = threading.Thread(target=run, name="inprocserve-status-fetch", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise _NoAnswerError(f"{url} gave no whole answer within {timeout_s:g} s (--timeout)")
    body, error = outcome[0]
    if error is not None:
        try:
            raise error
        finally:
            del error, outcome
    return body  # type: ignore[no-any-return]


class _NoAnswerError(ConnectionError):
    """No whole answer within the time allowed."""


class _RedirectRefusedError(ConnectionError):
    """A redirect that ``status`` does not follow (the message says where it led, and why not)."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, but only to http(s), and, when a token is sent, only to the origin (scheme, host and
    port) it was meant for. urllib copies every header of a request onto its redirect, ``Authorization`` too:
    an endpoint (or anything on the path to it) answering ``302 Location: http://elsewhere/`` was sent the
    admin token, in clear text even when the URL given was https, and urllib also follows redirects to ftp."""

    def __init__(self, url: str, *, carries_token: bool) -> None:
        self._origin = _origin(url)
        self._carries_token = carries_token

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        target = _origin(newurl)
        if target[0] not in ("http", "https"):
            raise _RedirectRefusedError(
                f"{req.full_url} redirects to {newurl[:200]!r}, which is not an http:// or https:// URL"
            )
        if self._carries_token and target != self._origin:
            raise _RedirectRefusedError(
                f"{req.full_url} redirects to {newurl[:200]!r}, another scheme, host or port: the admin token is "
                "not sent there; if that is the app's endpoint, give its URL instead"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def healthy(document: dict[str, Any]) -> bool:
    """Whether the server is open, follows its control file without an error (it can read it and has
    applied all of it), and serves at least one model, each with a servable version and no ``fleet_hold_error``.
    (A server with no model answers every request "unknown model": its /ready answers 503, and so this is no
    health either. A fleet hold the gate could not write leaves this worker serving, but a worker that starts
    may serve another version: a deploy check must not pass it.)"""
    models = document["models"]
    if document.get("closed") or control_error(document) or not models:
        return False
    return all(isinstance(m, dict) and m.get("ready") and not m.get("fleet_hold_error") for m in models.values())


def control_error(document: dict[str, Any]) -> str | None:
    """The status document's ``control.error``: why the worker cannot read its control file or has not
    applied all of the revision in force (``None`` when it has, or the document has no control part)."""
    control = document.get("control")
    error = control.get("error") if isinstance(control, dict) else None
    return str(error) if error else None


class MalformedStatusError(ValueError):
    """A status document (from a remote endpoint: untrusted) has a part of the wrong JSON type."""


def _object(value: Any, where: str, *, optional: bool = False) -> dict[str, Any]:
    """``value`` when it is a JSON object (``{}`` for an ``optional`` part that is absent or null); anything
    else is malformed."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise MalformedStatusError(f"{printable(where)} is {kind}, expected an object")
    return value


_NO_TOKEN = "--token-file gives the admin token"
_TOKEN_NOT_TAKEN = "the app did not take the token given as its admin token"


def summarize(document: dict[str, Any], *, token_sent: bool = False) -> list[str]:
    """Readable lines for a status document: one per model, one per version, rollout and shadow figures.
    ``token_sent``: whether the request carried a token, so that a view without paths says why.

    Raises:
        MalformedStatusError: a part the summary reads is not the JSON type a status document has there
            (the message names it, e.g. ``models.fraud.shadow.2``).
    """
    runtime = document.get("onnxruntime", "?")
    state = "closed" if document.get("closed") else "open"
    # The view without the admin token drops every path (the repository, the control file): that is not
    # "no repository", and the control revision the worker follows is shown all the same. A token the app does
    # not take gets that view too (/models answers without one): "--token" alone sent such a caller round.
    hidden = _TOKEN_NOT_TAKEN if token_sent else _NO_TOKEN
    repository = (document.get("repository") or "(none)") if "repository" in document else f"(path hidden: {hidden})"
    lines = [f"server {state}, onnxruntime {runtime}, repository {repository}"]
    worker = document.get("worker")
    if isinstance(worker, dict) and worker.get("pid") is not None:  # each request reaches one worker of the host
        lines.append(f"answered by worker pid {worker['pid']} on {worker.get('hostname', '?')}")
    control = document.get("control")
    if isinstance(control, dict) and (control.get("file") or ("file" not in control and "revision" in control)):
        lines.append(f"control revision {control.get('revision', '?')}")
        unknown = shown_unknown_keys(control)
        if unknown is not None:  # (a newer release's keys during a rolling upgrade, or a typo)
            lines.append(f"control file keys this worker's release ignores: {printable(unknown)}")
    error = control_error(document)
    if error:
        lines.append(f"CONTROL ERROR: {error}")
    models = document["models"]
    if not models:
        lines.append("no models")
    for name, value in models.items():
        model = _object(value, f"models.{name}")
        ready = "ready" if model.get("ready") else "NOT READY"
        # answering_version: the stable version config.toml or a switch names (default_version is the latest
        # ready one, which answers only when neither names one); a server of before it has only the latter
        answers = model["answering_version"] if "answering_version" in model else model.get("default_version")
        lines.append(f"{name}: {ready}" + (f", v{answers} answers by default" if answers is not None else ""))
        if model.get("config_error"):
            lines.append(f"  config error: {model['config_error']}")
        if model.get("config_warning"):
            lines.append(f"  config warning: {printable(str(model['config_warning']))}")
        if model.get("fleet_hold_error"):  # (the gate's hold is this worker's alone: the fleet is not held)
            lines.append(f"  FLEET NOT HELD: {printable(str(model['fleet_hold_error']))}")
        rollout = model.get("rollout")
        strategy = rollout.get("strategy") if isinstance(rollout, dict) else None
        configured = rollout.get("configured") if isinstance(rollout, dict) else None
        candidate = configured.get("candidate") if isinstance(configured, dict) else None
        lines.extend(
            _control_lines(
                _object(model.get("control"), f"models.{name}.control", optional=True),
                strategy=strategy,
                candidate=candidate,
            )
        )
        for number, version in _object(model.get("versions"), f"models.{name}.versions", optional=True).items():
            where = f"models.{name}.versions.{number}"
            lines.append("  " + _version_line(number, _object(version, where), where))
        rollout = _object(model.get("rollout"), f"models.{name}.rollout", optional=True)
        variants = _object(rollout.get("variants"), f"models.{name}.rollout.variants", optional=True)
        if variants:
            served = ", ".join(
                f"{variant} {_object(stats, f'models.{name}.rollout.variants.{variant}').get('served', 0)}"
                for variant, stats in variants.items()
            )
            lines.append(f"  rollout {rollout.get('strategy', '?')}: served {served}")
        lines.extend(_removed_lines(rollout, f"models.{name}.rollout.removed_variants"))
        for number, value in _object(model.get("shadow"), f"models.{name}.shadow", optional=True).items():
            shadow = _object(value, f"models.{name}.shadow.{number}")
            agreement = shadow.get("label_agreement")
            agree = f", label agreement {agreement:.1%}" if isinstance(agreement, int | float) else ""
            split = [  # (against each version that answered: during a canary the overall figure mixes them)
                f"v{primary} {figures['label_agreement']:.1%}"
                for primary, figures in _object(
                    shadow.get("by_primary"), f"models.{name}.shadow.{number}.by_primary", optional=True
                ).items()
                if isinstance(figures, dict) and isinstance(figures.get("label_agreement"), int | float)
            ]
            if agree and len(split) > 1:
                agree += f" (against {', '.join(split)})"
            mismatched = shadow.get("mismatched")
            # (answers that could not be compared at all, such as text labels against integer ones: without this,
            # a shadow that never once agreed read "41 runs, 0 errors", as if it matched)
            unlike = f", {mismatched} not comparable" if isinstance(mismatched, int) and mismatched else ""
            lines.append(
                f"  shadow v{number}: {shadow.get('runs', 0)} runs, {shadow.get('errors', 0)} errors{unlike}{agree}"
            )
    return [printable(line) for line in lines]


def _control_lines(state: dict[str, Any], *, strategy: object = None, candidate: object = None) -> list[str]:
    """What the fleet's control file sets for one model, as the worker follows it: a kill switch turned on
    with ``kill`` and a canary set with ``canary`` were not shown, so ``status`` right after them read the
    same as before. ``strategy``: the model's rollout strategy (a stopped canary leaves A/B and bandit arms
    answering: the line said "canary stopped" as if one version answered). ``candidate``: the configured
    canary's version the worker routes with (a stop of another version, ``canary_off_version``, no longer
    holds)."""
    lines = []
    if state.get("kill"):
        lines.append("  KILL SWITCH ON: the stable version answers every request (`resume` turns it off)")
    if state.get("stable") is not None:
        previous = state.get("previous_stable")
        back = f" (rollback goes to v{previous})" if previous is not None else ""
        mark = state.get("stable_by_gate")  # (a mark of true is no version: True == 1 in Python)
        gate = (
            " (named by the compatibility gate: follows the newest compatible version)"
            if isinstance(mark, int) and not isinstance(mark, bool) and mark == state.get("stable")
            else ""
        )
        lines.append(f"  control file: v{state['stable']} is stable{back}{gate}")
    percent = state.get("canary_percent")
    if state.get("canary_version") is not None and isinstance(percent, int | float) and percent > 0:
        lines.append(f"  control file: canary v{state['canary_version']} for {percent:g}% of users")
    elif state.get("canary_version") is not None:
        # (`canary ... VERSION 0`: it replaces the configured rollout, an A/B test's arms too, and sends no one;
        # the page said so and this printed nothing, as if the configured rollout ran)
        lines.append(
            f"  control file: canary v{state['canary_version']} for 0% of users: it replaces the configured rollout, "
            "so the stable version answers (`canary ... config` hands it back)"
        )
    elif state.get("canary_version") is None and state.get("canary_off") is True:
        # (`canary ... none` on a configured canary: why its version gets no one)
        stopped = state.get("canary_off_version")
        known = isinstance(stopped, int) and not isinstance(stopped, bool)
        if known and isinstance(candidate, int) and not isinstance(candidate, bool) and candidate != stopped:
            lines.append(
                f"  control file: stop of v{stopped} no longer applies: configured canary is v{candidate}, which runs "
                "(`canary ... none` stops it)"
            )
        elif strategy in ("ab", "bandit") and state.get("kill"):  # (the arms do not answer: said they did)
            lines.append(
                "  control file: canary stopped: the kill switch is on, so no arm answers (`resume` turns it off)"
            )
        elif strategy in ("ab", "bandit"):
            lines.append(
                f"  control file: canary stopped, but the configured strategy is {strategy!r}: its arms still answer "
                "(`kill` stops them)"
            )
        else:
            which = f"canary v{stopped} stopped" if known else "canary stopped"
            lines.append(
                f"  control file: {which}: a configured canary sends no one to its version (`canary ... config` "
                "hands it back)"
            )
    return lines


def _removed_lines(rollout: dict[str, Any], where: str) -> list[str]:
    """A line for each arm a reload removed (``removed_variants``): its final numbers, which a late outcome by
    request id of a request it served still adds to for an hour after that reload. The summary listed the
    arms that answer alone, so an arm's served requests disappeared from it at a reload."""
    lines = []
    for arm, value in _object(rollout.get("removed_variants"), where, optional=True).items():
        stats = _object(value, f"{where}.{arm}")
        mean = stats.get("mean_reward")
        reward = f"{mean:.4g}" if isinstance(mean, int | float) and not isinstance(mean, bool) else "none yet"
        lines.append(
            f"  removed arm {arm} (v{stats.get('version', '?')}): served {stats.get('served', 0)}, outcomes "
            f"{stats.get('outcomes', 0)}, mean reward {reward}; removed by a reload, no new request goes to it, "
            "kept for late outcomes by request id for an hour after that reload"
        )
    return lines


def _version_line(number: str, version: dict[str, Any], where: str) -> str:
    state = version.get("state", "?")
    if version.get("error"):
        return f"v{number}: {state}: {version['error']}"
    serving = "serving" if version.get("serving") else "not serving"
    figures = (
        f"{version.get('batches_run', 0)} batches, {version.get('rows_run', 0)} rows, "
        f"{version.get('queued_rows', 0)} queued, {version.get('in_flight', 0)} in flight"
    )
    drift = _object(version.get("drift"), f"{where}.drift", optional=True)
    drifting = ", DRIFTING" if drift.get("drifting") else ""
    line = f"v{number}: {state}, {serving}: {figures}{drifting}"
    # why the model is NOT READY when every version reads "ready" (a remote server that is down), and a hot
    # reload's new files that failed while the version loaded before serves: neither was printed
    if version.get("health"):
        line += f"; CANNOT TAKE WORK: {version['health']}"
    if version.get("reload_error"):
        line += f"; NEW FILES FAILED TO LOAD (the version loaded before serves): {version['reload_error']}"
    return line


def _read_token(path: str) -> str:
    """The admin token in file ``path`` (``-``: standard input), without surrounding whitespace. A token given
    on the command line (``--token``) is in the process list, which every local user can read (``ps``,
    ``/proc/<pid>/cmdline``) while the command waits for the endpoint: one that can switch and kill models.

    Raises:
        ValueError: the file cannot be read, or holds no token.
    """
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--token-file {path}: cannot be read ({exc})") from None
    token = text.strip()
    if not token:
        raise ValueError(f"--token-file {path}: holds no token")
    return token


def _status(args: argparse.Namespace) -> int:
    try:
        url = status_url(args.url)
        token = args.token if args.token_file is None else _read_token(args.token_file)
        document = fetch_status(url, token=token, timeout_s=args.timeout)
    except (ValueError, ConnectionError) as exc:
        return fail(str(exc), CANNOT_RUN)
    if args.json:  # printed as it came, malformed or not: what to show whoever runs the app
        print(json.dumps(document, indent=2))
    else:
        try:
            lines = summarize(document, token_sent=token is not None)
        except MalformedStatusError as exc:
            return fail(f"{url} answered a malformed status document: {exc}", CANNOT_RUN)
        print(url)
        for line in lines:
            print(line)
    return OK if healthy(document) else PROBLEMS
