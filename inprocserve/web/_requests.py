"""What an integration reads from a request: its tokens (``Authorization``), its headers (in a WSGI environ)
and its body, each failure a client's error rather than a 500."""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any

from .._config_checks import shown
from .._errors import ConfigurationError, InprocserveError, InvalidInputError

# -- tokens ----------------------------------------------------------------------------------------------


def check_token(authorization: str | None, token: str | None, *, basic: bool = False) -> bool:
    """Whether an ``Authorization`` header carries ``token``, compared in constant time.

    Accepts ``Bearer <token>``, and with ``basic=True`` also HTTP Basic credentials whose password is the
    token (any user name), for a person in a browser. Keep ``basic`` off for endpoints that change
    state: a browser resends Basic credentials on its own, which would let another site trigger them.
    Without a token (``None``, empty or blank) nothing is accepted. The configured token is stripped of
    surrounding whitespace, as the supplied one is (a token read from a file often ends in a newline).
    Configure ASCII tokens (:func:`token_problem`): HTTP headers carry no other text reliably.
    """
    if not isinstance(token, str) or not token.strip():
        return False
    # (surrogatepass: a lone surrogate, which no header carries but a caller's str may, raised UnicodeEncodeError)
    return hmac.compare_digest(
        _supplied_token(authorization or "", basic=basic), token.strip().encode(errors="surrogatepass")
    )


def token_problem(token: object) -> str | None:
    """What is wrong with a configured token (``None`` for a token that is fine, or for no token): not a
    string, blank, or not printable ASCII (a header cannot carry other text reliably, so it would never match).
    The plug-ins refuse such a token at start-up.

    A number says how it became one: Flask's ``app.config.from_prefixed_env`` reads each ``FLASK_*`` value as
    JSON where it can, so a token of digits in the environment arrives as an int (or a float), and the refusal
    "must be a string, got int" left its owner looking for the code that made it one."""
    if token is None or token == "":
        return None
    if isinstance(token, int | float) and not isinstance(token, bool):
        return (
            f"must be a string, got {type(token).__name__}: a value of digits read from the environment as JSON "
            "becomes a number (Flask's app.config.from_prefixed_env reads each FLASK_* variable so); keep it a "
            "string by quoting it as JSON in the environment ('\"1234...\"', the double quotes included), or by "
            "setting the key from os.environ directly, after from_prefixed_env"
        )
    if not isinstance(token, str):
        return f"must be a string, got {type(token).__name__}"
    stripped = token.strip()
    if not stripped:
        return "is blank"
    if not stripped.isascii() or not stripped.isprintable():
        return "must be printable ASCII (an HTTP header cannot carry other text reliably, so it would never match)"
    return None


def _supplied_token(authorization: str, *, basic: bool) -> bytes:
    """The token in a ``Bearer`` header, or the password of ``Basic`` credentials; empty if neither."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode(errors="surrogatepass")
    if basic and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except ValueError:  # binascii.Error, UnicodeDecodeError, and text that is not ASCII: no credentials
            # (a WSGI server hands a header's bytes on as Latin-1 text: "Basic \xff" failed in b64decode, a 500)
            return b""
        return decoded.partition(":")[2].encode()
    return b""


# -- request headers -------------------------------------------------------------------------------------


def environ_key(header: str | None) -> str | None:
    """Where a WSGI server (and Django, in ``request.META``) keeps request header ``header``: what werkzeug's
    and Django's ``request.headers`` read, without the mapping they build per request. ``None`` for no header
    (a header setting of ``None`` or ``""``: that header is not read).

    Raises:
        ConfigurationError: ``header`` is neither a header's name nor ``None`` (see
            :func:`header_setting_problem`).
    """
    problem = header_setting_problem(header)
    if problem is not None:
        raise ConfigurationError(f"a header setting {problem}")
    if header is None or header == "":
        return None
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP field name (RFC 9110's token): no request header has any other name."""


def header_setting_problem(value: object) -> str | None:
    """What is wrong with a setting that names the request header to read (the user id, the deadline), as
    "must be ..." or "is ...: ..."; ``None`` for a header's name, or for ``None`` and ``""`` (not read).

    A name no request header has is never read, and says nothing: the user id setting written as the header's
    key in a WSGI environ (``"HTTP_X_USER_ID"``, the form Django's own ``CSRF_HEADER_NAME`` takes) left every
    request without a user, so canary and A/B assignment stopped being sticky per user. The plug-ins refuse
    such a setting at start-up (Flask's ``init_app``, Django's system check ``inprocserve.E009``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):  # (0, [] and the like too: only None and "" mean "not read")
        return f"must be a header name or None, got {shown(value)}"
    if value.upper().startswith("HTTP_"):
        header = value[len("HTTP_") :].replace("_", "-").title()
        return (
            f"is {shown(value)}, the header's key in a WSGI environ (Django's request.META), not its name "
            f"({shown(header)}?): it is never read"
        )
    if not _HEADER_NAME.fullmatch(value):
        return (
            f"is {shown(value)}, which no request header is named (letters, digits and !#$%&'*+-.^_`|~ only): "
            "it is never read"
        )
    return None


LENGTH_REQUIRED = (
    "send a Content-Length header: this WSGI server does not mark where a chunked request body ends "
    "(wsgi.input_terminated), so the body cannot be read; run it behind a proxy that buffers requests, or under a "
    "server that ends chunked input (gunicorn does)"
)
"""What a client is told (with a 411) when its body's end cannot be found: see :func:`body_end_unknown`."""


def body_end_unknown(environ: Mapping[str, Any]) -> bool:
    """Whether a WSGI request carries a body whose end the application cannot find: sent without a
    ``Content-Length`` (chunked), to a server that does not end the input itself (``wsgi.input_terminated``;
    uWSGI does not, gunicorn and werkzeug do). werkzeug and Django read such a body as empty, so it was taken
    for none: an admin action's ``{"version": 2}`` refused as having no version, a protocol request as
    malformed JSON. Answer it 411 with :data:`LENGTH_REQUIRED`."""
    length = environ.get("CONTENT_LENGTH")
    return (
        not (length is not None and str(length).strip())
        and "HTTP_TRANSFER_ENCODING" in environ
        and not environ.get("wsgi.input_terminated")
    )


def body_cut_short(received: int, declared: int | None) -> InvalidInputError | None:
    """The error for a body that ended after ``received`` bytes, before the ``declared`` its
    ``Content-Length`` gave, or ``None`` if it did not. A WSGI server (gunicorn) ends the body early, without
    an error, when the client stops sending: the part read was refused as malformed JSON, blaming what was
    sent, or (a complete JSON object in the part) acted on as if whole."""
    if declared is None or received >= declared:
        return None
    return InvalidInputError(
        f"the request body ended after {received} bytes, before the {declared} its Content-Length declares: the "
        "client stopped sending mid-upload; send the whole body, with its length"
    )


def body_reader(
    read: Callable[[int], bytes], *, passing: tuple[type[BaseException], ...] = ()
) -> Callable[[int], bytes]:
    """``read`` (a request body stream's, such as ``request.stream.read``) raising
    :class:`~inprocserve.InvalidInputError` when the body cannot be read to its end: a client that went away
    mid-upload, or chunked framing that is no chunked framing. The WSGI server raises those from the
    application's ``read`` (gunicorn's ``NoMoreData``, ``InvalidChunkSize``; Django's ``UnreadablePostError``),
    so they were a 500 and an error logged with its traceback for what a client did.

    :class:`~inprocserve.InprocserveError` raised by ``read`` itself passes unchanged, and so do the errors in
    ``passing``: those the framework answers itself (werkzeug's ``HTTPException``, such as the 413 of a body
    over Flask's ``MAX_CONTENT_LENGTH``)."""

    passed: tuple[type[BaseException], ...] = (InprocserveError, *passing)

    def checked_read(size: int) -> bytes:
        try:
            return read(size)
        except passed:
            raise
        except Exception as exc:  # anything else the server's body stream raises: the request's body is broken
            raise InvalidInputError(
                f"the request body cannot be read to its end ({type(exc).__name__}: {str(exc)[:100]}): the client "
                "went away mid-upload, or its chunked transfer encoding is malformed; send the request again"
            ) from exc

    return checked_read
