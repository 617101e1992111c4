"""The one table from error class to HTTP status; every error body is ``{"detail": ...}``."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import orjson
import pykka

from trade_canvas.errors import (
    CapacityExceeded,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    RequestTimeout,
    TradeCanvasError,
    Unavailable,
    UpstreamError,
)

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInput, 422),
    (RequestTimeout, 408),
    (NotFound, 404),
    (Conflict, 409),
    (CapacityExceeded, 429),
    (Unavailable, 503),
    (UpstreamError, 502),
    (ConfigError, 500),
    (pykka.Timeout, 503),
    (pykka.ActorDeadError, 503),
)


class DetailError(falcon.HTTPError):
    """An HTTP error whose body is ``{"detail": detail}`` (detail may be a string or object)."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(falcon.code_to_http_status(status), headers=headers)
        self.detail = detail


def _detail_of(exc: falcon.HTTPError) -> Any:
    detail = getattr(exc, "detail", None)
    if detail is not None:
        return detail
    if exc.description:
        return exc.description
    title = exc.title or str(exc.status)
    words = title.split(" ", 1)[-1] if title[:3].isdigit() else title
    return words.strip().lower().replace(" ", "_")


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Write every HTTPError as JSON ``{"detail": ...}``, whatever the client accepts."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"detail": _detail_of(exc)})


def _domain_handler(status: int) -> Any:
    def handle(req: falcon.Request, resp: falcon.Response, exc: BaseException, params: Any) -> None:
        if status >= 500 and status != 503:
            logger.error("%s %s failed: %s", req.method, req.path, exc)
        raise DetailError(status, str(exc) or type(exc).__name__)

    return handle


def _unexpected(req: falcon.Request, resp: falcon.Response, exc: BaseException, params: Any) -> None:
    # Boundary catch-all: the traceback is logged once here and never sent to the client.
    logger.exception("unhandled error in %s %s", req.method, req.path)
    raise DetailError(500, "internal_error")


def install(app: falcon.App) -> None:
    """Register the error table and the JSON error serializer on ``app``."""
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(TradeCanvasError, _domain_handler(500))
    for error_class, status in STATUS_BY_ERROR:
        app.add_error_handler(error_class, _domain_handler(status))
    app.set_error_serializer(serialize_error)
