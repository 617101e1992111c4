"""Replay packages: build time of a 2000-candle package and window sizes, on the real klines.

The server stores the recorded BTCUSDT 1m klines (4320 candles), the factor actor catches up,
then the chart's workflow runs: build (2000 candles, windows of 500, snapshots every 25), poll
the status every 20 ms until done, fetch every window with and without gzip. The build time is
seen from the client (request to ``done``), so it includes the reads of the ledgers and the
writes of the package files.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

from benchmarks.client import Http, aligned_past, ingest_batches
from benchmarks.processes import Context
from benchmarks.realdata import RECORDED, real_candles

# The window target is on the wire: browsers accept gzip, and the window files are stored
# compressed. The decoded size (window_max_bytes) is reported beside it.
TARGETS = [("build_2000_s", "<", 2.0), ("window_gzip_max_bytes", "<", 500_000)]
SERIES = "binance:spot:BENCH/USDT:1m"


def _wait_factors(client: Http, head: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = client.request("GET", f"/api/factor/health?series_id={SERIES}")
        if json.loads(body).get("factor_head_time") == head:
            return
        time.sleep(0.1)
    raise RuntimeError("factor actor did not catch up")


def run(ctx: Context) -> dict[str, Any]:
    """Return the replay figures."""
    with ctx.server("replay") as server:
        candles = real_candles(RECORDED, aligned_past(60, RECORDED + 2))
        ingest_batches(server.port, SERIES, candles)
        client = Http(server.port)
        try:
            _wait_factors(client, candles[-1]["candle_time"])
            build = json.dumps({"series_id": SERIES, "window_candles": 2000, "window_size": 500,
                                "snapshot_interval": 25}).encode()
            began = time.perf_counter()
            _, body = client.request("POST", "/api/replay/build", build)
            job = json.loads(body)["job_id"]
            while True:
                _, body = client.request("GET", f"/api/replay/status?job_id={job}")
                status = json.loads(body)
                if status["status"] != "building":
                    break
                time.sleep(0.02)
            build_s = time.perf_counter() - began
            if status["status"] != "done":
                raise RuntimeError(f"build failed: {status}")
            raw, packed, fetch = [], [], []
            for w in range(4):
                path = f"/api/replay/window?job_id={job}&target_idx={w * 500}"
                t0 = time.perf_counter()
                _, data = client.request("GET", path)
                fetch.append(time.perf_counter() - t0)
                raw.append(len(data))
                client.conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
                resp = client.conn.getresponse()
                zipped = resp.read()
                assert len(gzip.decompress(zipped)) == len(data)
                packed.append(len(zipped))
        finally:
            client.close()
    return {
        "build_2000_s": round(build_s, 3),
        "window_max_bytes": max(raw), "window_bytes": raw,
        "window_gzip_max_bytes": max(packed), "window_gzip_bytes": packed,
        "window_fetch_max_ms": round(max(fetch) * 1000, 1),
    }
