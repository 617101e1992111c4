"""Build the WSGI application: ``create_app(runtime)`` for tests, ``get_app()`` for gunicorn."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

import falcon

from trade_canvas.http import (
    backtest, debug, errors, factor, frame, market, metrics, openapi, ops, replay, status,
    top_markets,
)
from trade_canvas.http.access import Access, AccessMiddleware
from trade_canvas.http.cors import Cors
from trade_canvas.http.debug_ws import DebugSocket
from trade_canvas.http.errors import DetailError
from trade_canvas.http.media import JSON_HANDLER
from trade_canvas.http.ws import MarketSocket, dispatch_websockets
from trade_canvas.runtime.system import Runtime

logger = logging.getLogger(__name__)


class WebSocketOnly:
    """GET /ws/market without an upgrade: explain instead of 404."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise DetailError(400, "this endpoint speaks WebSocket: send an Upgrade request")


def create_app(runtime: Runtime) -> falcon.App:
    """Build the Falcon app around a runtime (real or fake)."""
    settings = runtime.settings
    app = falcon.App(
        middleware=[Cors(settings.cors_origins), AccessMiddleware(Access(settings))]
    )
    app.req_options.media_handlers[falcon.MEDIA_JSON] = JSON_HANDLER
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = JSON_HANDLER
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    app.add_route("/api/health", status.Health())
    app.add_route("/api/ready", status.Ready(runtime))
    app.add_route("/api/runtime/actors", status.Actors(runtime))
    app.add_route("/api/runtime/cluster", status.Cluster(runtime))
    app.add_route("/metrics", metrics.Metrics(runtime))
    page = ops.StatusPage()
    app.add_route("/", page)
    app.add_route("/ops", page)
    app.add_route("/api/openapi.json", openapi.OpenApi(settings))
    app.add_route("/api/market/candles", market.Candles(runtime))
    app.add_route("/api/market/whitelist", market.Whitelist(runtime))
    app.add_route("/api/market/top_markets", top_markets.TopMarkets(runtime))
    app.add_route("/api/market/top_markets/stream", top_markets.TopMarketsStream(runtime))
    app.add_route("/api/market/ingest/candle_closed", market.CandleClosed(runtime))
    app.add_route("/api/market/ingest/candles_closed_batch", market.CandlesClosedBatch(runtime))
    app.add_route("/api/backtest/strategies", backtest.Strategies(runtime))
    app.add_route("/api/backtest/pair_timeframes", backtest.PairTimeframes(runtime))
    app.add_route("/api/backtest/run", backtest.Run(runtime))
    app.add_route("/api/backtest/results", backtest.Results(runtime))
    app.add_route("/api/backtest/results/{job_id}", backtest.Result(runtime))
    app.add_route("/api/factor/catalog", factor.Catalog())
    app.add_route("/api/factor/slices", factor.Slices(runtime))
    app.add_route("/api/factor/health", factor.Health(runtime))
    app.add_route("/api/draw/delta", factor.DrawDelta(runtime))
    app.add_route("/api/frame/live", frame.LiveFrame(runtime))
    app.add_route("/api/frame/at_time", frame.FrameAtTime(runtime))
    app.add_route("/api/delta/poll", frame.DeltaPoll(runtime))
    app.add_route("/api/replay/prepare", replay.Prepare(runtime))
    if settings.enable_replay_v1:
        app.add_route("/api/replay/build", replay.Build(runtime))
        app.add_route("/api/replay/status", replay.Status(runtime))
        app.add_route("/api/replay/window", replay.Window(runtime))
        app.add_route("/api/replay/coverage_status", replay.CoverageStatus(runtime))
        if settings.enable_replay_ensure_coverage:
            app.add_route("/api/replay/ensure_coverage", replay.EnsureCoverage(runtime))
    app.add_route("/ws/market", WebSocketOnly())
    if settings.enable_debug_api:
        app.add_route("/ws/debug", WebSocketOnly())
    if settings.enable_dev_api:
        app.add_route(
            "/api/dev/market/ingest/candles_closed_batch", market.CandlesClosedBatch(runtime)
        )
    if settings.enable_kline_health_v2 or settings.enable_debug_api:
        app.add_route("/api/market/health", debug.MarketHealth(runtime))
    if settings.enable_debug_api:
        app.add_route("/api/market/debug/series_health", debug.SeriesHealth(runtime))
        app.add_route("/api/market/debug/ingest_state", debug.IngestState(runtime))
        if settings.enable_runtime_metrics:
            app.add_route("/api/market/debug/metrics", debug.Metrics(runtime))
        app.add_route("/api/market/ingest/candle_forming", market.CandleForming(runtime))
        app.add_route("/api/runtime/debug/crash", status.Crash(runtime))
    return app


def get_app() -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """Load settings and logging, boot the runtime, return the WSGI app (gunicorn entry)."""
    from trade_canvas.runtime.logs import configure_logging
    from trade_canvas.runtime.boot import boot_from_environ

    runtime = boot_from_environ(os.environ, configure_logging)
    sockets: dict[str, Any] = {"/ws/market": MarketSocket(runtime)}
    if runtime.journal is not None:
        sockets["/ws/debug"] = DebugSocket(runtime, runtime.journal)
    return dispatch_websockets(
        create_app(runtime), sockets, Access(runtime.settings)
    )
