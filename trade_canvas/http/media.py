"""Request body reading with a size cap, and the JSON codec used for every response."""

from __future__ import annotations

import re
from typing import Any

import falcon
import falcon.media
import orjson

from trade_canvas.http.errors import DetailError

MAX_BODY_BYTES = 1024 * 1024
MAX_QUERY_INT = 2**63 - 1  # what both stores' 64-bit integer columns hold
_INTEGER_RE = re.compile(r"-?[0-9]{1,19}")

JSON_HANDLER = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)


def read_json_object(req: falcon.Request) -> dict[str, Any]:
    """Return the request body as a JSON object.

    The body must be ``application/json``, sent with a Content-Length or chunked, and arrive
    whole: a body that ends before its Content-Length is refused, never processed.

    Raises:
        DetailError: 415 another content type, 413 over 1 MiB, 400 for a body that is cut
            short or is not a JSON object.
    """
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise _too_large()
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != falcon.MEDIA_JSON:
        raise DetailError(415, "request body must be application/json")
    raw = _read_body(req)
    if not raw:
        raise DetailError(400, "request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DetailError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise DetailError(400, "request body must be a JSON object")
    return body


def _too_large() -> DetailError:
    return DetailError(413, f"request body larger than {MAX_BODY_BYTES} bytes")


def _read_body(req: falcon.Request) -> bytes:
    expected = req.content_length
    if expected is None:
        # Chunked: gunicorn decodes the chunks and ends the stream at the last one (it says so
        # with wsgi.input_terminated); Falcon's bounded_stream would read nothing here.
        chunked = "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
        if not chunked or not req.env.get("wsgi.input_terminated"):
            return b""
        raw = req.stream.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large()
        return raw
    raw = req.bounded_stream.read(expected)
    if len(raw) < expected:
        raise DetailError(400, f"request body ended after {len(raw)} of {expected} bytes "
                               "(Content-Length)")
    return raw


def query_int(
    req: falcon.Request, name: str, *, default: int | None, minimum: int,
    maximum: int = MAX_QUERY_INT,
) -> int | None:
    """Read an optional integer query parameter within bounds (422 otherwise).

    Only ASCII digits with an optional minus sign are integers here (``int`` would also take
    ``1_0``, blanks and other scripts' digits).
    """
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    problem = f"{name} must be an integer in {minimum}..{maximum}"
    if _INTEGER_RE.fullmatch(raw) is None:
        raise DetailError(422, problem)
    value = int(raw)
    if not minimum <= value <= maximum:
        raise DetailError(422, problem)
    return value


def query_required(req: falcon.Request, name: str) -> str:
    """Read a required, non-empty query parameter (422 otherwise)."""
    raw = req.get_param(name)
    if raw is None or not raw.strip():
        raise DetailError(422, f"{name} is required")
    return raw


def query_bool(req: falcon.Request, name: str, default: bool) -> bool:
    """Read a boolean query parameter: 1/0, true/false, yes/no, on/off (422 otherwise)."""
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise DetailError(422, f"{name} must be a boolean")


def query_float(req: falcon.Request, name: str, *, default: float, minimum: float, maximum: float) -> float:
    """Read an optional finite number query parameter within bounds (422 otherwise)."""
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not minimum <= value <= maximum:  # also rejects nan
        raise DetailError(422, f"{name} must be a number in {minimum:g}..{maximum:g}")
    return value
