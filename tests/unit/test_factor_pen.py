"""Pen factor: confirmed pens (Appendix A) and the head preview (factors.md §1.2)."""

from __future__ import annotations

from trade_canvas.candles import Candle
from trade_canvas.factors.engine import FactorParams, initial_state, run
from trade_canvas.factors.pen import pen_head
from trade_canvas.factors.slices import recompute_pen_head

PARAMS = FactorParams(pivot_window_major=2, pivot_window_minor=1)
A2 = [1, 2, 10, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1, 20, 22, 20, 15, 20, 23, 20, 16, 20, 24, 20, 17,
      20, 25, 20, 18, 20]
A3 = [100, 95, 94, 92, 90, 87, 88, 83, 80, 77, 72, 77, 72, 73, 72, 73, 70, 68, 70, 71, 68, 66,
      64, 65, 63, 64, 65, 70, 72, 77, 82, 79, 74, 75, 78, 80, 83, 82, 83, 80, 81, 80, 83, 78,
      77, 72, 75, 73, 68, 66]


def flat_candles(prices: list[float]) -> list[Candle]:
    return [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(prices)]


def pens(prices: list[float]) -> list[tuple[int, int, int]]:
    _, events = run(initial_state(PARAMS), flat_candles(prices), PARAMS)
    return [
        (e.payload()["start_time"], e.payload()["end_time"], e.candle_time)
        for e in events if e.kind == "pen.confirmed"
    ]


def test_a1_single_pen() -> None:
    _, events = run(initial_state(PARAMS), flat_candles([1, 2, 5, 2, 1, 2, 5, 2, 1]), PARAMS)
    confirmed = [e for e in events if e.kind == "pen.confirmed"]
    assert [e.event_key for e in confirmed] == ["confirmed:180:300:-1"]
    assert confirmed[0].payload() == {
        "start_time": 180, "end_time": 300, "start_price": 5.0, "end_price": 1.0,
        "direction": -1, "visible_time": 540,
    }


def test_a2_pens() -> None:
    assert pens(A2) == [
        (180, 300, 540), (300, 420, 660), (420, 540, 780), (540, 660, 900), (660, 780, 1020),
        (780, 900, 1140), (900, 1020, 1260), (1020, 1140, 1380), (1140, 1260, 1500),
        (1260, 1380, 1620), (1380, 1500, 1740),
    ]


def test_a3_pens() -> None:
    assert pens(A3) == [
        (1080, 1200, 1620), (1200, 1500, 1980), (1500, 1860, 2100), (1860, 1980, 2340),
        (1980, 2220, 2520), (2220, 2400, 2700), (2400, 2580, 2880),
    ]


def test_a1_head_at_540() -> None:
    state, _ = run(initial_state(PARAMS), flat_candles([1, 2, 5, 2, 1, 2, 5, 2, 1]), PARAMS)
    assert pen_head(state.pen) == {
        "extending": {"start_time": 300, "end_time": 420, "start_price": 1.0,
                      "end_price": 5.0, "direction": 1},
        "candidate": {"start_time": 420, "end_time": 540, "start_price": 5.0,
                      "end_price": 1.0, "direction": -1},
    }


def test_head_preview_worked_example() -> None:
    # effective [S60(1), R180(7), S300(1)], candles up to 480 (test_pen_head_preview.py)
    majors = [
        {"pivot_time": 60, "pivot_price": 1.0, "direction": "support", "visible_time": 180,
         "window": 2},
        {"pivot_time": 180, "pivot_price": 7.0, "direction": "resistance", "visible_time": 300,
         "window": 2},
        {"pivot_time": 300, "pivot_price": 1.0, "direction": "support", "visible_time": 420,
         "window": 2},
    ]
    lows = {240: 3.0, 300: 1.0, 360: 2.0, 420: 0.5, 480: 4.0}
    highs = {240: 5.0, 300: 2.0, 360: 3.0, 420: 1.0, 480: 9.0}
    candles = [Candle(t, lows[t], highs[t], lows[t], lows[t], 0.0) for t in sorted(lows)]
    head = recompute_pen_head(majors, candles, 480)
    assert head["extending"] == {"start_time": 180, "end_time": 420, "start_price": 7.0,
                                 "end_price": 0.5, "direction": -1}
    assert head["candidate"] == {"start_time": 420, "end_time": 480, "start_price": 0.5,
                                 "end_price": 9.0, "direction": 1}


def test_head_needs_two_effective_pivots() -> None:
    state, _ = run(initial_state(PARAMS), flat_candles([1, 2, 5, 2, 1]), PARAMS)
    assert pen_head(state.pen) == {"extending": None, "candidate": None}
