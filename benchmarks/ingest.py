"""Ingest throughput: sequential ``candle_closed`` over one keep-alive connection, and
``candles_closed_batch`` with 5000 candles per request.

Both run in a separate client process; request bodies are encoded before the clock starts, so
the figure is the server's (one gevent worker) and the loopback's, not the client's encoding.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import orjson

from benchmarks.client import Http, aligned_past, candle
from benchmarks.processes import Context

TARGETS = [
    ("single_candles_per_s", ">=", 3000),
    ("batch_candles_per_s", ">=", 100_000),
]
BATCH = 5000
SINGLE_PATH = "/api/market/ingest/candle_closed"
BATCH_PATH = "/api/market/ingest/candles_closed_batch"


def _drive(port: int, singles: int, batches: int, out: Any) -> None:
    client = Http(port)
    start = aligned_past(60, singles + 10)
    bodies = [orjson.dumps({"series_id": "bench:spot:ING/USDT:1m", "candle": candle(start + 60 * i)})
              for i in range(singles)]
    started = time.perf_counter()
    for body in bodies:
        status, data = client.request("POST", SINGLE_PATH, body)
        if status != 200:
            raise RuntimeError(f"single ingest -> {status}: {data[:200]!r}")
    single_s = time.perf_counter() - started
    start = aligned_past(60, batches * BATCH + 10)
    batch_bodies = [orjson.dumps({
        "series_id": "bench:spot:BAT/USDT:1m",
        "candles": [candle(start + 60 * (b * BATCH + i)) for i in range(BATCH)],
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
        stored = server.get_json("/api/market/candles?series_id=bench:spot:BAT/USDT:1m&limit=1")
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
    }
