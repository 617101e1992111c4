"""Worker memory: RSS idle, per 1000 stored candles, per 1000 candles read, per series, per
WebSocket client.

The server keeps no candle cache (reads go to the store; SQLite's page cache is bounded by its
``cache_size``), so "per 1000 stored candles" shows how little storing costs in the worker, and
"per 1000 candles read" is the transient peak (VmHWM) of building one 5000-candle answer.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.client import Http, aligned_past, candle, ingest_batches
from benchmarks.processes import Context
from benchmarks.subscribers import Subscribers, wait_subscribed

TARGETS: list[tuple[str, str, float]] = []


def _settled_rss(server: Any, pause_s: float = 0.5) -> int:
    time.sleep(pause_s)
    return server.memory_kb()["VmRSS"]


def run(ctx: Context) -> dict[str, Any]:
    """Return RSS figures in KiB."""
    stored = 50_000 if ctx.quick else 200_000
    series_count = 100 if ctx.quick else 500
    clients = 500 if ctx.quick else 2000
    figures: dict[str, Any] = {}
    with ctx.server("memory") as server:
        idle = _settled_rss(server, 1.0)
        figures["rss_idle_kib"] = idle
        start = aligned_past(60, stored + 5)
        ingest_batches(server.port, "bench:spot:MEM/USDT:1m",
                       [candle(start + 60 * i) for i in range(stored)])
        after_store = _settled_rss(server)
        figures["stored_candles"] = stored
        figures["rss_per_1000_stored_candles_kib"] = round((after_store - idle) / (stored / 1000), 2)
        hwm0 = server.memory_kb()["VmHWM"]
        Http(server.port).get("/api/market/candles?series_id=bench:spot:MEM/USDT:1m&limit=5000")
        mem = server.memory_kb()
        figures["rss_per_1000_candles_read_kib"] = round(max(0, mem["VmHWM"] - max(hwm0, after_store)) / 5, 1)
        base = _settled_rss(server)
        client = Http(server.port)
        t = aligned_past(60, 2)
        for k in range(series_count):
            client.post("/api/market/ingest/candle_closed",
                        {"series_id": f"bench:spot:MS{k}/USDT:1m", "candle": candle(t)})
        client.close()
        after_series = _settled_rss(server, 1.0)
        figures["series"] = series_count
        figures["rss_per_series_kib"] = round((after_series - base) / series_count, 1)
        # An empty series: no catch-up, so the figure is the connection itself.
        holders = Subscribers(server.port, [("bench:spot:MEMWS/USDT:1m",)] * clients, processes=2)
        try:
            if wait_subscribed(server, {"bench:spot:MEMWS/USDT:1m"}, clients) < clients:
                ctx.problems.append("memory: not every WebSocket subscription was registered")
            after_clients = _settled_rss(server, 1.0)
            holders.stop()
        except BaseException:
            holders.kill()
            raise
        figures["websocket_clients"] = clients
        figures["rss_per_websocket_client_kib"] = round((after_clients - after_series) / clients, 1)
        figures["rss_final_kib"] = after_clients
    return figures
