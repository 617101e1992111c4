"""Slices read model and catalog: Appendix A.1/A.2 slices, catalog shape, fingerprint."""

from __future__ import annotations

import pytest

from tests.unit.test_factor_engine import random_walk
from trade_canvas.candles import Candle
from trade_canvas.factors import FACTOR_NAMES, catalog, engine
from trade_canvas.factors.engine import FactorParams, FactorState, initial_state, step
from trade_canvas.factors.events import FactorEvent
from trade_canvas.factors.fingerprint import factor_sources, fingerprint
from trade_canvas.factors.slices import build_view, empty_slices, replay_anchor, slices_payload

PARAMS = FactorParams(pivot_window_major=2, pivot_window_minor=1)
SID = "binance:futures:BTC/USDT:1m"
A1 = [1, 2, 5, 2, 1, 2, 5, 2, 1]
A2 = [1, 2, 10, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1, 20, 22, 20, 15, 20, 23, 20, 16, 20, 24, 20, 17,
      20, 25, 20, 18, 20]


def ingest(prices: list[float], until: int) -> tuple[FactorState, list[FactorEvent], list[Candle]]:
    candles = [Candle(60 * (i + 1), p, p, p, p, 0.0) for i, p in enumerate(prices)]
    candles = [c for c in candles if c.candle_time <= until]
    state, events = initial_state(PARAMS), []
    for candle in candles:
        state, new = step(state, candle, PARAMS)
        events.extend(new)
    return state, events, candles


def slices_at(prices: list[float], at: int) -> dict[str, object]:
    state, events, candles = ingest(prices, at)
    return slices_payload(SID, build_view(at, events, candles, state))


def test_nothing_before_the_first_pivot() -> None:
    body = slices_at(A1, 240)
    assert body["factors"] == [] and body["snapshots"] == {}
    assert body["candle_id"] == f"{SID}:240"


def test_pivot_visible_at_300() -> None:
    body = slices_at(A1, 300)
    assert body["factors"] == ["pivot"]
    snapshot = body["snapshots"]["pivot"]
    assert [p["pivot_time"] for p in snapshot["history"]["major"]] == [180]
    assert snapshot["head"] == {}
    assert snapshot["meta"] == {"series_id": SID, "epoch": 0, "at_time": 300,
                                "candle_id": f"{SID}:300", "factor_name": "pivot"}


def test_a1_slices_at_540() -> None:
    body = slices_at(A1, 540)
    # sr is not built here, so the original's [pivot, pen, anchor, sr] loses its last item
    assert body["factors"] == ["pivot", "pen", "anchor"]
    pen = body["snapshots"]["pen"]
    assert pen["head"]["extending"]["start_time"] == 300
    assert pen["head"]["candidate"] == {"start_time": 420, "end_time": 540, "start_price": 5.0,
                                        "end_price": 1.0, "direction": -1}
    current = body["snapshots"]["anchor"]["head"]["current_anchor_ref"]
    assert (current["kind"], current["start_time"], current["end_time"]) == ("confirmed", 180, 300)


def test_a2_slices_at_1140() -> None:
    body = slices_at(A2, 1140)
    alive = body["snapshots"]["zhongshu"]["head"]["alive"]
    assert alive == [{"start_time": 180, "end_time": 1140, "zg": 9.0, "zd": 1.0,
                      "entry_direction": -1, "formed_time": 840,
                      "formed_reason": "price_cross", "death_time": None,
                      "visible_time": 1140}]
    current = body["snapshots"]["anchor"]["head"]["current_anchor_ref"]
    assert (current["kind"], current["start_time"], current["end_time"]) == ("candidate", 780, 900)
    head = body["snapshots"]["pen"]["head"]
    assert (head["extending"]["start_price"], head["extending"]["end_price"]) == (22.0, 15.0)
    assert (head["candidate"]["start_time"], head["candidate"]["end_time"]) == (1020, 1140)


def test_a2_slices_at_1260_zone_is_dead() -> None:
    body = slices_at(A2, 1260)
    zhongshu = body["snapshots"]["zhongshu"]
    assert zhongshu["head"] == {"alive": []}
    assert [d["death_time"] for d in zhongshu["history"]["dead"]] == [1260]


def test_past_time_from_ledger_only() -> None:
    _, events, candles = ingest(A2, 1800)
    body = slices_payload(SID, build_view(1140, events, candles))
    assert body["snapshots"]["zhongshu"]["head"]["alive"][0]["formed_time"] == 840
    assert all(p["visible_time"] <= 1140 for p in body["snapshots"]["pen"]["history"]["confirmed"])


def test_empty_slices() -> None:
    assert empty_slices(SID, 99) == {"schema_version": 1, "series_id": SID, "at_time": 99,
                                     "candle_id": None, "factors": [], "snapshots": {}}


def test_catalog_shape_and_order() -> None:
    body = catalog()
    assert body["schema_version"] == 1
    assert [f["key"] for f in body["factors"]] == list(FACTOR_NAMES) == [
        "pivot", "pen", "zhongshu", "anchor"]
    pivot = body["factors"][0]
    assert pivot == {"key": "pivot", "label": "Pivot", "default_visible": True, "sub_features": [
        {"key": "pivot.major", "label": "Major", "default_visible": True},
        {"key": "pivot.minor", "label": "Minor", "default_visible": False}]}
    assert [s["key"] for s in body["factors"][1]["sub_features"]] == [
        "pen.confirmed", "pen.extending", "pen.candidate"]


def test_fingerprint_is_stable_and_sensitive() -> None:
    sources = factor_sources()
    base = fingerprint(PARAMS, "", sources)
    assert base == fingerprint(PARAMS, "", dict(sources)) == fingerprint(PARAMS, "")
    assert len(base) == 64
    assert fingerprint(PARAMS, "v2", sources) != base
    assert fingerprint(FactorParams(3, 1), "", sources) != base
    changed = dict(sources, **{next(iter(sources)): "# edited"})
    assert fingerprint(PARAMS, "", changed) != base


@pytest.mark.parametrize("params", [FactorParams(), FactorParams(3, 1), FactorParams(2, 1)])
def test_replay_anchor_equals_the_engine_anchor_at_every_past_time(params: FactorParams) -> None:
    # A past read has no engine state; the ledger only records pointer changes. Replaying the
    # silent same-pointer updates since the last switch, from the events and candles since the
    # pointer's start (what a read fetches), gives the engine's anchor at each time.
    for seed in range(8):
        candles = random_walk(seed, 300)
        state, events = engine.initial_state(params), []
        for candle in candles:
            state, new = engine.step(state, candle, params)
            events += new
            switches = [e for e in events if e.kind == "anchor.switch"]
            if not switches:
                continue
            last = switches[-1].payload()
            first = min(last["new_anchor"]["start_time"], last["switch_time"])
            rows = [e for e in events if e.candle_time >= first]
            since = [c for c in candles if first <= c.candle_time <= candle.candle_time]
            assert replay_anchor(last, rows, since, candle.candle_time) == state.anchor.current
