"""Market resources: candle reads, candle ingest and the whitelist."""

from __future__ import annotations

import time
from typing import Any

import falcon

from trade_canvas.actors.instruments import INGEST_SECONDS
from trade_canvas.candles import Candle, parse_candle, parse_candles
from trade_canvas.errors import InvalidInput
from trade_canvas.http.errors import DetailError
from trade_canvas.http.media import query_int, query_required, read_json_object
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import MAX_EPOCH_SECONDS, SeriesId, parse_series_id

MAX_READ_LIMIT = 5000
MAX_BATCH = 5000
_SINGLE_SECONDS = INGEST_SECONDS.labels("candle_closed")
_BATCH_SECONDS = INGEST_SECONDS.labels("candles_closed_batch")


def body_candle(req: falcon.Request, runtime: Runtime) -> tuple[SeriesId, Candle]:
    """Return the validated ``series_id`` and ``candle`` of a single-candle ingest body."""
    body = read_json_object(req)
    series = body_series(body)
    return series, parse_candle(body.get("candle"), series.timeframe, int(runtime.clock()))


def body_series(body: dict[str, Any]) -> SeriesId:
    """Return the parsed ``series_id`` of a request body (422 when missing or invalid)."""
    raw = body.get("series_id")
    if not isinstance(raw, str) or not raw.strip():
        raise DetailError(422, "series_id is required")
    return parse_series_id(raw)


class Candles:
    """GET /api/market/candles: tail (no ``since``) or the candles after ``since``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = parse_series_id(query_required(req, "series_id"))
        since = query_int(req, "since", default=None, minimum=0, maximum=MAX_EPOCH_SECONDS)
        limit = query_int(req, "limit", default=500, minimum=1, maximum=MAX_READ_LIMIT)
        assert limit is not None
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.runtime.candles_json(series.text, since, limit)


class CandleClosed:
    """POST /api/market/ingest/candle_closed: store one closed candle, then publish it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        series, candle = body_candle(req, self.runtime)
        self.runtime.ingest_closed(series, [candle])
        _SINGLE_SECONDS.observe(time.perf_counter() - started)
        resp.media = {"ok": True, "series_id": series.text, "candle_time": candle.candle_time}


class CandlesClosedBatch:
    """POST .../candles_closed_batch: store up to 5000 closed candles in one transaction."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body = read_json_object(req)
        series = body_series(body)
        publish = body.get("publish_ws", True)
        if not isinstance(publish, bool):
            raise InvalidInput("publish_ws must be a boolean")
        candles = parse_candles(
            body.get("candles"), series.timeframe, int(self.runtime.clock()), MAX_BATCH
        )
        self.runtime.ingest_closed(series, candles, publish=publish)
        _BATCH_SECONDS.observe(time.perf_counter() - started)
        times = [c.candle_time for c in candles]
        resp.media = {
            "ok": True,
            "series_id": series.text,
            "count": len(candles),
            "first_candle_time": min(times),
            "last_candle_time": max(times),
        }


class CandleForming:
    """POST /api/market/ingest/candle_forming (debug API): show a forming candle, store nothing."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        series, candle = body_candle(req, self.runtime)
        self.runtime.publish_forming(series, candle)
        resp.media = {"ok": True, "series_id": series.text, "candle_time": candle.candle_time}


class Whitelist:
    """GET /api/market/whitelist."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"series_ids": list(self.runtime.whitelist)}
