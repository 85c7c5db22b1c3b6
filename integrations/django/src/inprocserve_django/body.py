"""Request bodies as a WSGI server delivers them, for the plug-in's own views (the protocol's and the admin
endpoints').

Django's WSGI request reads ``CONTENT_LENGTH`` bytes, so a body sent without that header (chunked) reads as
empty, and one whose header is no byte count too. A WSGI server that ends the input itself
(``wsgi.input_terminated``, as gunicorn and werkzeug do for chunked requests) is read to its end here;
otherwise a chunked body is refused, saying why, rather than taken for an empty one (a request with neither a
length nor chunked framing has an empty body, as HTTP has it).
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings as django_settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from inprocserve import InvalidInputError, web

__all__ = ["LengthRequired", "body_reader", "whole_body"]

_READ_CHUNK = 1 << 16


class LengthRequired(Exception):
    """The body's length is unknown and the WSGI server cannot say where it ends (answered 411)."""


def body_reader(request: HttpRequest) -> Callable[[int], bytes]:
    """How to read the request body, in pieces: a read of a body with a ``Content-Length`` (Django's), of one
    the WSGI server ends itself, or of none (an ASGI request, which Django spools whole before the view); an
    empty one where the request has neither a length nor chunked framing (HTTP's empty body).
    A client gone mid-upload, or broken chunked framing, raises :class:`~inprocserve.InvalidInputError` (a
    400, not a 500); a ``Content-Length`` that is no byte count too, and a body of unknown end
    :class:`LengthRequired`, both when read."""
    environ = request.META
    stream = environ.get("wsgi.input")
    read = web.body_reader(request.read)
    if stream is None:  # ASGI
        return read
    text = _declared_length(request)
    if text:  # (an empty or blank CONTENT_LENGTH is no header: some WSGI servers set "" for a chunked body)
        if text.isascii() and text.isdigit():
            return read

        def refuse_length(size: int) -> bytes:
            raise InvalidInputError(f"Content-Length {text[:40]!r} is not a number of bytes; send the body's length")

        return refuse_length
    if environ.get("wsgi.input_terminated"):
        return web.body_reader(stream.read)
    if "HTTP_TRANSFER_ENCODING" not in environ:  # HTTP's empty body: neither a length nor chunked
        # (it was a 411 saying the server cannot end a chunked body, which none was; the Flask plug-in, reading it
        # as empty, says so, as web.body_end_unknown has it)
        return _no_body

    def length_required(size: int) -> bytes:
        raise LengthRequired(web.LENGTH_REQUIRED)

    return length_required


def whole_body(request: HttpRequest) -> bytes:
    """The whole body of a small request (an admin action's JSON): ``request.body`` where Django can read it
    (a ``Content-Length``, no body at all, or ASGI), else :func:`body_reader`'s, under the same cap
    (``DATA_UPLOAD_MAX_MEMORY_SIZE``). ``request.body`` of a chunked request is empty: the action ran as if no
    body was sent (a switch refused as having no version, any text taken for ``{}``).

    Raises:
        RequestDataTooBig: the body is over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (Django answers 400).
        InvalidInputError, LengthRequired: as :func:`body_reader` reads; or the body ended before its
            ``Content-Length`` (see :func:`inprocserve.web.body_cut_short`).
    """
    text = _declared_length(request)
    no_body = not text and "HTTP_TRANSFER_ENCODING" not in request.META  # (HTTP's empty body)
    declared = text.isascii() and text.isdigit()
    if no_body and request.META.get("wsgi.input") is not None:
        # (request.body reads int(CONTENT_LENGTH), which fails for a blank one, " ": a ValueError, a 500)
        return b""
    if request.META.get("wsgi.input") is None or no_body or declared:
        whole: bytes = request.body
        cut_short = web.body_cut_short(len(whole), int(text)) if declared else None
        if cut_short is not None:
            raise cut_short
        return whole
    read = body_reader(request)
    limit: int | None = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    chunks: list[bytes] = []
    total = 0
    while chunk := read(_READ_CHUNK):  # bounded: each pass reads at least one byte, and stops past the limit
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total > limit:
            raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
    return b"".join(chunks)


def _no_body(size: int) -> bytes:
    return b""


def _declared_length(request: HttpRequest) -> str:
    declared = request.META.get("CONTENT_LENGTH")
    return "" if declared is None else str(declared).strip()
