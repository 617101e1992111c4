"""Ingest throughput on the real klines: sequential ``candle_closed`` over one keep-alive
connection, and ``candles_closed_batch`` with 5000 candles per request.

Both send the recorded BTCUSDT candles (``realdata.real_candles``; runs longer than the 4320
recorded ones chain scaled copies), with factors on (the server default), so the figures include
the factor actor's folds, which flat candles would hide (they form no pivots). The batch series'
factor catch-up runs in the server while the later batches arrive.

Both run in a separate client process; request bodies are encoded before the clock starts, so
the figure is the server's (one gevent worker) and the loopback's, not the client's encoding.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import orjson

from benchmarks.client import Http, aligned_past
from benchmarks.processes import Context
from benchmarks.realdata import real_candles

TARGETS = [
    ("single_candles_per_s", ">=", 1500),
    ("batch_candles_per_s", ">=", 100_000),
]
BATCH = 5000
SINGLE_PATH = "/api/market/ingest/candle_closed"
BATCH_PATH = "/api/market/ingest/candles_closed_batch"
SINGLE_SERIES = "bench:spot:ING/USDT:1m"
BATCH_SERIES = "bench:spot:BAT/USDT:1m"


def _drive(port: int, singles: int, batches: int, out: Any) -> None:
    client = Http(port)
    start = aligned_past(60, singles + 10)
    bodies = [orjson.dumps({"series_id": SINGLE_SERIES, "candle": c})
              for c in real_candles(singles, start)]
    started = time.perf_counter()
    for body in bodies:
        status, data = client.request("POST", SINGLE_PATH, body)
        if status != 200:
            raise RuntimeError(f"single ingest -> {status}: {data[:200]!r}")
    single_s = time.perf_counter() - started
    start = aligned_past(60, batches * BATCH + 10)
    candles = real_candles(batches * BATCH, start)
    batch_bodies = [orjson.dumps({
        "series_id": BATCH_SERIES, "candles": candles[b * BATCH:(b + 1) * BATCH],
    }) for b in range(batches)]
    started = time.perf_counter()
    for body in batch_bodies:
        status, data = client.request("POST", BATCH_PATH, body)
        if status != 200:
            raise RuntimeError(f"batch ingest -> {status}: {data[:200]!r}")
    batch_s = time.perf_counter() - started
    client.close()
    out.send({"single_s": single_s, "batch_s": batch_s,
              "batch_body_bytes": len(batch_bodies[0]) if batch_bodies else 0})


def run(ctx: Context) -> dict[str, Any]:
    """Return candles/s of both ingest routes."""
    singles, batches = (2000, 4) if ctx.quick else (20_000, 20)
    mp = multiprocessing.get_context("fork")
    with ctx.server("ingest") as server:
        parent, child = mp.Pipe()
        proc = mp.Process(target=_drive, args=(server.port, singles, batches, child), daemon=True)
        cpu0 = server.cpu_s()
        proc.start()
        if not parent.poll(600):
            proc.terminate()
            raise RuntimeError("ingest client did not finish")
        result = parent.recv()
        proc.join(timeout=10)
        cpu = server.cpu_s() - cpu0
        stored = server.get_json(f"/api/market/candles?series_id={BATCH_SERIES}&limit=1")
        single_health = server.get_json(f"/api/factor/health?series_id={SINGLE_SERIES}")
        level_s = _wait_green(server, BATCH_SERIES, 120.0)
    single_rate = singles / result["single_s"]
    batch_rate = batches * BATCH / result["batch_s"]
    return {
        "single_requests": singles,
        "single_candles_per_s": round(single_rate),
        "single_mean_ms": round(result["single_s"] / singles * 1000, 3),
        "batch_requests": batches,
        "batch_size": BATCH,
        "batch_body_kib": round(result["batch_body_bytes"] / 1024),
        "batch_candles_per_s": round(batch_rate),
        "batch_request_ms": round(result["batch_s"] / batches * 1000, 1),
        "server_cpu_s": round(cpu, 2),
        "batch_head_stored": stored["server_head_time"] is not None,
        "single_factor_delay_candles": single_health.get("factor_delay_candles"),
        "batch_factor_level_after_s": level_s,
    }


def _wait_green(server: Any, series_id: str, timeout_s: float) -> float | None:
    """Return the seconds until the series' factor head reaches its store head (None: timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.get_json(f"/api/factor/health?series_id={series_id}").get("status") == "green":
            return round(time.monotonic() - started, 2)
        time.sleep(0.05)
    return None
