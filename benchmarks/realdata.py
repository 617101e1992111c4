"""The recorded real BTCUSDT 1m klines (2020-01-01..03, 4320 candles) as benchmark input.

Flat synthetic candles form no pivots, so they hide the factor path's cost; every ingest,
fan-out and latency benchmark sends these instead. Longer runs chain time-shifted copies, each
copy scaled so that it opens at the previous copy's last close (prices stay continuous and the
factor engine sees real swings throughout). The file is the replay exchange's package data.
"""

from __future__ import annotations

import csv
import functools
import gzip
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "trade_canvas" / "replay" / "data" / "spot_BTCUSDT_1m.csv.gz"
RECORDED = 4320


@functools.lru_cache(maxsize=1)
def _rows() -> tuple[tuple[float, float, float, float, float], ...]:
    with gzip.open(DATA, "rt", newline="") as handle:
        return tuple((float(r["open"]), float(r["high"]), float(r["low"]), float(r["close"]),
                      float(r["volume"])) for r in csv.DictReader(handle))


def real_candles(count: int, start: int, step_s: int = 60) -> list[dict[str, Any]]:
    """Return ``count`` consecutive real candles, the first opening at ``start``."""
    rows = _rows()
    result: list[dict[str, Any]] = []
    scale = 1.0
    for i in range(count):
        if i and i % len(rows) == 0:
            scale = result[-1]["close"] / rows[0][0]
        o, h, low, c, v = rows[i % len(rows)]
        result.append({
            "candle_time": start + step_s * i, "open": round(o * scale, 2),
            "high": round(h * scale, 2), "low": round(low * scale, 2),
            "close": round(c * scale, 2), "volume": v,
        })
    return result
