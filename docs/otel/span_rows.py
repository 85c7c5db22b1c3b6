"""The finished spans of docs/otel/flask_check.py and django_check.py as JSON-ready rows, one helper for both."""

from __future__ import annotations

from typing import Any


def span_rows(spans: Any) -> list[dict[str, Any]]:
    """Each finished span: its name, kind, ids (hex), its parent's span id, the span ids it links to and its
    attributes."""
    return [
        {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": f"{span.context.trace_id:032x}",
            "span_id": f"{span.context.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
            "links": [f"{link.context.span_id:016x}" for link in span.links],
            "attributes": dict(span.attributes or {}),
        }
        for span in spans
    ]
