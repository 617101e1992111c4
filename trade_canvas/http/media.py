"""Request body reading with a size cap, and the JSON codec used for every response."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.media
import orjson

from trade_canvas.http.errors import DetailError

MAX_BODY_BYTES = 1024 * 1024

JSON_HANDLER = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)


def read_json_object(req: falcon.Request) -> dict[str, Any]:
    """Return the request body as a JSON object.

    Raises:
        DetailError: 413 over 1 MiB, 400 for a body that is not a JSON object.
    """
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise DetailError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    raw = req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise DetailError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    if not raw:
        raise DetailError(400, "request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DetailError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise DetailError(400, "request body must be a JSON object")
    return body


def query_int(
    req: falcon.Request, name: str, *, default: int | None, minimum: int, maximum: int | None = None
) -> int | None:
    """Read an optional integer query parameter within bounds (422 otherwise)."""
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    try:
        value = int(raw)
    except ValueError:
        raise DetailError(422, f"{name} must be an integer {bounds}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise DetailError(422, f"{name} must be an integer {bounds}")
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
