"""Pivot factor: golden vectors (factors.md §1.1, Appendix A.1) and tie rules."""

from __future__ import annotations

import pytest

from trade_canvas.candles import Candle
from trade_canvas.factors.engine import FactorParams, initial_state, run

PARAMS = FactorParams(pivot_window_major=2, pivot_window_minor=1)


def flat_candles(prices: list[float]) -> list[Candle]:
    return [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(prices)]


def pivots(candles: list[Candle], kind: str) -> list[tuple[int, float, str, int]]:
    _, events = run(initial_state(PARAMS), candles, PARAMS)
    return [
        (e.payload()["pivot_time"], e.payload()["pivot_price"], e.payload()["direction"],
         e.candle_time)
        for e in events if e.kind == kind
    ]


def test_a1_major_pivots() -> None:
    candles = flat_candles([1, 2, 5, 2, 1, 2, 5, 2, 1])
    assert pivots(candles, "pivot.major") == [
        (180, 5.0, "resistance", 300),
        (300, 1.0, "support", 420),
        (420, 5.0, "resistance", 540),
    ]


def test_a1_minor_pivots_start_after_latest_major() -> None:
    candles = flat_candles([1, 2, 5, 2, 1, 2, 5, 2, 1])
    assert pivots(candles, "pivot.minor") == [
        (300, 1.0, "support", 360),
        (420, 5.0, "resistance", 480),
    ]


def test_major_is_visible_exactly_window_candles_later() -> None:
    candles = flat_candles([1, 2, 5, 2, 1])
    assert pivots(candles[:4], "pivot.major") == []
    assert pivots(candles, "pivot.major") == [(180, 5.0, "resistance", 300)]


@pytest.mark.parametrize(
    ("highs", "expected_times"),
    [
        ([1, 2, 5, 5, 2, 1, 0], [180]),  # plateau: the earliest candle wins
        ([1, 2, 5, 3, 5, 2, 1], [180]),  # the second 5 has an equal high on its left
    ],
)
def test_plateau_ties(highs: list[float], expected_times: list[int]) -> None:
    candles = [Candle(60 * (i + 1), h, h, h - 10, h, 0.0) for i, h in enumerate(highs)]
    found = [p[0] for p in pivots(candles, "pivot.major") if p[2] == "resistance"]
    assert found == expected_times


def test_outside_bar_is_both_resistance_and_support() -> None:
    bars = [(5, 4), (6, 3), (9, 1), (6, 3), (5, 4)]
    candles = [Candle(60 * (i + 1), lo, hi, lo, lo, 0.0) for i, (hi, lo) in enumerate(bars)]
    assert pivots(candles, "pivot.major") == [
        (180, 9.0, "resistance", 300),
        (180, 1.0, "support", 300),
    ]


def test_gap_does_not_skip_pivots() -> None:
    # Fix (§6.3): windows count candles, so a missing candle time does not hide the pivot.
    candles = flat_candles([1, 2, 5, 2, 1])
    gapped = candles[:3] + [Candle(c.candle_time + 600, c.open, c.high, c.low, c.close, 0.0)
                            for c in candles[3:]]
    assert pivots(gapped, "pivot.major") == [(180, 5.0, "resistance", 900)]


def test_event_keys_follow_the_ledger_format() -> None:
    _, events = run(initial_state(PARAMS), flat_candles([1, 2, 5, 2, 1, 2, 5, 2, 1]), PARAMS)
    keys = [e.event_key for e in events if e.factor_name == "pivot"]
    assert keys == [
        "major:180:resistance:2", "minor:300:support:1", "major:300:support:2",
        "minor:420:resistance:1", "major:420:resistance:2",
    ]
