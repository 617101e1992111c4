"""Draw instructions and the draw delta: ids, styles, retirement of dead zones, cursor."""

from __future__ import annotations

from trade_canvas.candles import Candle
from trade_canvas.factors.draw import (
    Instruction, active_ids, changed, draw_delta_payload, empty_draw_delta, render,
)
from trade_canvas.factors.engine import FactorParams, initial_state, step
from trade_canvas.factors.events import FactorEvent
from trade_canvas.factors.slices import build_view, slices_payload

PARAMS = FactorParams(pivot_window_major=2, pivot_window_minor=1)
SID = "binance:spot:BTC/USDT:1m"
A1 = [1, 2, 5, 2, 1, 2, 5, 2, 1]
A2 = [1, 2, 10, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1, 20, 22, 20, 15, 20, 23, 20, 16, 20, 24, 20, 17,
      20, 25, 20, 18, 20]


def renders(prices: list[float]) -> dict[int, list[Instruction]]:
    candles = [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(prices)]
    state, out = initial_state(PARAMS), {}
    seen: list[FactorEvent] = []
    for candle in candles:
        state, new = step(state, candle, PARAMS)
        seen.extend(new)
        view = build_view(candle.candle_time, seen, candles, state)
        out[candle.candle_time] = render(view, 0)
    return out


def by_id(instructions: list[Instruction]) -> dict[str, dict[str, object]]:
    return {ins.instruction_id: ins.definition() for ins in instructions}


def test_a1_marker_and_pen_styles() -> None:
    drawn = by_id(renders(A1)[540])
    assert drawn["pivot.major:180:resistance:2"] == {
        "type": "marker", "feature": "pivot.major", "time": 180, "position": "aboveBar",
        "color": "#ef4444", "shape": "circle", "text": "", "size": 1.0}
    assert drawn["pivot.minor:300:support:1"]["size"] == 0.5
    pen = drawn["pen.confirmed"]
    assert pen["color"] == "#ffffff" and "lineStyle" not in pen
    assert pen["points"] == [{"time": 180, "value": 5.0}, {"time": 300, "value": 1.0}]
    assert drawn["pen.extending"]["lineStyle"] == "dashed"
    assert drawn["pen.candidate"]["lineStyle"] == "dashed"
    assert drawn["anchor.switch:540:-1:strong_pen"]["shape"] == "arrowDown"


def test_a1_anchor_drawn_from_head_before_any_pen() -> None:
    drawn = by_id(renders(A1)[420])
    assert "pen.confirmed" not in drawn
    current = drawn["anchor.current"]
    assert current["lineStyle"] == "dashed"
    assert [p["time"] for p in current["points"]] == [300, 420]


def test_dead_zone_retires_alive_lines() -> None:
    # Fix (§6.3): the original kept zhongshu.alive:* active after the death and answered 409
    # at 1320/1380; here the alive ids simply leave the render set.
    frames = renders(A2)
    assert {"zhongshu.alive:top", "zhongshu.alive:bottom"} <= set(by_id(frames[1140]))
    for t in (1260, 1320, 1380):
        ids = active_ids(frames[t], 0, t)
        assert not any(i.startswith("zhongshu.alive") for i in ids)
        assert "zhongshu.dead:180:1200:9.000000:1.000000:top" in ids


def test_render_agrees_with_slices() -> None:
    candles = [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(A2)]
    state, events = initial_state(PARAMS), []
    for candle in candles:
        state, new = step(state, candle, PARAMS)
        events.extend(new)
        view = build_view(candle.candle_time, events, candles, state)
        drawn = by_id(render(view, 0))
        body = slices_payload(SID, view)
        anchor = body["snapshots"].get("anchor", {}).get("head", {}).get("current_anchor_ref")
        if anchor is not None:
            assert drawn["anchor.current"]["points"][0]["time"] == anchor["start_time"]
        zones = body["snapshots"].get("zhongshu")
        expected = set()
        if zones:
            for zone in zones["history"]["dead"]:
                base = (f"zhongshu.dead:{zone['start_time']}:{zone['end_time']}:"
                        f"{zone['zg']:.6f}:{zone['zd']:.6f}")
                expected |= {f"{base}:top", f"{base}:bottom"}
            if zones["head"]["alive"]:
                expected |= {"zhongshu.alive:top", "zhongshu.alive:bottom"}
        assert {i for i in drawn if i.startswith("zhongshu.")} == expected


def test_changed_and_window() -> None:
    frames = renders(A1)
    first = frames[540]
    latest = {ins.instruction_id: ins.definition_json for ins in first}
    assert changed(latest, first) == []
    assert {i.instruction_id for i in changed({}, first)} == set(latest)
    # only markers timed in [400, 540] and polylines with a point there stay active
    assert active_ids(first, 400, 540) == [
        "anchor.switch:540:-1:strong_pen", "pen.candidate", "pen.extending",
        "pivot.major:420:resistance:2", "pivot.minor:420:resistance:1"]


def test_draw_delta_cursor_is_bounded_and_idempotent() -> None:
    patch = [{"version_id": 3, "instruction_id": "pen.confirmed", "kind": "polyline",
              "visible_time": 540, "definition": {}}]
    body = draw_delta_payload(SID, 540, 0, patch, ["pen.confirmed"])
    assert body["next_cursor"] == {"version_id": 3, "point_time": None}
    assert body["to_candle_id"] == f"{SID}:540" and body["series_points"] == {}
    again = draw_delta_payload(SID, 540, 3, [], ["pen.confirmed"])
    assert again["instruction_catalog_patch"] == [] and again["next_cursor"]["version_id"] == 3
    assert empty_draw_delta(SID, 7)["next_cursor"] == {"version_id": 7, "point_time": None}
