"""The scan of a large JSON answer for its outputs' names and shapes, made before the answer is parsed
(``inprocserve.v2._client_codec._scan_headers``): what it finds must be what the parse finds, whatever the
answer's strings hold, and it must take time in proportion to the answer's length."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inprocserve.v2._client_codec import _scan_headers

# Text that looks like the scan's keys from inside a string: a datum or key holding a tensor's header, keys
# ending in an escaped quote and "name" or "shape", backslashes before a closing quote.
TRICKY = ['{"name": "y", "shape": [1]}', 'a"name', 'note"shape', '"shape": [7]', "x\\", "name", "shape", "{", "]"]
texts = st.one_of(st.text(max_size=12), st.sampled_from(TRICKY))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), texts)
extra_values = st.one_of(scalars, st.lists(st.integers(0, 99), max_size=3), st.lists(texts, max_size=3))
extra_keys = texts.filter(lambda key: key not in ("name", "shape", "datatype", "data", "parameters"))


@st.composite
def answers(draw: Any) -> tuple[str, list[tuple[str, tuple[int, ...]]], bool]:
    """A valid answer as a server may write it, the (name, shape) of its outputs, and whether every output is
    written name first, then its shape, with no bracket in the members before its shape (the outputs the scan
    must find)."""
    outputs: list[dict[str, Any]] = []
    canonical = True
    for _ in range(draw(st.integers(1, 3))):
        name = draw(texts.filter(bool))
        shape = draw(st.lists(st.integers(0, 10**7), min_size=1, max_size=3))
        data = draw(st.lists(texts, max_size=4))
        members: list[tuple[str, Any]] = [("name", name), ("datatype", "BYTES"), ("shape", shape), ("data", data)]
        for extra in draw(st.dictionaries(extra_keys, extra_values, max_size=3)).items():
            members.insert(draw(st.integers(0, len(members))), extra)  # (before the name, between, after)
        if draw(st.integers(0, 3)) == 0:
            members = draw(st.permutations(members))
        keys = [key for key, _ in members]
        before_shape = json.dumps(dict(m for m in members[: keys.index("shape")] if m[0] != "name"))[1:-1]
        if keys.index("name") > keys.index("shape") or any(c in before_shape for c in "{}[]"):
            canonical = False  # (the scan's keys are found only with no bracket before them in the object)
        outputs.append(dict(members))
    document = {"model_name": draw(texts), "outputs": outputs, "parameters": {"note": draw(texts)}}
    indent = draw(st.sampled_from([None, 0, 2]))
    separators = draw(st.sampled_from([None, (",", ":"), (", ", " : ")]))
    text = json.dumps(document, indent=indent, separators=separators, ensure_ascii=draw(st.booleans()))
    return text, [(o["name"], tuple(o["shape"])) for o in outputs], canonical


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers())
def test_the_scan_finds_only_the_outputs_the_parse_finds(answer: tuple[str, list[Any], bool]) -> None:
    text, parsed, canonical = answer
    scanned = [(header.name, header.shape) for header in _scan_headers(text.encode())]
    assert all(found in parsed for found in scanned), (scanned, parsed)  # never a header the answer lacks
    if canonical:
        assert scanned == parsed
    event("every output where the scan must find it" if canonical else "some output the scan may miss")


def test_the_scan_of_an_object_of_repeated_names_takes_time_in_proportion_to_its_length() -> None:
    # Each "name" of an object was tried in turn, each with a search for "shape" to the object's end: 100 KB
    # of "name": "a", took the scan 4 s, 200 KB 22 s (the GIL held, no deadline able to end it), and the scan
    # runs on every JSON answer over 1 MiB.
    body = b'{"outputs": [{' + b'"name": "a", ' * 8000 + b'"datatype": "FP32"}]}'
    started = time.perf_counter()
    assert _scan_headers(body) == []
    assert time.perf_counter() - started < 0.5
