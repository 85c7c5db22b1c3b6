"""The status page: one self-contained HTML document, with inline SVG charts, drawn from ``Server.status()``.

It lives in the core, free of any web framework, so the Flask and Django plug-ins serve the same page. The
page has no script and loads nothing: every style is inline and every chart is SVG drawn here, so it works
behind a strict ``Content-Security-Policy`` (see :data:`STATUS_PAGE_CSP`) and needs no front-end build.
Every value from the status is escaped, since model names, feature names and error messages end up in it,
and characters that reorder or hide text (a right-to-left override in an error message) are shown as escapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from types import MappingProxyType
from typing import Any, TypeGuard

from ._control import shown_unknown_keys
from .web import _control_unknown

__all__ = ["PAGE_HEADERS", "STATUS_PAGE_CSP", "render_status_page"]

STATUS_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
"""A Content-Security-Policy the page works under: no script, no fetch, no frame; only its inline styles.
(``default-src`` does not cover ``base-uri`` and ``form-action``: without them an injected ``<base>`` or
``<form>`` would be obeyed.)"""

PAGE_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Cache-Control": "no-store",
        "Content-Security-Policy": STATUS_PAGE_CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
)
"""The headers of every answer at the page's address, its 401 included: stored by no cache (what a token
opened), never sniffed as another type, framed by no page (``X-Frame-Options`` for browsers that predate
``frame-ancestors``), and no token-bearing address sent on as a referrer."""

TOKEN_NEEDED = (
    "The status page needs its token: send it as Authorization: Bearer <token>, or as the password of HTTP Basic "
    "credentials (any user name; a browser asks for them). A token in the query string is refused (access logs "
    "and browser history would keep it).\n"
)
"""The body of both plug-ins' 401 for the page: it said only that the page needs its token, which read as a
wrong token to whoever sent a right one the wrong way (``?token=...``)."""

_SIGNIFICANT_P = 0.05
_PALETTE = ("#2f6fd6", "#e08a1e", "#3c9a5f", "#8e5cc4", "#c94c4c", "#2aa1a8", "#b5a019", "#6b7280")
_LABEL_CHARS = 28  # longer labels in charts are cut (the tables show them whole)

_STYLE = "".join(
    (
        'body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;',
        "background:#f4f5f7;color:#1f2328}",
        "header{background:#1f2937;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}",
        "header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}main{padding:16px 24px;max-width:1240px}",
        "section.model{background:#fff;border:1px solid #d8dee4;border-radius:8px;margin:0 0 18px;padding:14px 18px}",
        "section.model>h2{margin:0 0 6px;font-size:18px}h3{font-size:14px;margin:14px 0 6px;color:#374151}",
        ".why{margin:4px 0 10px;color:#374151}.grid{display:grid;grid-template-columns:1fr 1fr;gap:4px 24px}",
        "table{border-collapse:collapse;font-size:13px;margin:2px 0 6px}",
        "th,td{padding:3px 10px 3px 0;text-align:left;vertical-align:top}",
        "th{color:#57606a;font-weight:600;border-bottom:1px solid #d8dee4}",
        "td.n{text-align:right;font-variant-numeric:tabular-nums}th,td.n,td:first-child,.badge{white-space:nowrap}",
        ".badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;",
        "margin-left:6px;vertical-align:1px}.ok{background:#dcfce7;color:#166534}",
        ".role{background:#e0e7ff;color:#3730a3}.warn{background:#fef3c7;color:#92400e}",
        ".bad{background:#fee2e2;color:#991b1b}.error{color:#991b1b;white-space:pre-wrap;word-break:break-word}",
        "svg{display:block;margin:2px 0 8px}",
        'svg text{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#374151}',
        ".empty{color:#6b7280;font-style:italic;margin:2px 0 8px}",
        ".swatch{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}",
    )
)


def render_status_page(
    status: Mapping[str, Any], *, title: str = "inprocserve status", now: datetime | None = None
) -> str:
    """Render ``Server.status()`` as a complete HTML page (a ``str``; serve it as ``text/html; charset=utf-8``).

    Shows every model and version with its state, which version answers and why, traffic per variant, A/B
    statistics with their significance, bandit arm shares, shadow agreement, drift per feature against its
    threshold, latency percentiles and batch sizes. Pure and thread-safe: it only reads ``status``.

    Args:
        status: What :meth:`Server.status` returned (possibly after a JSON round trip).
        title: The page's heading and ``<title>``.
        now: The time printed as "generated at" (default: the current time, UTC).

    Raises:
        TypeError: ``status`` is not a mapping with a ``models`` mapping.
    """
    if not isinstance(status, Mapping) or not isinstance(status.get("models"), Mapping):
        raise TypeError("status must be what Server.status() returns: a mapping with a 'models' mapping")
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    models = status["models"]
    facts = [
        f"{len(models)} model{'s' if len(models) != 1 else ''}",
        f"onnxruntime {_text(status.get('onnxruntime'))}",
        f"repository {_text(status.get('repository'))}",
        f"generated at {_escape(when)}",
    ]
    worker = _mapping(status.get("worker"))
    if worker.get("pid") is not None:
        # Under several workers each load is drawn by whichever took the connection, from its own counts: said,
        # or two loads a second apart disagree with nothing to say why and read as the fleet's figures.
        host = f" on {_text(worker['hostname'])}" if worker.get("hostname") else ""
        facts.insert(1, f"worker {_text(worker['pid'])}{host} (its own figures)")
    if status.get("closed"):
        facts.insert(0, '<span class="badge bad">server closed</span>')
    control = _mapping(status.get("control"))
    if control.get("revision") is not None and (control.get("file") or "file" not in control):  # (as the CLI)
        facts.append(f"control revision {_text(control.get('revision'))}")
    # A worker that follows no revision of its control file refuses every request that pins no version (the
    # readiness rule): the models' own state below would read as served. (It did: "ready", "answers every
    # request", while each request failed with ControlStateUnknownError.)
    refusing = _control_unknown({"control": control})
    body = [
        _model_section(name, model, refusing=refusing is not None)
        for name, model in models.items()
        if isinstance(model, Mapping)
    ]
    if not body:
        body.append('<p class="empty">No model is loaded.</p>')
    if refusing is not None:
        body.insert(0, f'<p class="error">Refusing every request that does not pin a version: {_escape(refusing)}</p>')
    elif control.get("error"):
        body.insert(0, f'<p class="error">Control file: {_text(control["error"])}</p>')
    unknown = shown_unknown_keys(control)
    if unknown is not None:  # (a newer release's keys during a rolling upgrade, or a typo)
        body.insert(0, f'<p class="error">Control file keys this release ignores: {_text(unknown)}</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{_escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{_escape(title)}</h1><p>{' · '.join(facts)}</p></header>"
        f"<main>{''.join(body)}</main></body></html>\n"
    )


# -- one model ---------------------------------------------------------------------------------------------


_REFUSED = "Refused (ControlStateUnknownError) unless a request pins a version, until the control file is read; then: "


_GATE_NAMED = "stable named by the compatibility gate: follows the newest compatible version"

_CANARY_STOPPED = "canary stopped (control file)"

_ARMS_ANSWER = "canary stopped; arms still answer (control file)"
"""The badge of a stop on a model whose configured strategy splits traffic over arms (A/B, bandit): a stop
stops only a canary, so its arms keep answering (as ``status`` in the CLI says; ``kill`` stops them)."""

_ARM_STRATEGIES = ("ab", "bandit")


def _gate_named(control: Mapping[str, Any]) -> bool:
    """Whether the control file's stable version is the one the compatibility gate named (its mark is bound to
    that version: a switch by another hand, an older release's included, leaves it naming another)."""
    gate = control.get("stable_by_gate")
    # (a mark of true, not a version, is none: True == 1 in Python, and version 1 read as the gate's)
    return isinstance(gate, int) and not isinstance(gate, bool) and gate == control.get("stable")


def _stop_texts(control: Mapping[str, Any], rollout: Mapping[str, Any] | None, *, killed: bool) -> tuple[str, str]:
    """The badge of a stopped canary (``canary_off``), naming the version stopped where the file records it
    (``canary_off_version``), and, when the configured canary is another version now (a deploy's new canary,
    which runs), a sentence saying the stop no longer applies ("" otherwise). On a model whose configured
    strategy is A/B or bandit the badge says its arms still answer: "canary stopped" read as if traffic went
    back to one version (the checks in the order of the CLI's ``status``), unless the kill switch is on (``killed``):
    no arm answers then."""
    stopped = control.get("canary_off_version")
    known = isinstance(stopped, int) and not isinstance(stopped, bool)
    candidate = _mapping(_mapping(rollout).get("configured")).get("candidate")
    if not known or not isinstance(candidate, int) or isinstance(candidate, bool) or candidate == stopped:
        if _mapping(rollout).get("strategy") in _ARM_STRATEGIES and not killed:
            return _ARMS_ANSWER, ""
        return (f"canary v{stopped} stopped (control file)" if known else _CANARY_STOPPED), ""
    return (
        f"stop of v{stopped} no longer applies: configured canary is v{candidate}",
        f" The control file's stop of canary version {stopped} no longer applies: the configured canary is version "
        f"{candidate}, which runs (<code>canary ... none</code> stops it).",
    )


def _model_section(name: str, model: Mapping[str, Any], *, refusing: bool) -> str:
    versions = _entries(model.get("versions"))
    rollout = model.get("rollout") if isinstance(model.get("rollout"), Mapping) else None
    ready = bool(model.get("ready")) and not refusing
    killed = bool(_mapping(model.get("control")).get("kill"))  # the fleet's kill switch (control file)
    control = _mapping(model.get("control"))  # (`canary ... none`: no canary of the file's, the configured stopped)
    stopped = control.get("canary_off") is True and control.get("canary_version") is None
    badge, stale = _stop_texts(control, rollout, killed=killed) if stopped else ("", "")
    stopped = stopped and not stale  # (a stop of another version than the configured canary's holds no more)
    parts = [
        f'<section class="model" id="model-{_escape(str(name))}">'
        f"<h2>{_escape(str(name))}{_badge('ready', 'ok') if ready else _badge('not ready', 'bad')}"
        f"{_badge('refusing requests (control file)', 'bad') if refusing else ''}"
        f"{_badge('kill switch on', 'bad') if killed else ''}"
        f"{_badge(badge, 'warn') if badge else ''}"
        f"{_badge(_GATE_NAMED, 'ok') if _gate_named(_mapping(model.get('control'))) else ''}</h2>",
        f'<p class="why">{_REFUSED if refusing else ""}{_why(model, rollout, killed=killed, stopped=stopped)}'
        f"{stale}</p>",
    ]
    if model.get("config_error"):
        parts.append(f'<p class="error">Configuration error: {_text(model["config_error"])}</p>')
    if model.get("config_warning"):  # (keys of its config.toml or a remote.toml this release ignores)
        parts.append(f'<p class="error">Configuration warning: {_text(model["config_warning"])}</p>')
    if model.get("fleet_hold_error"):  # (the gate's hold is this worker's alone: the fleet is not held)
        parts.append(f'<p class="error">Fleet not held: {_text(model["fleet_hold_error"])}</p>')
    parts.append("<h3>Versions</h3>" + _versions_table(versions, _roles(model, rollout, killed=killed)))
    if rollout is not None:
        parts.append(_rollout_block(rollout))
    shadow = model.get("shadow")
    if isinstance(shadow, Mapping) and shadow:
        parts.append(_shadow_block(shadow))
    charts = [_version_charts(number, entry) for number, entry in versions.items() if entry.get("state") != "failed"]
    parts.extend(chart for chart in charts if chart)
    parts.append("</section>")
    return "".join(parts)


def _why(model: Mapping[str, Any], rollout: Mapping[str, Any] | None, *, killed: bool, stopped: bool = False) -> str:
    """Which version answers, and why, in one sentence (flags may override it per request).

    The control file's kill switch comes first: with it on, the stable version answers every request and no
    canary, arm or shadow runs, whatever the configuration says (the page kept describing the canary).
    ``stopped``: the control file stopped the configured canary (``canary_off``), which then reads "0 %"."""
    default = model.get("default_version")
    if default is None:
        return "No version is servable, so requests to this model fail with ModelNotFoundError."
    if rollout is None:
        return f"Version {_text(default)} answers every request: the latest ready version."
    configured = _mapping(rollout.get("configured"))
    strategy = rollout.get("strategy")
    stable = rollout.get("stable_alias")
    stable_text = (  # (after "the")
        f"stable alias version {_text(stable)}" if stable is not None else f"latest ready version ({_text(default)})"
    )
    if killed:
        sentence = (
            f"Kill switch on (control file): the {stable_text} answers every request; no canary, arm or shadow "
            "runs until it is resumed."
        )
    elif strategy == "canary":
        sentence = (
            f"Canary: {_number(configured.get('canary_percent'))} % of targeting keys go to version "
            f"{_text(configured.get('candidate'))}; the rest to the {stable_text}."
        )
        if _mapping(model.get("control")).get("canary_version") is not None:  # (as the CLI's status says)
            sentence += (
                " Set by the control file: it replaces the configured rollout (an A/B test's arms too) until "
                "it is handed back to the configuration."
            )
        if stopped:  # (why the configured canary's version gets no one: `canary ... config` hands it back)
            sentence += (
                f" Canary stopped by the control file: the configured canary (version "
                f"{_text(configured.get('candidate'))}) sends no one until it is handed back to the configuration."
            )
    elif strategy in ("ab", "bandit"):
        listed = ", ".join(
            f"{_escape(str(arm))} → v{_text(spec.get('version'))}"
            + (f" ({_number(spec.get('weight'))})" if strategy == "ab" else "")
            for arm, spec in _entries(configured.get("arms")).items()
        )
        if strategy == "ab":
            sentence = f"A/B test, sticky per targeting key, split by weight: {listed}."
        else:
            sentence = (
                f"Bandit ({_text(configured.get('bandit_policy'))}): each request goes to the arm the policy "
                f"picks from the outcomes recorded so far: {listed}."
            )
        if stopped:  # (a stop stops a canary only: the arms answer on)
            sentence += " Canary stopped by the control file, but its arms still answer (the kill switch stops them)."
    else:
        sentence = f"The {stable_text} answers every request."
    flags = rollout.get("flags")
    if isinstance(flags, Mapping) and killed:
        sentence += f" A stable flag from {_text(flags.get('provider'))} may name another stable version per request."
    elif isinstance(flags, Mapping):
        sentence += (
            f" Flags from {_text(flags.get('provider'))} may override this per request "
            f"({_text(flags.get('failures', 0))} provider failures, {_text(flags.get('timeouts', 0))} timeouts "
            "fell back to the stable version)."
        )
    return sentence


def _version_key(number: str) -> tuple[int, str]:
    return (int(number), "") if number.isdigit() else (1 << 62, number)


def _roles(model: Mapping[str, Any], rollout: Mapping[str, Any] | None, *, killed: bool) -> dict[str, list[str]]:
    """What each version does in the rollout as configured: stable, canary, an arm, a shadow (only the stable
    one under the kill switch)."""
    roles: dict[str, list[str]] = {}
    if model.get("default_version") is None:
        return roles
    stable = model.get("default_version") if rollout is None else rollout.get("stable_alias")
    if killed:
        return {str(stable if stable is not None else model.get("default_version")): ["stable"]}
    configured = _mapping(_mapping(rollout).get("configured"))
    strategy = _mapping(rollout).get("strategy")
    if strategy in ("ab", "bandit"):
        for arm, spec in _entries(configured.get("arms")).items():
            roles.setdefault(str(spec.get("version")), []).append(f"arm {arm}")
    else:
        roles.setdefault(str(stable if stable is not None else model.get("default_version")), []).append("stable")
        if strategy == "canary" and configured.get("candidate") is not None:
            canary = f"canary {_number(configured.get('canary_percent'))}%"
            roles.setdefault(str(configured["candidate"]), []).append(canary)
    shadows = configured.get("shadow")
    for version in shadows if isinstance(shadows, list | tuple) else ():
        roles.setdefault(str(version), []).append("shadow")
    return roles


def _variant_order(rollout: Mapping[str, Any]) -> list[str]:
    """Variants in configured order, the control first (as the router compares them)."""
    order = [str(name) for name in _mapping(_mapping(rollout.get("configured")).get("arms"))] or ["stable", "canary"]
    seen = [str(name) for name in _mapping(rollout.get("variants"))]
    return [name for name in order if name in seen] + [name for name in seen if name not in order]


def _versions_table(versions: Mapping[str, Mapping[str, Any]], roles: Mapping[str, list[str]]) -> str:
    if not versions:
        return '<p class="empty">No version found.</p>'
    rows = []
    for number, entry in sorted(versions.items(), key=lambda item: _version_key(item[0])):
        state = str(entry.get("state", "unknown"))
        kind = {"ready": "ok", "failed": "bad", "loading": "warn", "draining": "warn"}.get(state, "warn")
        notes = [_badge(role, "role") for role in roles.get(number, [])]
        if entry.get("serving") is False and state != "failed":
            notes.append(_badge("not routable", "warn"))
        # Why a loaded version cannot take work (a remote server that is down: the model shows "not ready"
        # for it), and new files of it that failed to load (the version loaded before still serves): neither
        # showed, so a model read "not ready" with every version "ready" and nothing said why.
        health = entry.get("health") if state != "failed" else None
        if health:
            notes.append(_badge("cannot take work", "bad"))
        if entry.get("reload_error"):
            notes.append(_badge("new files failed", "warn"))
        latency = _mapping(entry.get("latency_ms"))
        # the runs the batch-size chart counts (session.run calls: each slice of a request larger than
        # max_batch_size, failed runs too) and their rows, both from the chart: batches_run counts such a request
        # once ("1 batch of 10 rows" under a limit of 4), and rows_run only the rows of runs that succeeded (4 rows
        # in one batch and 3 failed runs read "1 row per batch" divided by every run)
        sizes = _mapping(entry.get("batch_size"))
        batches, rows_run = sizes.get("batches"), sizes.get("rows")
        if not (isinstance(batches, int) and isinstance(rows_run, int)):  # (a status from before the chart's rows)
            batches, rows_run = entry.get("batches_run"), entry.get("rows_run")
        mean_rows = rows_run / batches if isinstance(batches, int) and batches and isinstance(rows_run, int) else None
        drift = entry.get("drift") if isinstance(entry.get("drift"), Mapping) else None
        drift_text = "—" if drift is None else _badge("drifting", "bad") if drift.get("drifting") else "no drift"
        rows.append(
            f"<tr><td>v{_escape(number)}{''.join(notes)}</td><td>{_badge(state, kind)}</td>"
            + "".join(
                f'<td class="n">{cell}</td>'
                for cell in (
                    _text(latency.get("count")),
                    _text(latency.get("errors")),
                    _ms(latency.get("p50")),
                    _ms(latency.get("p90")),
                    _ms(latency.get("p99")),
                    _text(batches),
                    _number(mean_rows, 2),
                )
            )
            + f"<td>{drift_text}</td>"
            f"<td>{_text(', '.join(map(str, entry.get('providers') or [])) or '—')}</td></tr>"
        )
        problems = [_text(entry["error"])] if entry.get("error") else []
        if health:
            problems.append(f"Cannot take work: {_text(health)}")
        if entry.get("reload_error"):
            problems.append(
                f"Its new files failed to load; the version loaded before serves: {_text(entry['reload_error'])}"
            )
        rows.extend(f'<tr><td></td><td colspan="10" class="error">{problem}</td></tr>' for problem in problems)
    return (
        "<table><tr><th>version</th><th>state</th><th>answered</th><th>errors</th><th>p50</th><th>p90</th>"
        "<th>p99</th><th>batches</th><th>rows/batch</th><th>drift</th><th>providers</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _rollout_block(rollout: Mapping[str, Any]) -> str:
    raw = _entries(rollout.get("variants"))
    variants = {name: raw[name] for name in _variant_order(rollout) if name in raw}
    strategy = rollout.get("strategy")
    parts = []
    served = [(name, float(stats.get("served") or 0)) for name, stats in variants.items()]
    total = sum(count for _, count in served)
    if total > 0:
        heading = "Bandit arm shares" if strategy == "bandit" else "Traffic per variant"
        chart = (
            _bars([(name, count / total) for name, count in served], maximum=1.0, value_text=_percent)
            if strategy == "bandit"
            else _share_bar(served)
        )
        rows = "".join(
            f"<tr><td>{_swatch(index)}{_escape(name)}</td><td class='n'>{_text(stats.get('version'))}</td>"
            f"<td class='n'>{_text(stats.get('served'))}</td>"
            f"<td class='n'>{_percent((stats.get('served') or 0) / total)}</td>"
            f"<td class='n'>{_text(stats.get('outcomes'))}</td>"
            f"<td class='n'>{_number(stats.get('mean_reward'), 4)}</td></tr>"
            for index, (name, stats) in enumerate(variants.items())
        )
        parts.append(
            f"<div><h3>{heading}</h3>{chart}<table><tr><th>variant</th><th>version</th><th>served</th>"
            f"<th>share</th><th>outcomes</th><th>mean reward</th></tr>{rows}</table></div>"
        )
    removed = _removed_arms(rollout)
    if removed and parts:  # (beside the arms that answer, under the same heading's table)
        parts[-1] = parts[-1].removesuffix("</div>") + removed + "</div>"
    elif removed:
        parts.append(f"<div>{removed}</div>")
    tests = _entries(rollout.get("tests"))
    if tests:
        control = next(iter(variants), "control")
        rows = "".join(_test_row(name, test) for name, test in tests.items())
        parts.append(
            f"<div><h3>Outcomes against the control, {_escape(control)}</h3><table><tr><th>variant</th>"
            f"<th>difference</th><th>test</th><th>p-value (fixed horizon)</th><th>always-valid p</th>"
            f"<th>verdict</th></tr>{rows}</table></div>"
        )
    interleaving = rollout.get("interleaving")
    if isinstance(interleaving, Mapping):
        pair = _pair(interleaving)  # (wins are of one pair of rankers: say which versions A and B are)
        labels = {"A": f"A (v{pair[0]})", "B": f"B (v{pair[1]})"} if pair else {}
        wins = [(labels.get(team, team), _count(interleaving.get(team))) for team in ("A", "B", "ties")]
        versions = f": A is version {_escape(pair[0])}, B version {_escape(pair[1])}" if pair else ""
        earlier = "".join(
            f"<p>Earlier, version {_escape(old[0])} (A) against version {_escape(old[1])} (B): A won "
            f"{_text(entry.get('A'))}, B {_text(entry.get('B'))}, ties {_text(entry.get('ties'))}, "
            f"over {_text(entry.get('queries'))} queries</p>"
            for entry in _listed(interleaving.get("earlier"))
            if isinstance(entry, Mapping) and (old := _pair(entry))
        )
        parts.append(
            f"<div><h3>Interleaving wins over {_text(interleaving.get('queries'))} queries{versions}</h3>"
            + _bars(wins, maximum=max([1.0] + [v for _, v in wins]), value_text=lambda v: f"{v:.0f}")
            + earlier
            + "</div>"
        )
    return f'<div class="grid">{"".join(parts)}</div>' if parts else ""


_REMOVED_ARMS_KEPT = (
    "Removed from the configuration by a reload: no new request goes to them. Their final numbers are kept, "
    "and a late outcome by request id of a request they served still counts in them, for an hour after the "
    "reload that removed them; then they are forgotten."
)
"""What the page says of the arms under ``removed_variants`` (the status has no time of removal to show)."""


def _removed_arms(rollout: Mapping[str, Any]) -> str:
    """The arms a reload removed (``removed_variants``), with their final numbers and how long they are kept:
    the page showed nothing of them, so an arm's served requests and outcomes vanished from it at a reload
    while late outcomes still credited them."""
    removed = _entries(rollout.get("removed_variants"))
    if not removed:
        return ""
    rows = "".join(
        f"<tr><td>{_escape(name)}{_badge('removed', 'warn')}</td><td class='n'>{_text(stats.get('version'))}</td>"
        f"<td class='n'>{_text(stats.get('served'))}</td><td class='n'>{_text(stats.get('outcomes'))}</td>"
        f"<td class='n'>{_number(stats.get('mean_reward'), 4)}</td></tr>"
        for name, stats in removed.items()
    )
    return (
        f"<h3>Removed arms</h3><p class='why'>{_escape(_REMOVED_ARMS_KEPT)}</p><table><tr><th>arm</th>"
        f"<th>version</th><th>served</th><th>outcomes</th><th>mean reward</th></tr>{rows}</table>"
    )


def _p_text(p_value: Any) -> str:
    if not isinstance(p_value, int | float) or math.isnan(p_value):
        return "—"
    return "&lt; 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def _test_row(name: str, test: Mapping[str, Any]) -> str:
    """One test's row. The verdict reads the always-valid p-value: the page is watched while a test runs, and
    a fixed-horizon p-value read that way shows p < 0.05 at some point in a third of tests with no
    difference at all; the always-valid one stays under 0.05 in at most 5 % of them."""
    p_value, always_valid = test.get("p_value"), test.get("always_valid_p_value")
    if not isinstance(p_value, int | float) or math.isnan(p_value):
        verdict = _badge("not enough data", "warn")
    elif not test.get("reliable"):
        verdict = _badge(
            "p < 0.05 but under 30 outcomes a side" if p_value < _SIGNIFICANT_P else "not significant", "warn"
        )
    elif isinstance(always_valid, int | float) and always_valid < _SIGNIFICANT_P:
        verdict = _badge(f"significant (always-valid p < {_SIGNIFICANT_P:g})", "ok")
    elif p_value < _SIGNIFICANT_P:
        verdict = _badge("not yet: only the fixed-horizon p < 0.05", "warn")
    else:
        verdict = _badge("not significant", "warn")
    p_text, always_valid_text = _p_text(p_value), _p_text(always_valid)
    difference = test.get("difference")
    sign = "+" if isinstance(difference, int | float) and difference > 0 else ""
    return (
        f"<tr><td>{_escape(name)}</td><td class='n'>{sign}{_number(difference, 4)}</td>"
        f"<td>{_text(test.get('test'))}</td><td class='n'>{p_text}</td><td class='n'>{always_valid_text}</td>"
        f"<td>{verdict}</td></tr>"
    )


def _shadow_block(shadow: Mapping[str, Any]) -> str:
    rows = []
    agreement = []
    for version, stats in shadow.items():
        if not isinstance(stats, Mapping):
            continue
        label = stats.get("label_agreement")
        if isinstance(label, int | float):
            agreement.append((f"v{version}", float(label)))
        dropped = sum(
            value
            for key in ("dropped_queue_full", "dropped_no_spare_capacity", "dropped_over_budget", "dropped_too_large")
            if isinstance(value := stats.get(key), int)
        )
        non_finite = stats.get("non_finite_diffs")
        # a comparison with NaN or infinity where the answering version had a number is the worst difference
        worst = "inf" if isinstance(non_finite, int) and non_finite > 0 else _number(stats.get("max_abs_diff"), 4)
        rows.append(
            f"<tr><td>v{_escape(str(version))}</td><td class='n'>{_text(stats.get('runs'))}</td>"
            f"<td class='n'>{_text(stats.get('errors'))}</td><td class='n'>{_text(dropped)}</td>"
            f"<td class='n'>{_text(stats.get('stopped_over_budget'))}</td>"
            f"<td class='n'>{_percent(label)}</td><td class='n'>{_number(stats.get('mean_max_abs_diff'), 4)}</td>"
            f"<td class='n'>{worst}</td><td class='n'>{_text(non_finite)}</td>"
            f"<td class='n'>{_text(stats.get('mismatched'))}</td></tr>"
        )
    chart = _bars(agreement, maximum=1.0, value_text=_percent) if agreement else ""
    return (
        "<h3>Shadow agreement with the answering version</h3>"
        + chart
        + "<table><tr><th>shadow</th><th>runs</th><th>errors</th><th>dropped</th><th>stopped</th>"
        "<th>label agreement</th><th>mean max |diff|</th><th>max |diff|</th><th>non-finite diffs</th>"
        "<th>answered in another form</th></tr>" + "".join(rows) + "</table>"
    )


def _version_charts(number: str, entry: Mapping[str, Any]) -> str:
    cells = []
    latency = entry.get("latency_ms")
    if isinstance(latency, Mapping) and latency.get("count"):
        cells.append(f"<div><h3>v{_escape(number)} latency (ms, log scale)</h3>{_latency_chart(latency)}</div>")
    batch = entry.get("batch_size")
    if isinstance(batch, Mapping) and batch.get("batches"):
        histogram = [(str(k), float(v)) for k, v in _mapping(batch.get("histogram")).items() if _finite(v)]
        cells.append(f"<div><h3>v{_escape(number)} batch sizes (rows per run)</h3>{_columns(histogram)}</div>")
    drift = entry.get("drift")
    if isinstance(drift, Mapping) and drift.get("features"):
        threshold = drift.get("psi_threshold")
        features = [
            (name, float(score["psi"]))
            for name, score in _entries(drift["features"]).items()
            if _finite(score.get("psi"))
        ]
        limit = float(threshold) if _finite(threshold) else None
        top = max([v for _, v in features] + [limit or 0.0, 1e-9])
        cells.append(
            f"<div><h3>v{_escape(number)} drift: PSI per feature in the last window "
            f"({_text(drift.get('windows'))} scored)"
            f"{_badge('drifting', 'bad') if drift.get('drifting') else ''}</h3>"
            + _bars(features, maximum=top * 1.1, threshold=limit, value_text=lambda v: f"{v:.3f}")
            + "</div>"
        )
    return f'<div class="grid">{"".join(cells)}</div>' if cells else ""


# -- charts --------------------------------------------------------------------------------------------------


def _bars(
    rows: Sequence[tuple[str, float]],
    *,
    maximum: float,
    value_text: Callable[[float], str],
    threshold: float | None = None,
) -> str:
    """Horizontal bars, one per labelled value; bars past ``threshold`` are red, with a dashed line at it."""
    label_w, bar_w, value_w, row_h = 170, 220, 70, 18
    width, height = label_w + bar_w + value_w, row_h * len(rows) + (14 if threshold is not None else 4)
    scale = bar_w / maximum if maximum > 0 else 0.0
    shapes = []
    for index, (label, value) in enumerate(rows):
        y = index * row_h + 2
        length = max(0.0, min(bar_w, value * scale)) if _finite(value) else 0.0
        color = "#c94c4c" if threshold is not None and value > threshold else _PALETTE[0]
        shapes.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_cut(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{row_h - 5}" fill="{color}" rx="2"/>'
            f'<text x="{label_w + length + 4:.1f}" y="{y + 12}">{_escape(value_text(value))}</text>'
        )
    if threshold is not None and scale:
        x = label_w + min(bar_w, threshold * scale)
        shapes.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 12}" stroke="#991b1b" stroke-dasharray="4 3"/>'
            f'<text x="{x:.1f}" y="{height - 2}" text-anchor="middle">threshold {threshold:g}</text>'
        )
    summary = "; ".join(f"{label}: {value_text(value)}" for label, value in rows)
    return _svg(width, height, summary, "".join(shapes))


def _columns(rows: Sequence[tuple[str, float]]) -> str:
    """Vertical bars over category labels (batch sizes)."""
    width, height, bottom = 460, 120, 18
    slot = (width - 10) / max(1, len(rows))
    top = max([value for _, value in rows] + [1.0])
    shapes = []
    for index, (label, value) in enumerate(rows):
        bar = (height - bottom - 14) * value / top
        x = 5 + index * slot
        shapes.append(
            f'<rect x="{x + slot * 0.15:.1f}" y="{height - bottom - bar:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{bar:.1f}" fill="{_PALETTE[2]}" rx="2"/>'
            f'<text x="{x + slot / 2:.1f}" y="{height - 4}" text-anchor="middle">{_cut(label)}</text>'
        )
        if value:
            shapes.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - bottom - bar - 3:.1f}" text-anchor="middle">'
                f"{value:.0f}</text>"
            )
    summary = "; ".join(f"{label} rows: {value:.0f} batches" for label, value in rows)
    return _svg(width, height, summary, "".join(shapes))


def _latency_chart(latency: Mapping[str, Any]) -> str:
    """A histogram on a log time axis, with the p50, p90 and p99 marked."""
    buckets = []
    for bucket in latency.get("histogram") or ():
        lower, upper, count = bucket if isinstance(bucket, list | tuple) and len(bucket) == 3 else (0, 0, 0)
        if _finite(lower) and _finite(count) and count > 0 and (upper is None or (_finite(upper) and upper > lower)):
            # the overflow bucket (no upper bound) is drawn one bucket wide
            buckets.append((float(lower), float(upper) if upper is not None else float(lower) * 1.09, float(count)))
    if not buckets:
        return '<p class="empty">No request yet.</p>'
    width, height, left, right, bottom = 460, 130, 8, 8, 30
    low = max(min(lower for lower, _, _ in buckets), buckets[0][1] / 1.1, 1e-3)
    high = max(upper for _, upper, _ in buckets)
    span = math.log10(high) - math.log10(low) or 1.0

    def x_of(ms: float) -> float:
        return left + (width - left - right) * (math.log10(max(ms, low)) - math.log10(low)) / span

    top = max(count for _, _, count in buckets)
    plot_h = height - bottom - 20
    axis_y = height - bottom
    shapes = [f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="#9ca3af"/>']
    for lower, upper, count in buckets:
        x0, x1 = x_of(lower), x_of(upper)
        bar = plot_h * count / top
        shapes.append(
            f'<rect x="{x0:.1f}" y="{height - bottom - bar:.1f}" width="{max(1.0, x1 - x0 - 0.5):.1f}" '
            f'height="{bar:.1f}" fill="{_PALETTE[0]}"/>'
        )
    for decade in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ms = 10.0**decade
        if low <= ms <= high:
            shapes.append(f'<text x="{x_of(ms):.1f}" y="{height - bottom + 12}" text-anchor="middle">{ms:g}</text>')
    for index, name in enumerate(("p50", "p90", "p99")):
        value = latency.get(name)
        if _finite(value):
            x = x_of(float(value))
            shapes.append(
                f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{height - bottom}" stroke="{_PALETTE[index + 1]}" '
                f'stroke-width="1.5" stroke-dasharray="3 2"/>'
                f'<text x="{x:.1f}" y="{9 + (index % 2) * 9}" text-anchor="middle" style="fill:{_PALETTE[index + 1]}">'
                f"{name}</text>"
            )
    shapes.append(
        f'<text x="{width - right}" y="{height - 2}" text-anchor="end">'
        f"p50 {_ms(latency.get('p50'))} · p90 {_ms(latency.get('p90'))} · p99 {_ms(latency.get('p99'))} · "
        f"{_text(latency.get('count'))} requests</text>"
    )
    summary = (
        f"latency of {latency.get('count')} requests: p50 {_ms(latency.get('p50'))}, p90 {_ms(latency.get('p90'))}, "
        f"p99 {_ms(latency.get('p99'))}"
    )
    return _svg(width, height, summary, "".join(shapes))


def _share_bar(shares: Sequence[tuple[str, float]]) -> str:
    """One 100 % bar split by share, colours matching the swatches in the table below it."""
    width, height = 460, 22
    total = sum(value for _, value in shares) or 1.0
    x = 0.0
    shapes = []
    for index, (label, value) in enumerate(shares):
        part = width * value / total
        shapes.append(
            f'<rect x="{x:.1f}" y="2" width="{part:.1f}" height="18" fill="{_PALETTE[index % len(_PALETTE)]}"/>'
        )
        if part > 60:
            shapes.append(
                f'<text x="{x + 5:.1f}" y="15" style="fill:#fff">{_cut(label, 14)} {value / total * 100:.0f}%</text>'
            )
        x += part
    summary = "; ".join(f"{label}: {value / total * 100:.1f}%" for label, value in shares)
    return _svg(width, height, summary, "".join(shapes))


def _svg(width: int, height: float, summary: str, shapes: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height:.0f}" '
        f'viewBox="0 0 {width} {height:.0f}"><title>{_escape(summary)}</title>{shapes}</svg>'
    )


# -- formatting ---------------------------------------------------------------------------------------------


_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)
"""Characters that reorder or hide the text around them: control characters (tab and newline kept), the
bidirectional marks, embeddings, overrides and isolates, and those that show nothing: the zero-width space, the
soft hyphen, the word joiner and invisible operators, the byte-order mark, interlinear annotation marks and the
tag characters (U+E0000-U+E007F, which spell text no one sees). A model's input names (drift features), a
remote server's error text and a control file's keys are written by others: an override (U+202E) in an error
message showed what followed it backwards, and a zero-width space made two different names look the same.
The zero-width joiner and non-joiner stay: scripts and emoji need them."""


def _escape(text: str) -> str:
    """``text`` as HTML text, each of :data:`_HIDDEN` shown as its escape (``\\u202e``, ``\\U000e0041``), not
    obeyed."""
    return escape(_HIDDEN.sub(_shown, text))


def _shown(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _entries(value: Any) -> dict[str, Mapping[str, Any]]:
    """The mapping-valued items of ``value`` (a status section such as versions or variants), keys as text."""
    return {str(key): entry for key, entry in _mapping(value).items() if isinstance(entry, Mapping)}


def _pair(interleaving: Mapping[str, Any]) -> tuple[str, str] | None:
    """The versions of rankers A and B that interleaving wins are of, as text (None: not two of them)."""
    pair = interleaving.get("rankers")
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return None
    return str(pair[0])[:_LABEL_CHARS], str(pair[1])[:_LABEL_CHARS]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _count(value: Any) -> float:
    return float(value) if _finite(value) else 0.0


def _text(value: Any) -> str:
    return "—" if value is None else _escape(str(value))


def _cut(label: str, limit: int = _LABEL_CHARS) -> str:
    return _escape(label if len(label) <= limit else label[: limit - 1] + "…")


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, digits: int = 3) -> str:
    if not _finite(value):
        return "—" if value is None else _escape(str(value))
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _ms(value: Any) -> str:
    return f"{value:.3g} ms" if _finite(value) else "—"


def _percent(value: Any) -> str:
    return f"{value * 100:.1f} %" if _finite(value) else "—"


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_escape(text)}</span>'


def _swatch(index: int) -> str:
    return f'<span class="swatch" style="background:{_PALETTE[index % len(_PALETTE)]}"></span>'
