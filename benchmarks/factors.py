"""Factor engine benchmark: full recompute of 2000 real candles and the per-candle step.

Run with ``.venv/bin/python -m benchmarks.factors``. Targets: full recompute < 0.2 s; the
per-candle step is reported in microseconds (p50 and max).
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

from trade_canvas.candles import Candle
from trade_canvas.factors import engine
from trade_canvas.factors.engine import FactorParams, initial_state, step

RECORDING = (
    Path(__file__).resolve().parents[1]
    / "tests" / "fakes" / "recordings" / "spot_BTCUSDT_1m_2020-01-01_2020-01-03.csv"
)


def load_candles(limit: int) -> list[Candle]:
    """Return the first ``limit`` candles of the recorded BTCUSDT 1m file."""
    with RECORDING.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    return [
        Candle(int(r["open_time_ms"]) // 1000, float(r["open"]), float(r["high"]),
               float(r["low"]), float(r["close"]), float(r["volume"]))
        for r in rows
    ]


def _full_recompute(candles: list[Candle], params: FactorParams, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        engine.run(initial_state(params), candles, params)
        best = min(best, time.perf_counter() - started)
    return best


def _step_micros(candles: list[Candle], params: FactorParams) -> list[float]:
    state, samples = initial_state(params), []
    clock = time.perf_counter_ns
    for candle in candles:
        started = clock()
        state, _ = step(state, candle, params)
        samples.append((clock() - started) / 1000.0)
    return samples


def run(quick: bool = False) -> dict[str, float | int]:
    """Return the benchmark figures (seconds and microseconds); ``quick`` repeats less."""
    params = FactorParams()
    candles = load_candles(2000)
    full_s = _full_recompute(candles, params, 2 if quick else 7)
    samples = _step_micros(candles, params)
    per_candle = sorted(samples)
    return {
        "candles": len(candles),
        "pivot_window_major": params.pivot_window_major,
        "pivot_window_minor": params.pivot_window_minor,
        "full_recompute_s": round(full_s, 4),
        "full_recompute_per_candle_us": round(full_s / len(candles) * 1e6, 2),
        "step_p50_us": round(statistics.median(per_candle), 2),
        "step_p99_us": round(per_candle[int(len(per_candle) * 0.99) - 1], 2),
        "step_max_us": round(per_candle[-1], 2),
        "target_full_recompute_s": 0.2,
    }


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:32s} {value}")
