"""Tail reads: ``GET /api/market/candles`` with limit 500 and 5000 over 8 keep-alive connections.

Two client processes with four threads each (one connection per thread) issue requests back to
back for a fixed time; each thread stamps every request, so p50/p99 are per request. Bodies are
read in full but not decoded (decoding would make the client the bottleneck).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

from benchmarks.client import Http, aligned_past, candle, ingest_batches, percentile
from benchmarks.processes import Context

TARGETS = [("tail500_req_per_s", ">=", 3000)]
SERIES = "bench:spot:READ/USDT:1m"
CONNECTIONS = 8
PROCESSES = 2
STORED = 20_000


def _worker(port: int, path: str, start_at: float, stop_at: float, out: list[float],
            errors: list[str]) -> None:
    client = Http(port)
    clock = time.perf_counter
    while time.monotonic() < start_at:
        time.sleep(0.001)
    try:
        while time.monotonic() < stop_at:
            began = clock()
            status, _ = client.request("GET", path)
            out.append(clock() - began)
            if status != 200:
                errors.append(f"status {status}")
                return
    except Exception as exc:  # noqa: BLE001  reported as a problem
        errors.append(repr(exc))
    finally:
        client.close()


def _process(port: int, path: str, threads: int, start_at: float, stop_at: float,
             warmup_s: float, pipe: Any) -> None:
    samples: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    workers = [threading.Thread(target=_worker, args=(port, path, start_at, stop_at, samples[i], errors))
               for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=stop_at - time.monotonic() + 60)
    # Drop each connection's first requests (warm-up) by time, not count.
    kept = []
    for thread_samples in samples:
        elapsed = 0.0
        for sample in thread_samples:
            elapsed += sample
            if elapsed > warmup_s:
                kept.append(sample)
    pipe.send({"latencies": kept, "errors": errors})


def _measure(port: int, limit: int, duration_s: float) -> dict[str, Any]:
    mp = multiprocessing.get_context("fork")
    path = f"/api/market/candles?series_id={SERIES}&limit={limit}"
    warmup_s = 0.3
    start_at = time.monotonic() + 0.5
    stop_at = start_at + warmup_s + duration_s
    pipes, procs = [], []
    for _ in range(PROCESSES):
        parent, child = mp.Pipe()
        proc = mp.Process(target=_process, daemon=True, args=(
            port, path, CONNECTIONS // PROCESSES, start_at, stop_at, warmup_s, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    latencies: list[float] = []
    errors: list[str] = []
    for pipe, proc in zip(pipes, procs):
        if not pipe.poll(duration_s + 120):
            proc.terminate()
            raise RuntimeError("read client did not report")
        result = pipe.recv()
        latencies += result["latencies"]
        errors += result["errors"]
        proc.join(timeout=10)
    if errors:
        raise RuntimeError(f"read errors: {errors[:3]}")
    latencies.sort()
    # Requests are back to back per connection, so the rate is the sum of per-connection rates.
    rate = len(latencies) / duration_s
    return {"req_per_s": round(rate), "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2), "requests": len(latencies)}


def run(ctx: Context) -> dict[str, Any]:
    """Return req/s and latency of tail reads at limit 500 and 5000."""
    duration = 2.0 if ctx.quick else 8.0
    figures: dict[str, Any] = {"connections": CONNECTIONS, "stored_candles": STORED}
    # The same reads twice: as served (repeated tails hit the response cache until the next
    # write) and with the cache off, which is what every first read of a new tail costs.
    for prefix, env in (("tail", {}), ("uncached_tail", {"TRADE_CANVAS_READ_CACHE_MB": "0"})):
        with ctx.server(f"reads-{prefix}", env) as server:
            start = aligned_past(60, STORED + 5)
            ingest_batches(server.port, SERIES, [candle(start + 60 * i) for i in range(STORED)])
            for limit in (500, 5000):
                cpu0 = server.cpu_s()
                result = _measure(server.port, limit, duration)
                cpu = server.cpu_s() - cpu0
                for key, value in result.items():
                    figures[f"{prefix}{limit}_{key}"] = value
                figures[f"{prefix}{limit}_server_cpu_per_req_us"] = round(
                    cpu / max(1, result["requests"]) * 1e6, 1)
    return figures
