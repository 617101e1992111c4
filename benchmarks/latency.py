"""Latency curve: mean ``candle_closed`` latency per 500-candle bucket over the real klines.

One keep-alive client posts the 4320 recorded BTCUSDT candles one by one to a new series, as
the live feed writes them, with factors on (the server default). A flat curve means the cost of
a candle does not grow with the series: the target is last bucket <= 1.3x the first.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import orjson

from benchmarks.client import Http, aligned_past
from benchmarks.processes import Context
from benchmarks.realdata import RECORDED, real_candles

TARGETS = [("last_over_first", "<", 1.3)]
BUCKET = 500
PATH = "/api/market/ingest/candle_closed"
SERIES = "bench:spot:LAT/USDT:1m"


def _drive(port: int, count: int, out: Any) -> None:
    client = Http(port)
    bodies = [orjson.dumps({"series_id": SERIES, "candle": c})
              for c in real_candles(count, aligned_past(60, count + 10))]
    latencies = []
    clock = time.perf_counter
    for body in bodies:
        sent = clock()
        status, data = client.request("POST", PATH, body)
        latencies.append(clock() - sent)
        if status != 200:
            raise RuntimeError(f"ingest -> {status}: {data[:200]!r}")
    client.close()
    out.send(latencies)


def _wait_level(server: Any, timeout_s: float = 10.0) -> float | None:
    """Return seconds until the factor ledger holds the last candle (None: not in time)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.get_json(f"/api/factor/health?series_id={SERIES}").get("status") == "green":
            return round(time.monotonic() - started, 3)
        time.sleep(0.005)
    return None


def run(ctx: Context) -> dict[str, Any]:
    """Return the bucket means (ms) and the last/first ratio."""
    count = 2000 if ctx.quick else RECORDED
    mp = multiprocessing.get_context("fork")
    with ctx.server("latency") as server:
        parent, child = mp.Pipe()
        proc = mp.Process(target=_drive, args=(server.port, count, child), daemon=True)
        proc.start()
        if not parent.poll(600):
            proc.terminate()
            raise RuntimeError("latency client did not finish")
        latencies = parent.recv()
        proc.join(timeout=10)
        level_after = _wait_level(server)
    full = [latencies[i:i + BUCKET] for i in range(0, len(latencies) - BUCKET + 1, BUCKET)]
    means = [round(sum(b) / len(b) * 1000, 3) for b in full]
    return {
        "candles": count,
        "bucket_means_ms": means,
        "first_bucket_ms": means[0],
        "last_bucket_ms": means[-1],
        "last_over_first": round(means[-1] / means[0], 2),
        "candles_per_s": round(count / sum(latencies)),
        "factor_level_after_s": level_after,  # the last fold may wait FACTOR_COALESCE_MS
    }
