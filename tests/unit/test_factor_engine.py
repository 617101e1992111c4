"""Engine properties: one-by-one == any batch split == full recompute, JSON resume, invariants."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from trade_canvas.candles import Candle
from trade_canvas.errors import Conflict, InvalidInput
from trade_canvas.factors.engine import (
    FactorParams, FactorState, initial_state, run, state_from_json, state_to_json, step,
)
from trade_canvas.factors.events import FactorEvent, event_from_dict
from trade_canvas.factors.slices import build_view

RECORDING = (
    Path(__file__).resolve().parents[1]
    / "fakes" / "recordings" / "spot_BTCUSDT_1m_2020-01-01_2020-01-03.csv"
)


def load_recording(limit: int | None = None) -> list[Candle]:
    with RECORDING.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    return [
        Candle(int(r["open_time_ms"]) // 1000, float(r["open"]), float(r["high"]),
               float(r["low"]), float(r["close"]), float(r["volume"]))
        for r in rows
    ]


def random_walk(seed: int, count: int) -> list[Candle]:
    rng = random.Random(seed)
    price, candles = 100.0, []
    for i in range(count):
        close = max(1.0, price + rng.choice([-2, -1, -1, 0, 1, 1, 2]) * rng.random())
        close = round(close, 1)  # rounding makes ties and plateaus common
        high = max(price, close) + round(rng.random(), 1)
        low = min(price, close) - round(rng.random(), 1)
        candles.append(Candle(60 * (i + 1), price, high, low, close, 1.0))
        price = close
    return candles


def one_by_one(candles: list[Candle], params: FactorParams) -> tuple[FactorState, list[FactorEvent]]:
    state, events = initial_state(params), []
    for candle in candles:
        state, new = step(state, candle, params)
        events.extend(new)
    return state, events


def random_batches(
    candles: list[Candle], params: FactorParams, rng: random.Random, resume_json: bool
) -> tuple[FactorState, list[FactorEvent]]:
    state, events, i = initial_state(params), [], 0
    while i < len(candles):
        size = rng.randint(1, 60)
        state, new = run(state, candles[i : i + size], params)
        events.extend(new)
        if resume_json:
            state = state_from_json(state_to_json(state))
        i += size
    return state, events


CASES = [(seed, FactorParams(w_major, w_minor)) for seed, w_major, w_minor in
         [(1, 3, 1), (2, 2, 1), (3, 5, 2), (4, 1, 3), (5, 8, 3), (6, 3, 1)]]


@pytest.mark.parametrize(("seed", "params"), CASES)
def test_random_walk_incremental_equals_batches_equals_full(
    seed: int, params: FactorParams
) -> None:
    candles = random_walk(seed, 600)
    full_state, full_events = run(initial_state(params), candles, params)
    single_state, single_events = one_by_one(candles, params)
    rng = random.Random(seed * 7919)
    batch_state, batch_events = random_batches(candles, params, rng, resume_json=False)
    json_state, json_events = random_batches(candles, params, rng, resume_json=True)
    assert single_events == full_events == batch_events == json_events
    assert single_state == full_state == batch_state == json_state
    kinds = {e.kind for e in full_events}
    assert {"pivot.major", "pen.confirmed", "anchor.switch"} <= kinds


@pytest.mark.parametrize("params", [FactorParams(), FactorParams(5, 2), FactorParams(3, 1)])
def test_real_data_incremental_equals_batches_equals_full(params: FactorParams) -> None:
    candles = load_recording()
    full_state, full_events = run(initial_state(params), candles, params)
    single_state, single_events = one_by_one(candles, params)
    batch_state, batch_events = random_batches(candles, params, random.Random(11), True)
    assert single_events == full_events == batch_events
    assert single_state == full_state == batch_state
    assert any(e.kind == "zhongshu.dead" for e in full_events) or params.pivot_window_major > 10


def test_json_round_trip_mid_stream_then_continue() -> None:
    params = FactorParams(3, 1)
    candles = load_recording(1500)
    expected_state, expected_events = run(initial_state(params), candles, params)
    for cut in (1, 7, 333, 1000, 1499):
        head, head_events = run(initial_state(params), candles[:cut], params)
        restored = state_from_json(state_to_json(head))
        assert restored == head
        final, tail_events = run(restored, candles[cut:], params)
        assert head_events + tail_events == expected_events
        assert final == expected_state


def test_events_are_unique_time_keyed_and_json_round_trip() -> None:
    params = FactorParams(3, 1)
    _, events = run(initial_state(params), random_walk(9, 800), params)
    keys = [(e.factor_name, e.event_key) for e in events]
    assert len(keys) == len(set(keys))
    assert all(e.payload()["visible_time"] == e.candle_time for e in events)
    assert [event_from_dict(e.to_dict()) for e in events] == events
    assert [e.candle_time for e in events] == sorted(e.candle_time for e in events)


def test_zone_invariants() -> None:
    params = FactorParams(2, 1)
    _, events = run(initial_state(params), load_recording(), params)
    zones = [e.payload() for e in events if e.factor_name == "zhongshu"]
    assert zones
    for zone in zones:
        assert zone["zd"] <= zone["zg"]
        assert zone["start_time"] <= zone["formed_time"] <= zone["visible_time"]
        if "death_time" in zone:
            assert zone["death_time"] == zone["visible_time"]


def test_reingest_is_a_no_op() -> None:
    params = FactorParams(2, 1)
    candles = random_walk(3, 100)
    state, _ = run(initial_state(params), candles, params)
    again, events = run(state, candles, params)
    assert again is state and events == []


def test_other_params_conflict() -> None:
    state = initial_state(FactorParams(2, 1))
    with pytest.raises(Conflict):
        step(state, Candle(60, 1, 1, 1, 1, 0), FactorParams(3, 1))


@pytest.mark.parametrize("bad", ["", "[]", '{"schema_version": 99}', '{"schema_version": 1}'])
def test_bad_state_json(bad: str) -> None:
    with pytest.raises(InvalidInput):
        state_from_json(bad)


@pytest.mark.parametrize("window", [0, -1, True])
def test_params_are_validated(window: int) -> None:
    with pytest.raises(InvalidInput):
        FactorParams(pivot_window_major=window)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_heads_from_ledger_match_heads_from_state(seed: int) -> None:
    params = FactorParams(3, 1)
    candles = random_walk(seed, 400)
    state, events = initial_state(params), []
    for candle in candles:
        state, new = step(state, candle, params)
        events.extend(new)
        live = build_view(candle.candle_time, events, candles, state)
        ledger = build_view(candle.candle_time, events, candles, None)
        assert ledger.pen_head == live.pen_head
        assert ledger.alive == live.alive
