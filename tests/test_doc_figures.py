"""Every measured figure that README.md and the pages of docs/ quote beside a results file is in that results
file, so a reader can check it.

The project's rule is that a figure a document quotes comes from a file under ``benchmarks/results/`` (written
by ``make bench`` and the benchmark scripts). A later run overwrites its file, and the figures the prose still
quotes from the earlier run are then in no file at all: a reader who opens the cited file finds other numbers
and cannot tell a stale figure from a typo. An older run the prose still needs is kept under a dated name
(``coalescing-2026-12-01.md``, restored with ``git show COMMIT:benchmarks/results/coalescing.md``) and cited
by that name.

What is checked (exact matching of every number would be too strict for prose that compares runs):

* a *figure* is a number written with a thousands separator or a decimal point (``4,228``, ``0.87``); dates,
  version numbers and numbers inside code spans are not figures, nor are integers without a separator (too
  often a setting: 64 clients, 200 µs);
* in a sentence that cites a results file (``benchmarks/results/mem_pattern.md``, a raw output such as
  ``benchmarks/results/gpu_check-adhoc.txt``, `` `coalescing-spinning.md` ``,
  `` `coalescing*.md` ``), every figure must be in one of the files it cites; in the other sentences of a
  paragraph that cites one, in any results file;
* in a table, every figure must be in the files cited by the two paragraphs above it in its section (a table
  reproduces a results file) or by its own row, except in a column whose heading says it is not in a results
  file;
* "in a file" means: some number of the file's ``.md`` or ``.json`` equals the figure once rounded to the
  figure's decimals (``1.082`` is quoted as ``1.08``; a round ``44,000`` stands for 43,500-44,499), or, for a
  figure in ms, s or MB, a number of µs, ms or kB (``12821.0`` us quoted as ``12.82 ms``); a time per row
  (``4.4 µs ... per row``) may be the reciprocal of a rows/s figure; and a figure may be the ratio or the
  difference of two larger numbers its own sentence or table row quotes (``0.76x (5,356 against 7,005)``);
* a sentence that says its figures are "not in a results file" (a one-off or scratch measurement, the pages'
  way of saying so) is not checked.

Every path under ``benchmarks/results/`` a page names must match a file (``NOT_WRITTEN_YET`` lists the few a
page names before any run wrote them): a name with braces (``performance.{json,md}``) or a misspelt one matches
none, and the figures beside it would be held to nothing.

``NOT_MEASURED`` lists the phrases whose figures are not measurements (a setting, a target, a release,
arithmetic), each with its reason.

On the pages of ``EVERY_FIGURE_CITED`` (every page but those of ``NOT_EVERY_FIGURE_CITED``) a figure in a
paragraph that cites no results file is reported too, unless its sentence says it is not in a results file, it
stands in a table below a paragraph that says so or in a list item led by such a paragraph, or its sentence is on
``UNCITED`` (figures whose run could not be traced yet, each with its reason; none is now).

``READ_OFF`` lists the ranges of ratios a page reads off the points of a results file (inprocserve's req/s over
naive's at several points, every round over every round): they are not in the file as written, so a test
computes each from the file's points and checks the range is their smallest and largest.

What it cannot see: a stale figure that happens to equal some other number of the cited file once rounded
(two-digit ratios often do), and on the pages of ``NOT_EVERY_FIGURE_CITED``, figures in paragraphs that cite
no results file.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# Pages left out for now, each with its reason; every other page of docs/ is checked.
PENDING: dict[str, str] = {}  # page -> why it is left out for now (none is)
DOCUMENTS = [
    "README.md",
    *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in PENDING),
]

FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`]*`")
# A results file named in the prose: benchmarks/results/NAME.md, or `NAME.md` / `NAME*.md` in backticks
# (not docs/NAME.md, a page of the documentation).
CITATION = re.compile(r"(?:benchmarks/results/|(?<![/\w])`)([\w*.-]+?)\.(?:md|json|txt)\b")
NOT_FIGURES = re.compile(r"\d{4}-\d{2}-\d{2}|\d+(?:\.\d+){2,}|\d(?:\.\d+)?e-?\d+")
FIGURE = re.compile(r"(?<![\w.,/])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?![.,]?\d)")
NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])\d+(?:\.\d+)?")
UNIT = re.compile(r"(?:\s*[-\u2013]\s*[\d.,]+)?\s*(µs|us|ms|s|MB|kB)\b")
PER_ROW = re.compile(r"[\s-]*(?:[\d.]+\s*)?(?:µs|us)\b[^.;]{0,40}?per row")
SENTENCE_END = re.compile(r"(?<=[.;])\s+(?=[A-Z*(])")

# A sentence that says its figures are in no results file (a scratch or one-off measurement) is not checked.
UNRECORDED = re.compile(r"not in (?:a |any )?results? files?")
# Phrases next to a citation whose figures are not measurements: document -> {phrase: why}.
NOT_MEASURED: dict[str, dict[str, str]] = {
    "README.md": {
        "with Python 3.11 or newer": "a release of Python",
        "on Linux x86-64 with Python 3.11": "a release of Python",
        "runs them for 1.5 s": "how long `make test` runs each soak test, a setting",
        "at 10,000 and 2,000 examples": "hypothesis's example counts under `make soak`, settings",
        "the admin endpoints) at 1,000 (100)": "hypothesis's example counts of the HTTP fuzzing, settings",
        "(Python 3.11, numpy": "a release of Python",
        "cachetools 5.3, opentelemetry-api/sdk 1.31 (the API alone needs 1.30), onnx 1.15, openfeature-sdk 0.7,"
        " urllib3 2.3, pyarrow": "the oldest releases the packages claim",
        "Django 4.2, Flask": "the oldest release of Django the plug-in claims",
        "on Python 3.13 and 3.12 in": "releases of Python",
        "(Django 6 needs 3.12, say)": "releases of Django and Python",
        "Python 3.11, 3.12 or 3.13: the suite runs on 3.11": "releases of Python",
        "are from 3.11 only": "a release of Python",
        "(0.52b0 or later:": "the Prometheus exporter's oldest release that works",
        "urllib3 (2.3 or later)": "the remote extra's version requirement",
    },
    "docs/deployment.md": {
        "strings, 5,000 rows, a body over": "the size of a hostile body the test sends, a setting",
        "never removed on 3.11": "a release of Python",
        "kombu 5.7, redis-py 8.1": "releases of the software run",
    },
    "docs/operations.md": {
        "waiting at most 0.5 s for the lock": "the lock wait's bound, a setting",
        "a file can hold 80,000 such keys": "about how many short keys the 1 MiB file holds: arithmetic",
        "In Python 3.11 a": "a release of Python",
        "3.12 is not affected": "a release of Python",
        "On 3.11 with such a profiler": "a release of Python",
        "upgrade to Python 3.12": "a release of Python",
    },
    "docs/otel-instrumentation.md": {
        "(Python 3.11, pip 23.2)": "releases of the software resolved with",
        "0.66b1": "a release of the OpenTelemetry instrumentations",
        "0.66b2": "a release of the OpenTelemetry instrumentations",
    },
    "docs/protocol.md": {
        "(2.5 MB by default)": "Django's default of `DATA_UPLOAD_MAX_MEMORY_SIZE`, a setting",
    },
    "docs/repository.md": {
        "is float32's 0.1 for a float32 input": "an example bound",
        "after 8,000 distinct shapes": "the number of shapes the check sent, a setting",
        "at most 0.5 s for the file's lock": "the lock wait's bound, a setting",
        "(Python 3.11, numpy": "a release of Python",
        "opentelemetry 1.31, the dev extra's test tools and torch 2.13 beside them": "the oldest releases pinned",
        "and numpy 1.26 passed": "a release of numpy",
        "needs onnx 1.16": "a release of onnx",
        "(3,013 tests in": "the number of tests the suite held that day, a count",
    },
    "docs/rollouts.md": {
        "(0.01 % steps)": "the size of one of 10 000 buckets, a setting",
        "an int of 5,000 digits": "an example key",
        "0.07 % is 7 buckets": "an example canary percentage",
        "4 against 4.5": "example answers",
        "is above 0.01 a": "an example bound, a setting",
        "(not 0.0 over requests": "an example reward",
        "(1.0 for a conversion, 0.0 for none)": "example rewards",
        "< 0.05": "the significance level, a setting",
        "under 0.05": "the significance level, a setting",
        "(0.3 as three tenths of a success)": "an example reward",
    },
    "docs/batching.md": {
        "short of 0.90x the ceiling": "the benchmark's target for mlp-large at 64 clients, not a measurement",
        "mlp-large's 1,024 features": "the model's input width, a setting",
        "fixed cost per run is under 0.2 ms": "the rule's threshold, a setting",
        "a wait of 0.2 ms or longer": "the rule's threshold, a setting",
        "about 11.6 days": "1e6 s in days: arithmetic",
        "could not pass about 40,000-47,000 requests/s": "a second over 21-25 µs of CPU per request: arithmetic",
        "would need 49,000-67,000 requests/s": "0.40 of a 122,000-166,000 rows/s ceiling: arithmetic",
        "0.40x of it is about 91,000 requests/s": "0.40 of a 227,678 rows/s ceiling: arithmetic",
    },
    "docs/performance.md": {
        "4,096 by default": "the default of `max_request_rows`, a setting",
        "10,000 distinct such requests": "the cache's default `max_entries`, a setting",
        "10,000 answers of 256 KiB, 2.4 GiB in all": "10,000 answers of 4,096 rows of 16 float32s: arithmetic",
        "a model answering 1,024 floats per row": "the example model's output width, a setting",
        "a job of 60,000 rows": "the example job's size, a setting",
        "a backlog of 2,000 one-row messages": "the example's backlog, a setting",
        "keeps a run under 0.1 s": "the rule's threshold, a setting",
        "at 0.1 s per run": "the rule's threshold, a setting",
        "a 2,000-row batch": "the example batch's size, a setting",
        "checked with 200,000 rows": "the size of the input checked, a setting",
        "65,536 rows": "the size of the profiled input, a setting",
        "1,024 runs of 64 rows": "65,536 rows in runs of 64: arithmetic",
        "OpenTelemetry SDK 1.45": "a version of the machine's software",
        "past 4,096 queued records": "the queue's bound, a setting",
    },
    "docs/observability.md": {
        # Releases of opentelemetry-sdk the page names.
        "opentelemetry-sdk before 1.44": "a release of opentelemetry-sdk",
        "From 1.44 on": "a release of opentelemetry-sdk",
        "gunicorn 27.0, gevent 26.9, opentelemetry-sdk 1.45": "releases of the software checked",
        "opentelemetry-api 1.30 or later": "a release of opentelemetry-api",
        "instrumentation 0.66b2": "a release of the system-metrics instrumentation",
        "opentelemetry-sdk 1.45 costs about three times as much per metric record as 1.44": "releases",
        "opentelemetry-sdk 1.45 made each metric record about three times as costly as 1.44": "releases",
        "Since 1.45 the SDK": "a release of opentelemetry-sdk",
        "where 1.44 took a frozen set": "a release of opentelemetry-sdk",
        "a lock per record under 1.45": "a release of opentelemetry-sdk",
        "under 1.45 against nothing measurable under 1.44": "a release of opentelemetry-sdk",
        "figure under 1.45": "a release of opentelemetry-sdk",
        "with 1.45 it keeps": "a release of opentelemetry-sdk",
        "the SDK from 1.31 on": "a release of opentelemetry-sdk",
        "core tests on 1.31": "a release of opentelemetry-sdk",
        "0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001": "histogram bucket boundaries, a setting",
        "plus 0.1 %": "an alert's threshold, a setting",
        "alerts above 0.2 %": "an alert's threshold, a setting",
        "PSI above 0.2": "an alert's threshold, a setting",
        "(a window of 1,000 rows fills": "an example window's size, a setting",
        "past 32,768 rows, each feature keeps 32,768": "the reference's kept order statistics, a setting",
        "a reference of 30 rows reads about 0.31": "the formula just given for 10 bins: arithmetic",
        "of 50 rows about 0.2": "the formula just given for 10 bins: arithmetic",
        "about 3.5 % non-finite reaches the usual 0.2 (5 % reads 0.31, 10 % 0.70)": "the PSI of the non-finite"
        " bin at those shares, computed, and the default threshold",
        "(0.70 for 10 % of rows)": "the PSI of the non-finite bin at that share, computed",
        "an imputed mean, 37.2": "an example value",
        "a window of 1,000 rows is 1,000 rows": "an example window's size, a setting",
        "with a window of 1,000 copies 8,000 rows": "an example: 8 windows of 1,000 rows",
        "a request of 4,000 rows with": "an example request's size, a setting",
        "and a window of 1,000": "an example window's size, a setting",
        "under 0.05": "the significance level, a setting",
        "p < 0.05": "the significance level, a setting",
    },
    "docs/flask.md": {
        "Werkzeug before 3.0 (2.3, the oldest the plug-in takes)": "releases of Werkzeug",
        "one nested 100,000 deep": "the nesting depth of the body the example's test sends, a setting",
    },
    "docs/django.md": {
        "Tested with Django 4.2": "a release of Django",
        "Django 5.2 (": "a release of Django",
        "Python 3.11) and Django 6.1": "releases of Python and Django",
        "Python 3.12 and 3.13": "releases of Python",
        "Django 5.0 or later": "a release of Django",
        "Before Django 5.0": "a release of Django",
        "granian 2.8 with": "a release of granian",
        "past 2.5 MB": "Django's default of `FILE_UPLOAD_MAX_MEMORY_SIZE`, past which its ASGI handler spools a"
        " body to a file, a setting",
    },
    "docs/scaling.md": {
        "urllib3 2.3 or later": "the remote extra's version requirement, not a measurement",
        "MLServer 1.7": "a release of MLServer",
        "KServe 0.21": "a release of KServe",
        "every 65,536 text elements": "how often decoding checks the deadline, a setting",
        "in runs of 65,536": "how often parsing checks the deadline, a setting",
    },
}

# Pages whose figures in paragraphs that cite no results file are not checked yet, each with its reason.
NOT_EVERY_FIGURE_CITED: dict[str, str] = {}  # (none is)
# Pages where every figure must cite a results file, even in a paragraph that cites none (a figure there used
# to be held to nothing): its sentence (or the paragraphs above its table) cites one, says the figure is not in
# a results file, or the figure is not a measurement (``NOT_MEASURED``).
EVERY_FIGURE_CITED = set(DOCUMENTS) - set(NOT_EVERY_FIGURE_CITED)
# Sentences of those pages quoting ratios read off a checked table, or measurements whose results file could not
# be traced and whose text does not say they are one-off runs: document -> {phrase of the sentence: why}. Each
# of the latter is to be cited, marked as not in a results file, or removed.
UNCITED: dict[str, dict[str, str]] = {}  # (none is)


@cache
def points(name: str) -> list[dict[str, object]]:
    """The points of ``benchmarks/results/NAME.json``."""
    found: list[dict[str, object]] = json.loads((RESULTS / f"{name}.json").read_text())["points"]
    return found


def over_naive(names: tuple[str, ...], stack: str, model: str, connections: tuple[int, ...]) -> list[float]:
    """inprocserve's median req/s over the naive view's, at each point of the http_e2e files ``names``."""

    def median(point: dict[str, object], variant: str) -> float:
        rounds = point["rounds"]
        assert isinstance(rounds, dict)
        return statistics.median(round_["throughput"] for round_ in rounds[variant])

    return [
        median(point, "inprocserve") / median(point, "naive")
        for name in names
        for point in points(name)
        if (point["stack"], point["model"]) == (stack, model) and point["connections"] in connections
    ]


def round_by_round(name: str, threads: int, arrangement: str, against: str) -> list[float]:
    """Every round's req/s of one arrangement over every round's of another, at ``threads`` threads a worker,
    in a pinned_workers file."""

    def rounds(wanted: str) -> list[float]:
        (point,) = [p for p in points(name) if (p["threads"], p["arrangement"]) == (threads, wanted)]
        req_s = point["req_s"]
        assert isinstance(req_s, list)
        return req_s

    return [a / b for a, b in itertools.product(rounds(arrangement), rounds(against))]


# Ranges of ratios a page reads off the points of a results file (the ratio of two of its columns, over
# several of its rows) rather than quoting them: document -> {the range as the page writes it: its ratios}.
# The checker does not look for them in the file; the test computes them from its points, and each range must
# be their smallest and largest, rounded as written.
HTTP = ("http_e2e", "http_e2e-otel")
READ_OFF: dict[str, dict[str, Callable[[], list[float]]]] = {
    "docs/performance.md": {
        # inprocserve's req/s over naive's (benchmarks/results/http_e2e*.json), each point's median.
        "1.8-2.7\u00d7 the naive rate": lambda: [
            *over_naive(HTTP, "flask", "mlp-large", (8, 64)),
            *over_naive(HTTP, "django", "mlp-large", (8, 64)),
        ],
        "1.29-1.39\u00d7 naive without an SDK": lambda: over_naive(("http_e2e",), "django", "mlp-small", (1, 8, 64)),
        "1.25-1.64\u00d7 with one": lambda: over_naive(("http_e2e-otel",), "django", "mlp-small", (1, 8, 64)),
        "0.91-1.02\u00d7 naive without an SDK": lambda: over_naive(("http_e2e",), "flask", "mlp-small", (1, 8, 64)),
        "0.74-0.97\u00d7 with one": lambda: over_naive(("http_e2e-otel",), "flask", "mlp-small", (1, 8, 64)),
        "gunicorn 0.74-0.91\u00d7 naive with mlp-small": lambda: over_naive(HTTP, "flask", "mlp-small", (1,)),
        "0.82-0.91\u00d7 with mlp-large": lambda: over_naive(HTTP, "flask", "mlp-large", (1,)),
        "uvicorn 1.25-1.29\u00d7 with mlp-small": lambda: over_naive(HTTP, "django", "mlp-small", (1,)),
        "0.89-1.26\u00d7 with mlp-large": lambda: over_naive(HTTP, "django", "mlp-large", (1,)),
        # Every round over every round (benchmarks/results/pinned_workers*.json).
        "mlp-small 0.95-1.19x naive free": lambda: round_by_round("pinned_workers", 1, "free", "naive, free"),
        "1.10-1.33x pinned": lambda: round_by_round("pinned_workers", 1, "one core each", "naive, free"),
        "mlp-large 1.18-1.25x": lambda: round_by_round("pinned_workers-mlp-large", 1, "free", "naive, free"),
        "1.46-1.53x": lambda: round_by_round("pinned_workers-mlp-large", 1, "one core each", "naive, free"),
        "stays at 0.84-1.06x naive": lambda: round_by_round("pinned_workers", 8, "one core each", "naive, free"),
        "64, 2.2-2.7x": lambda: round_by_round("pinned_workers", 64, "one core each", "naive, free"),
        "0.98-1.32x the requests of both free": lambda: round_by_round("pinned_workers", 1, "one core each", "free"),
        "0.99-1.11x at 8": lambda: round_by_round("pinned_workers", 8, "one core each", "free"),
        "1.74-1.99x at 64": lambda: round_by_round("pinned_workers", 64, "one core each", "free"),
    },
}
RANGE = re.compile(r"(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)")


def rounds_to(value: float, figure: str) -> bool:
    """``value`` is ``figure`` once rounded to its decimals."""
    step = 10.0 ** -len(figure.partition(".")[2])
    return abs(value - float(figure)) <= step / 2 * (1 + 1e-9)


# A results file a page names by its path. The checker finds a citation's figures only in files its name
# matches: a name written with braces (`batch_scoring.{json,md}`) or misspelt names no file, and the figures
# beside it are held to nothing.
RESULTS_PATH = re.compile(r"benchmarks/results/([\w*.{},-]*[\w*}])")
# Results files a page names that no run has written yet: document -> {name: why}.
NOT_WRITTEN_YET: dict[str, dict[str, str]] = {}  # (none is)


def blocks(text: str) -> list[tuple[int, str]]:
    """The page's headings, paragraphs, list items and tables, each with its first line's number; fenced
    code is blanked so line numbers stay right."""
    text = FENCED.sub(lambda m: "\n" * m.group().count("\n"), text)
    found: list[tuple[int, str]] = []
    lines: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        opens = re.match(r"\s*(?:[*-] |\d+\. |#)", line) is not None
        is_row = line.lstrip().startswith("|")
        if lines and (not line.strip() or opens or is_row != lines[-1].lstrip().startswith("|")):
            found.append((start, "\n".join(lines)))
            lines = []
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
    if lines:
        found.append((start, "\n".join(lines)))
    return found


def cited(text: str) -> set[Path]:
    files: set[Path] = set()
    for name in CITATION.findall(text):
        files.update(p for p in RESULTS.glob(f"{name}.*") if p.suffix in {".md", ".json", ".txt"})
    return files


@cache
def numbers(path: Path) -> frozenset[float]:
    found = set()
    for text in re.findall(r"\d[\d,]*(?:\.\d+)?", path.read_text()):
        try:
            found.add(float(text.replace(",", "")))
        except ValueError:
            continue
    return frozenset(found)


def holds(files: set[Path], figure: str, *, unit: str, per_row: bool) -> bool:
    value = float(figure.replace(",", ""))
    decimals = len(figure.partition(".")[2])
    digits = figure.replace(",", "").partition(".")[0]
    step = 10.0**-decimals if decimals else 10.0 ** (len(digits) - len(digits.rstrip("0")))
    for path in files:
        for number in numbers(path):
            candidates = [number]
            if unit in {"ms", "s", "MB"}:  # a file's µs, ms or kB
                candidates.append(number / 1000)
            if unit in {"µs", "us", "kB"}:  # a file's ms or MB
                candidates.append(number * 1000)
            if per_row and number:  # a time per row: the reciprocal of a file's rows/s
                candidates.append(1e6 / number)
            # Half a unit of the figure's last digit either way: 34.65 is quoted as 34.7 (round() would
            # give 34.6, the binary 34.65 being a hair under it).
            if any(abs(candidate - value) <= step / 2 * (1 + 1e-9) for candidate in candidates):
                return True
    return False


def derived(figure: str, others: list[str]) -> bool:
    """``figure`` is the ratio or the difference of two numbers of its sentence (or table row), each at least
    twice it (``0.76x``: 5,356 against 7,005 requests/s; ``adds 13.2 µs``: 93.7 against 80.5)."""
    value = float(figure.replace(",", ""))
    decimals = len(figure.partition(".")[2])
    # Only from figures well above it: a ratio or a difference of the small ratios a sentence lists would
    # excuse almost any figure.
    values = [float(other.replace(",", "")) for other in others]
    values = [other for other in values if other >= 2 * value]
    return any(
        b and abs(result - value) <= 10.0**-decimals / 2 * (1 + 1e-9)
        for a in values
        for b in values
        for result in (a / b if b else 0.0, a - b)
    )


def pieces(block: str, files: set[Path], every: set[Path]) -> list[tuple[list[str], set[Path]]]:
    """What to check in a block: each sentence of a paragraph, or each row of a table (its cells, less those
    of a column whose heading says it is in no results file), with the files to find its figures in (for a
    row, those of the paragraphs above its table and those the row cites)."""
    if not block.lstrip().startswith("|"):
        # A sentence without a citation, in a paragraph with one, is held to every results file.
        anywhere = every if cited(block) else set()
        return [([sentence], cited(sentence) or anywhere) for sentence in SENTENCE_END.split(block)]
    rows = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in block.splitlines()]
    heading, body = rows[0], [row for row in rows[1:] if not re.fullmatch(r"[\s:|-]*", "|".join(row))]
    return [
        (
            [cell for cell, title in zip(row, heading, strict=False) if not UNRECORDED.search(title)],
            files | cited(" | ".join(row)),
        )
        for row in body
    ]


def unsupported(document: str, text: str | None = None, *, every_figure: bool | None = None) -> list[str]:
    """``document:line: figure ...`` for each figure of the page (or of ``text``) not in its results files, and
    with ``every_figure`` (by default, for the pages of ``EVERY_FIGURE_CITED``) each figure of a sentence or
    table that cites none."""
    if every_figure is None:
        every_figure = document in EVERY_FIGURE_CITED
    missing: list[str] = []
    above: list[set[Path]] = []  # the files each block of this section cites
    unrecorded: list[bool] = []  # whether each block of this section says it is in no results file
    led = False  # whether the paragraph that leads the list items below says they are in no results file
    every = {p for p in RESULTS.iterdir() if p.suffix in {".md", ".json", ".txt"}}
    page = (ROOT / document).read_text() if text is None else text
    for line, block in blocks(page):
        if block.startswith("#"):
            above, unrecorded, led = [], [], False
            continue
        is_table = block.lstrip().startswith("|")
        is_item = re.match(r"\s*(?:[*-] |\d+\. )", block) is not None
        for texts, files in pieces(block, set().union(*above[-2:]) if is_table else set(), every):
            # Spaces made one, so that a phrase broken across lines is still found.
            flat = " ".join(" | ".join(texts).split())
            if not (files or every_figure) or UNRECORDED.search(flat):
                continue
            if (
                not files
                and (
                    any(phrase in flat for phrase in UNCITED.get(document, {}))
                    # A table below a paragraph that says its runs are in no results file.
                    or (is_table and any(unrecorded[-2:]))
                    # A list item below a paragraph that says so.
                    or (is_item and led)
                )
            ):
                continue
            prose = NOT_FIGURES.sub(" ", CODE.sub(" ", flat))
            for phrase in [*NOT_MEASURED.get(document, {}), *READ_OFF.get(document, {})]:
                prose = prose.replace(phrase, " ")
            figures = [(match.group(1), match.end()) for match in FIGURE.finditer(prose)]
            for figure, end in figures:
                unit = UNIT.match(prose, end)
                per_row = PER_ROW.match(prose, end) is not None
                if files and holds(files, figure, unit=unit.group(1) if unit else "", per_row=per_row):
                    continue
                if derived(figure, NUMBER.findall(prose)):
                    continue
                if not files:
                    missing.append(f"{document}:{line}: {figure} cites no results file")
                    continue
                names = ", ".join(sorted(p.name for p in files if p.suffix in {".md", ".txt"}))
                where = "any results file" if files == every else f"none of {names}"
                missing.append(f"{document}:{line}: {figure} is in {where}")
        above.append(set() if is_table else cited(block))
        unrecorded.append(not is_table and not cited(block) and UNRECORDED.search(" ".join(block.split())) is not None)
        if not (is_item or is_table):
            led = unrecorded[-1]
    return missing


def test_the_checker_finds_a_figure_missing_from_the_file_it_cites() -> None:
    assert blocks("a\nb\n\n| x |\n| 1 |\n* c\n") == [(1, "a\nb"), (4, "| x |\n| 1 |"), (6, "* c")]
    assert cited("in `benchmarks/results/mem_pattern.md` and `coalescing*.md`, not docs/performance.md") == {
        *RESULTS.glob("mem_pattern.*"),
        *(p for p in RESULTS.glob("coalescing*.*") if p.suffix in {".md", ".json"}),
    }
    mem_pattern = {RESULTS / "mem_pattern.md"}
    assert holds(mem_pattern, "1.08", unit="", per_row=False)  # 1.082
    assert holds(mem_pattern, "12.82", unit="ms", per_row=False)  # 12821.0 us
    assert holds(mem_pattern, "20.3", unit="MB", per_row=False)  # 20272 kB
    assert not holds(mem_pattern, "20.3", unit="", per_row=False)
    assert not holds(mem_pattern, "7.3", unit="MB", per_row=False)
    assert not holds(mem_pattern, "1.42", unit="", per_row=False)


@pytest.mark.parametrize(
    ("text", "stale"),
    [
        # The hand-off floor of 2026-12-01, cited to the file the run of 2026-12-06 overwrote.
        ("The floor was 58,788 round trips/s at 64 threads (`benchmarks/results/coalescing.md`).", "58,788"),
        # A table's figure from an earlier run than the file the paragraph above it cites.
        (
            "Measured (`benchmarks/results/direct_lanes.md`):\n\n| N | slowest ms |\n|---:|---:|\n"
            "| 8 | 2,000.7 (2,000.8) |",
            "2,000.8",
        ),
        # A figure of a run the cited file never held.
        ("In three runs every case lay within 0.87 to 1.10 (`benchmarks/results/mem_pattern.md`).", "0.87"),
        # A figure missing from a raw output (.txt) its sentence cites.
        ("With I/O binding on it gave 0.57x (benchmarks/results/gpu_check-adhoc.txt).", "0.57"),
        # A unit changes only what a figure with that unit may stand for.
        ("A record took 20.3 (`benchmarks/results/mem_pattern.md`).", "20.3"),
        # A table's row that cites a results file, below no paragraph that cites one.
        ("| variant | how |\n|---|---|\n| sparse | it shrank 1.42x (`benchmarks/results/mem_pattern.md`) |", "1.42"),
    ],
)
def test_a_figure_missing_from_the_file_its_sentence_or_table_cites_is_reported(text: str, stale: str) -> None:
    missing = unsupported("page.md", text)
    assert [entry.split(": ")[1].split(" is in ")[0] for entry in missing] == [stale], missing


def test_a_table_row_is_held_to_the_file_it_cites() -> None:
    table = "| case | time |\n|---|---|\n| a | 12.82 ms (`benchmarks/results/mem_pattern.md`) |\n| b | 1.42 ms |\n"
    assert unsupported("docs/performance.md", table, every_figure=True) == [
        "docs/performance.md:1: 1.42 cites no results file"
    ]


def test_figures_said_to_be_in_no_results_file_are_not_reported() -> None:
    text = "In three runs (not in a results file) every case lay within 0.87 (`benchmarks/results/mem_pattern.md`)."
    assert unsupported("page.md", text) == []
    table = (
        "Measured (`benchmarks/results/direct_lanes.md`):\n\n"
        "| N | earlier run (not in a results file) | slowest ms |\n|---:|---:|---:|\n| 8 | 1.23 | 2,000.7 |"
    )
    assert unsupported("page.md", table) == []


def test_figures_in_a_paragraph_citing_no_results_file_are_reported_on_the_measured_pages() -> None:
    text = (
        "A lone caller made 1,234 req/s on the quiet host.\n\n"
        "Measured once (a scratch run, not in a\nresults file): 5.67 ms.\n\n"
        "Measured on 2026-12-05, the runs not in a results file:\n\n| N | req/s |\n|---:|---:|\n| 1 | 8,910.5 |\n\n"
        "Measured again:\n\n| N | req/s |\n|---:|---:|\n| 1 | 7,654.3 |\n\n"
        "Measured on 2026-12-04, the runs not in a results file:\n\n- **SIGHUP.** 8,559 requests.\n"
        "- **SIGTERM.** 3,217\n  requests.\n\nMeasured again:\n\n- 2,345 requests.\n\n"
        "Up to 4,096 rows, 4,096 by default, took 2.5 ms in `benchmarks/results/mem_pattern.md`.\n"
    )
    assert unsupported("docs/performance.md", text, every_figure=True) == [
        "docs/performance.md:1: 1,234 cites no results file",
        "docs/performance.md:14: 7,654.3 cites no results file",
        "docs/performance.md:26: 2,345 cites no results file",
        "docs/performance.md:28: 4,096 is in none of mem_pattern.md",
        "docs/performance.md:28: 2.5 is in none of mem_pattern.md",
    ]
    # Elsewhere only the figures beside a citation are held to a file.
    assert unsupported("page.md", text) == [
        "page.md:28: 4,096 is in none of mem_pattern.md",
        "page.md:28: 4,096 is in none of mem_pattern.md",
        "page.md:28: 2.5 is in none of mem_pattern.md",
    ]
    assert "docs/performance.md" in EVERY_FIGURE_CITED


def test_every_allow_listed_phrase_is_still_on_its_page() -> None:
    assert EVERY_FIGURE_CITED <= set(DOCUMENTS)
    for allowed in (NOT_MEASURED, UNCITED, READ_OFF):
        for document, phrases in allowed.items():
            text = " ".join((ROOT / document).read_text().split())
            for phrase in phrases:
                assert phrase in text, f"{phrase!r} is no longer in {document}: drop its entry"


def test_every_page_is_checked_or_left_out_with_a_reason() -> None:
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert set(PENDING) <= pages, "a page left out no longer exists: drop its entry"
    assert pages - set(PENDING) <= set(DOCUMENTS)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_figure_next_to_a_results_file_is_in_that_file(document: str) -> None:
    missing = unsupported(document)
    assert missing == [], "\n".join(missing)


@pytest.mark.parametrize(
    ("document", "written"), [(document, written) for document, ranges in READ_OFF.items() for written in ranges]
)
def test_every_range_read_off_a_results_file_is_that_of_its_points(document: str, written: str) -> None:
    found = RANGE.search(written)
    assert found is not None, f"{written!r} writes no range"
    ratios = READ_OFF[document][written]()
    assert ratios, f"{written!r}: its points are in no results file"
    low, high = found.groups()
    assert rounds_to(min(ratios), low) and rounds_to(max(ratios), high), (
        f"{document} writes {written!r}; its points give {min(ratios):.3f}-{max(ratios):.3f}"
    )


def unnamed(document: str, text: str | None = None) -> list[str]:
    """``document:line: NAME names no results file`` for each path under benchmarks/results/ that matches no
    file (outside fenced code)."""
    page = (ROOT / document).read_text() if text is None else text
    page = FENCED.sub(lambda m: "\n" * m.group().count("\n"), page)
    missing = []
    for number, line in enumerate(page.splitlines(), 1):
        for name in RESULTS_PATH.findall(line):
            if name in NOT_WRITTEN_YET.get(document, {}) or any(RESULTS.glob(name)):
                continue
            missing.append(f"{document}:{number}: benchmarks/results/{name} names no results file")
    return missing


def test_a_results_path_that_names_no_file_is_reported() -> None:
    text = (
        "Results in `benchmarks/results/batch_scoring.{json,md}` and benchmarks/results/mem_pattern.md.\n"
        "See [it](../benchmarks/results/pruning.md), `benchmarks/results/pinned_workers*.md` and"
        " benchmarks/results/telemetry_profile-1.44.0.md; the folder benchmarks/results/ holds them."
    )
    assert unnamed("page.md", text) == [
        "page.md:1: benchmarks/results/batch_scoring.{json,md} names no results file",
        "page.md:2: benchmarks/results/telemetry_profile-1.44.0.md names no results file",
    ]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_results_file_a_page_names_by_its_path_exists(document: str) -> None:
    missing = unnamed(document)
    assert missing == [], "\n".join(missing)


def test_every_results_file_not_written_yet_is_still_named_and_still_missing() -> None:
    for document, names in NOT_WRITTEN_YET.items():
        text = (ROOT / document).read_text()
        for name in names:
            assert f"benchmarks/results/{name}" in text, f"{document} no longer names {name}: drop its entry"
            assert not any(RESULTS.glob(name)), f"{name} exists now: drop its entry in NOT_WRITTEN_YET"
