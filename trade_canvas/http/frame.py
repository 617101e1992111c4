"""Frame resources: the overlay baseline at a candle, and the delta poll that follows it."""

from __future__ import annotations

import falcon

from trade_canvas.http.factor import window_candles
from trade_canvas.http.media import query_int, query_required
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import MAX_EPOCH_SECONDS, parse_series_id


class LiveFrame:
    """GET /api/frame/live: slices and draw state at the newest candle both ledgers reached."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = parse_series_id(query_required(req, "series_id"))
        resp.media = self.runtime.live_frame(series, window_candles(req))


class FrameAtTime:
    """GET /api/frame/at_time: the frame at the newest stored candle at or before ``at_time``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = parse_series_id(query_required(req, "series_id"))
        query_required(req, "at_time")
        at_time = query_int(req, "at_time", default=None, minimum=0, maximum=MAX_EPOCH_SECONDS)
        assert at_time is not None
        resp.media = self.runtime.frame_at(series, at_time, window_candles(req))


class DeltaPoll:
    """GET /api/delta/poll: the draw delta after a version cursor, with the slices at its candle.

    ``limit`` is accepted and ignored, as in the original.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        series = parse_series_id(query_required(req, "series_id"))
        after = query_int(req, "after_id", default=0, minimum=0)
        query_int(req, "limit", default=2000, minimum=1, maximum=5000)
        assert after is not None
        resp.media = self.runtime.delta_poll(series, after, window_candles(req))
