"""Factor resources: the catalog, slices at a time, ledger health and the draw delta."""

from __future__ import annotations

import falcon

from trade_canvas.factors import catalog
from trade_canvas.http.media import query_int, query_required
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import MAX_EPOCH_SECONDS, SeriesId, parse_series_id

MAX_WINDOW_CANDLES = 5000
DEFAULT_WINDOW_CANDLES = 2000


def _series(req: falcon.Request) -> SeriesId:
    return parse_series_id(query_required(req, "series_id"))


def window_candles(req: falcon.Request) -> int:
    """Return the ``window_candles`` query parameter of the factor and frame reads."""
    window = query_int(
        req, "window_candles", default=DEFAULT_WINDOW_CANDLES, minimum=1, maximum=MAX_WINDOW_CANDLES
    )
    assert window is not None
    return window


class Catalog:
    """GET /api/factor/catalog: the factors in dependency order with their toggles."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = catalog()


class Slices:
    """GET /api/factor/slices: what every factor shows at ``at_time``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = _series(req)
        query_required(req, "at_time")
        at_time = query_int(req, "at_time", default=None, minimum=0, maximum=MAX_EPOCH_SECONDS)
        assert at_time is not None
        resp.media = self.runtime.factor_slices(series, at_time, window_candles(req))


class Health:
    """GET /api/factor/health: how far the factor ledger lags the candle store."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.runtime.factor_health(_series(req))


class DrawDelta:
    """GET /api/draw/delta: draw instruction versions after a cursor, and the active ids."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = _series(req)
        cursor = query_int(req, "cursor_version_id", default=0, minimum=0)
        at_time = query_int(req, "at_time", default=None, minimum=0, maximum=MAX_EPOCH_SECONDS)
        assert cursor is not None
        resp.media = self.runtime.draw_delta(series, cursor, window_candles(req), at_time)
