"""Anchor factor: switches of Appendix A.2/A.3, the strict gate and history normalisation."""

from __future__ import annotations

from trade_canvas.candles import Candle
from trade_canvas.factors.anchor import AnchorState, PenRef, advance
from trade_canvas.factors.engine import FactorParams, initial_state, run
from trade_canvas.factors.pen import Pen
from trade_canvas.factors.slices import anchor_history

PARAMS = FactorParams(pivot_window_major=2, pivot_window_minor=1)
A2 = [1, 2, 10, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1, 20, 22, 20, 15, 20, 23, 20, 16, 20, 24, 20, 17,
      20, 25, 20, 18, 20]
A3 = [100, 95, 94, 92, 90, 87, 88, 83, 80, 77, 72, 77, 72, 73, 72, 73, 70, 68, 70, 71, 68, 66,
      64, 65, 63, 64, 65, 70, 72, 77, 82, 79, 74, 75, 78, 80, 83, 82, 83, 80, 81, 80, 83, 78,
      77, 72, 75, 73, 68, 66]


def switches(prices: list[float]) -> list[tuple[int, str, str, int, int]]:
    candles = [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(prices)]
    _, events = run(initial_state(PARAMS), candles, PARAMS)
    rows = [e.payload() for e in events if e.kind == "anchor.switch"]
    return [
        (r["switch_time"], r["reason"], r["new_anchor"]["kind"], r["new_anchor"]["start_time"],
         r["new_anchor"]["end_time"])
        for r in rows
    ]


def test_a1_first_switch() -> None:
    assert switches([1, 2, 5, 2, 1, 2, 5, 2, 1]) == [(540, "strong_pen", "confirmed", 180, 300)]


def test_a2_switches() -> None:
    # 840: the zone's entry is the current pointer (180), so no zhongshu_entry switch
    assert switches(A2) == [
        (540, "strong_pen", "confirmed", 180, 300),
        (840, "strong_pen", "candidate", 540, 840),
        (1020, "strong_pen", "candidate", 780, 900),
    ]


def test_a3_switches_one_strong_pen_per_tick() -> None:
    rows = switches(A3)
    assert rows[:2] == [
        (1620, "strong_pen", "candidate", 1200, 1500),
        (1980, "strong_pen", "candidate", 1500, 1860),
    ]
    times = [r[0] for r in rows if r[1] == "strong_pen"]
    assert len(times) == len(set(times))


def ref(start: int, end: int, p0: float, p1: float) -> PenRef:
    return PenRef("confirmed", start, end, 1 if p1 > p0 else -1, p0, p1)


def test_strength_gate_is_strict() -> None:
    state = AnchorState(ref(0, 10, 0, 5), 5.0)
    equal = Pen(10, 20, 5, 0, -1, 30)
    new_state, events = advance(state, 30, (equal,), [], None)
    assert events == [] and new_state is state
    stronger = Pen(10, 20, 5, -1, -1, 30)
    new_state, events = advance(state, 30, (stronger,), [], None)
    assert [e.payload()["reason"] for e in events] == ["strong_pen"]
    assert new_state.strength == 6


def test_none_baseline_always_passes_and_same_pointer_is_silent() -> None:
    first, events = advance(AnchorState(), 30, (Pen(0, 10, 0, 1, 1, 30),), [], None)
    assert len(events) == 1 and first.strength == 1
    longer = Pen(0, 20, 0, 3, 1, 40)
    second, events = advance(first, 40, (longer,), [], None)
    assert events == [] and second.current is not None and second.current.end_time == 20


def test_zhongshu_entry_switch_sets_strength_even_lower() -> None:
    state = AnchorState(ref(0, 10, 0, 9), 9.0)
    entry = Pen(10, 20, 9, 7, -1, 30)
    new_state, events = advance(state, 40, (), [entry], None)
    assert [e.event_key for e in events] == ["zhongshu_entry:40:10:20:-1"]
    assert new_state.strength == 2


def test_history_normalisation() -> None:
    def row(t: int, start: int) -> dict[str, object]:
        return {"switch_time": t, "visible_time": t, "reason": "strong_pen",
                "new_anchor": {"start_time": start}}

    anchors, kept = anchor_history([row(10, 1), row(20, 2), row(20, 3), row(30, 1), row(40, 4)])
    assert [a["start_time"] for a in anchors] == [1, 3, 4]
    assert [r["switch_time"] for r in kept] == [10, 20, 40]
