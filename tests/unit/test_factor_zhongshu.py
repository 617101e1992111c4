"""Zhongshu factor: the semantic cases of factors.md §1.3 and the Appendix A.2 zones."""

from __future__ import annotations

from trade_canvas.candles import Candle
from trade_canvas.factors.engine import FactorParams, initial_state, run
from trade_canvas.factors.pen import Pen
from trade_canvas.factors.zhongshu import ZhongshuState, advance

PARAMS = FactorParams(pivot_window_major=2, pivot_window_minor=1)
A2 = [1, 2, 10, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1, 20, 22, 20, 15, 20, 23, 20, 16, 20, 24, 20, 17,
      20, 25, 20, 18, 20]


def pen(start: int, end: int, p0: float, p1: float) -> Pen:
    return Pen(start, end, p0, p1, 1 if p1 > p0 else -1, end + 100)


def feed(pens: list[Pen]) -> tuple[ZhongshuState, list[str], list[dict[str, object]]]:
    state, kinds, payloads = ZhongshuState(), [], []
    for p in pens:
        # a candle that stays inside every range, so only the pens decide
        state, events, _ = advance(state, (p,), p.visible_time, p.high, p.high)
        kinds += [e.kind for e in events]
        payloads += [e.payload() for e in events]
    return state, kinds, payloads


def test_formation_on_p3_and_death_above_zg() -> None:
    pens = [pen(0, 10, 90, 110), pen(10, 20, 130, 100), pen(20, 30, 105, 125),
            pen(30, 40, 140, 102)]
    state, kinds, payloads = feed(pens)
    assert kinds == ["zhongshu.formed"]
    assert state.alive is not None
    assert (state.alive.zd, state.alive.zg) == (105, 125)
    assert state.alive.formed_time == pens[-1].visible_time
    assert state.alive.formed_reason == "pen_confirmed"
    state, kinds, payloads = feed(pens + [pen(40, 50, 130, 150)])
    assert kinds == ["zhongshu.formed", "zhongshu.dead"]
    dead = payloads[-1]
    assert dead["death_time"] == dead["visible_time"] == 150
    assert state.alive is None


def test_four_way_overlap_is_required() -> None:
    pens = [pen(10, 20, 100, 90), pen(20, 30, 90, 130), pen(30, 40, 130, 116),
            pen(40, 50, 116, 124), pen(50, 60, 124, 110)]
    state, kinds, payloads = feed(pens)
    assert kinds == ["zhongshu.formed"]
    assert state.alive is not None
    assert (state.alive.start_time, state.alive.zd, state.alive.zg) == (20, 116, 124)


def test_price_cross_forms_before_p3_is_confirmed() -> None:
    pens = [pen(100, 200, 100, 130), pen(200, 300, 130, 110), pen(300, 320, 110, 125)]
    state, _, _ = feed(pens)
    state, events, formed = advance(state, (), 330, 124.0, 115.0)
    assert events == [] and state.alive is None
    state, events, formed = advance(state, (), 350, 120.0, 109.0)
    assert [e.kind for e in events] == ["zhongshu.formed"]
    assert formed == [pens[0]]
    zone = state.alive
    assert zone is not None
    assert (zone.formed_time, zone.formed_reason, zone.zd, zone.zg) == (350, "price_cross", 110, 125)
    # P3's confirmation extends the zone without a death check
    state, events, _ = advance(state, (pen(320, 360, 125, 95),), 420, 100.0, 95.0)
    assert events == [] and state.alive is not None and state.alive.awaiting_p3 is None


def zone_events(prices: list[float]) -> list[dict[str, object]]:
    candles = [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(prices)]
    _, events = run(initial_state(PARAMS), candles, PARAMS)
    return [dict(e.payload(), kind=e.kind) for e in events if e.factor_name == "zhongshu"]


def test_a2_zones() -> None:
    formed1, dead1, formed2 = zone_events(A2)
    assert formed1 == {
        "kind": "zhongshu.formed", "start_time": 180, "end_time": 840, "zg": 9.0, "zd": 1.0,
        "entry_direction": -1, "formed_time": 840, "formed_reason": "price_cross",
        "visible_time": 840,
    }
    assert dead1 == {
        "kind": "zhongshu.dead", "start_time": 180, "end_time": 1200, "zg": 9.0, "zd": 1.0,
        "entry_direction": -1, "formed_time": 840, "formed_reason": "price_cross",
        "death_time": 1260, "visible_time": 1260,
    }
    assert (formed2["start_time"], formed2["zg"], formed2["zd"], formed2["entry_direction"],
            formed2["formed_time"], formed2["formed_reason"]) == (
        780, 22.0, 16.0, 1, 1500, "pen_confirmed")


def test_a2_dead_key() -> None:
    candles = [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(A2)]
    _, events = run(initial_state(PARAMS), candles, PARAMS)
    keys = [e.event_key for e in events if e.kind == "zhongshu.dead"]
    assert keys == ["dead:180:840:1260:9.00000000:1.00000000:price_cross"]
