"""The chart's K-line lamp and the debug tab's reads: series health, ingest state, metrics."""

from __future__ import annotations

import falcon

from trade_canvas.errors import InvalidInput
from trade_canvas.http.errors import DetailError
from trade_canvas.http.media import query_int, query_required
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import MAX_EPOCH_SECONDS, SeriesId, parse_series_id


def parsed_series(req: falcon.Request) -> SeriesId:
    """Return the ``series_id`` query parameter, parsed (400 with the parser's message)."""
    try:
        return parse_series_id(query_required(req, "series_id"))
    except InvalidInput as exc:
        raise DetailError(400, str(exc)) from None


class MarketHealth:
    """GET /api/market/health: is the series' tail complete, and how far is its history fill."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = parsed_series(req)
        now = query_int(req, "now_time", default=None, minimum=0, maximum=MAX_EPOCH_SECONDS)
        resp.media = self.runtime.market_health(series, now)


class SeriesHealth:
    """GET /api/market/debug/series_health: gaps and base-minute completeness of a series."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = parsed_series(req)
        gaps = query_int(req, "max_recent_gaps", default=5, minimum=1, maximum=50)
        buckets = query_int(req, "recent_base_buckets", default=8, minimum=1, maximum=48)
        assert gaps is not None and buckets is not None
        resp.media = self.runtime.series_health(series, gaps, buckets)


class IngestState:
    """GET /api/market/debug/ingest_state: every live feed and the ingest settings."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.runtime.ingest_state()


class Metrics:
    """GET /api/market/debug/metrics: counters and gauges in the original's key format."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.runtime.metrics()
