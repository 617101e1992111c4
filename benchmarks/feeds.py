"""Feed scale: N series followed live from the replay exchange over shared stream connections.

The replay exchange runs at 60x with ``--synthesize-listed`` (every listed TRADING symbol
replays a synthetic path derived from a recorded one; the recordings alone give only ~40
distinct streams). Those paths are real klines already: each spot symbol replays the recorded
BTCUSDT 1m klines and each futures symbol the recorded XRPUSDT 5m/1h klines, prices scaled by a
factor derived from the symbol name, longer intervals aggregated from them, so the feeds carry
real swings (and the factor actors real pivots) like the other real-data benchmarks. The server follows on demand (``TRADE_CANVAS_ENABLE_ONDEMAND_INGEST=1``,
``TRADE_CANVAS_ONDEMAND_MAX_JOBS=0``): WebSocket clients subscribe to N series, which starts N
feed actors sharing a few exchange stream connections. After every feed runs, the worker's CPU
(/proc/<pid>/stat) and RSS are measured over a window, and each closed candle's delay is taken
from the exchange frame's event time (candle close + 1 ms, mapped to this machine's monotonic
clock through the replay clock) to the subscriber's receipt stamp.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.client import percentile
from benchmarks.processes import Context, ReplayProcess
from benchmarks.subscribers import Subscribers

TARGETS = [("followed_series", ">=", 500)]
SPEED = 60.0
SPOT_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
FUTURES_INTERVALS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
INTERVAL_S = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200,
              "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400}


def series_ids(replay: ReplayProcess, count: int) -> list[str]:
    """Return ``count`` distinct followable series, shortest timeframes first."""
    symbols = {}
    for market in ("spot", "futures"):
        info = replay.get_json(f"/{market}/{'api/v3' if market == 'spot' else 'fapi/v1'}/exchangeInfo")
        symbols[market] = [f"{s['baseAsset']}/{s['quoteAsset']}" for s in info["symbols"]
                           if s["status"] == "TRADING" and "_" not in s["symbol"]]
    ordered = []
    for interval in SPOT_INTERVALS:
        ordered += [f"binance:spot:{sym}:{interval}" for sym in symbols["spot"]]
        if interval in FUTURES_INTERVALS:
            ordered += [f"binance:futures:{sym}:{interval}" for sym in symbols["futures"]]
    return ordered[:count]


def _feeds_running(server: Any) -> tuple[int, int]:
    board = server.get_json("/api/runtime/actors")
    feeds = [a for a in board["actors"] if a["kind"] == "feed"]
    return sum(1 for a in feeds if a["state"] == "running"), len(feeds)


def _wait_feeds(server: Any, count: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    running = 0
    while time.monotonic() < deadline:
        running, _ = _feeds_running(server)
        if running >= count:
            break
        time.sleep(0.5)
    return running


def _replay_clock(replay: ReplayProcess) -> tuple[float, int, float]:
    before = time.monotonic()
    clock = replay.state()["clock"]
    after = time.monotonic()
    return (before + after) / 2, int(clock["now_ms"]), float(clock["speed"])


def run(ctx: Context) -> dict[str, Any]:
    """Return CPU, memory and closed-candle delay figures for N followed series."""
    count, window_s = (100, 8.0) if ctx.quick else (500, 30.0)
    replay = ReplayProcess(ctx.workdir / "replay", "--speed", str(SPEED), "--synthesize-listed")
    try:
        env = {**replay.env(), "TRADE_CANVAS_ENABLE_ONDEMAND_INGEST": "1",
               "TRADE_CANVAS_ONDEMAND_MAX_JOBS": "0",
               "TRADE_CANVAS_BINANCE_WS_STREAMS_PER_CONNECTION": "200",
               # a short start-up backfill: the benchmark measures following, not history loads
               "TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES": "100"}
        with ctx.server("feeds", env) as server:
            return _measure(ctx, replay, server, count, window_s)
    finally:
        replay.stop()


def _measure(ctx: Context, replay: ReplayProcess, server: Any, count: int, window_s: float) -> dict[str, Any]:
    ids = series_ids(replay, count)
    rss_idle = server.memory_kb()["VmRSS"]
    sockets = 10
    plan = [tuple(ids[i::sockets]) for i in range(sockets) if ids[i::sockets]]
    started = time.monotonic()
    clients = Subscribers(server.port, plan, processes=1)
    try:
        running = _wait_feeds(server, len(ids), 120.0)
        ready_s = time.monotonic() - started
        time.sleep(2.0)  # let start-up backfills settle
        reference = _replay_clock(replay)
        cpu0, t0 = server.cpu_s(), time.monotonic()
        time.sleep(window_s)
        cpu1, t1 = server.cpu_s(), time.monotonic()
        rss = server.memory_kb()["VmRSS"]
        running_end, feeds_total = _feeds_running(server)
        logs, _ = clients.stop()
    except BaseException:
        clients.kill()
        raise
    delays, live_series = _delays(logs, reference, t0, t1)
    replay_state = replay.state()
    if running_end < len(ids):
        ctx.problems.append(f"only {running_end} of {len(ids)} feeds running at the end")
    cpu_fraction = (cpu1 - cpu0) / (t1 - t0)
    return {
        "series": len(ids),
        "followed_series": running_end,
        "feeds_running_after_s": round(ready_s, 1) if running >= len(ids) else None,
        "replay_speed": SPEED,
        "exchange_connections": replay_state["counters"].get("ws_connections_open"),
        "window_s": window_s,
        "server_cpu_cores": round(cpu_fraction, 3),
        "cpu_per_series_pct_core": round(cpu_fraction / len(ids) * 100, 3),
        "rss_kib": rss,
        "rss_per_series_kib": round((rss - rss_idle) / len(ids), 1),
        "series_with_live_closes": live_series,
        "closed_candles": len(delays),
        "closed_delay_p50_ms": round(percentile(delays, 0.5) * 1000, 1),
        "closed_delay_p99_ms": round(percentile(delays, 0.99) * 1000, 1),
        "closed_delay_max_ms": round(delays[-1] * 1000, 1) if delays else 0.0,
    }


def _delays(logs: list[Any], reference: tuple[float, int, float], t0: float, t1: float) -> tuple[list[float], int]:
    ref_wall, ref_ms, speed = reference
    delays, live = [], set()
    seen = set()
    for log in logs:
        for series_id, candle_time, received_at in log.closed_candles:
            if (series_id, candle_time) in seen:
                continue
            seen.add((series_id, candle_time))
            step = INTERVAL_S[series_id.rsplit(":", 1)[1]]
            event_ms = (candle_time + step) * 1000  # close_ms + 1: when the closed frame is due
            event_wall = ref_wall + (event_ms - ref_ms) / (speed * 1000)
            if t0 <= event_wall <= t1:
                delays.append(received_at - event_wall)
                live.add(series_id)
    delays.sort()
    return delays, len(live)
