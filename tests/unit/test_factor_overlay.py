"""Overlay (incremental draw window) equals a full render of the same window, fold by fold."""

from __future__ import annotations

import pytest

from tests.unit.test_factor_engine import load_recording, random_walk
from trade_canvas.factors import draw, engine
from trade_canvas.factors.engine import FactorParams
from trade_canvas.factors.overlay import Overlay
from trade_canvas.factors.slices import build_view

STEP = 60


def reference(window_events, state, window):
    head = state.head_time
    start = head - window * STEP
    rows = [e for e in window_events if start <= e.candle_time <= head]
    current = draw.render(build_view(head, rows, (), state), start)
    return current, draw.active_ids(current, start, head)


def check_folds(candles, params, window, batch):
    overlay = Overlay(STEP, window)
    state = engine.initial_state(params)
    events_so_far = []
    drawn: dict[str, str] = {}
    active = set()
    for i in range(0, len(candles), batch):
        state, events = engine.run(state, candles[i:i + batch], params)
        events_so_far += events
        change = overlay.advance(state, events)
        current, active_ref = reference(events_so_far, state, window)
        expected_changed = [ins.instruction_id for ins in draw.changed(drawn, current)]
        assert [ins.instruction_id for ins in change.changed] == expected_changed
        drawn = {ins.instruction_id: ins.definition_json for ins in current}
        assert {k: v.definition_json for k, v in overlay.current.items()} == drawn
        assert overlay.active_ids() == active_ref
        # a client applying the pushed diff holds the same active set
        active = (active | {ins.instruction_id for ins in change.changed}
                  | set(change.added_ids)) - set(change.removed_ids)
        assert active == set(active_ref)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window,batch", [(30, 1), (80, 1), (50, 7)])
def test_overlay_matches_full_render_on_random_walks(seed: int, window: int, batch: int) -> None:
    check_folds(random_walk(seed, 500), FactorParams(3, 1), window, batch)


def test_overlay_matches_full_render_on_real_data_with_a_short_window() -> None:
    check_folds(load_recording(1500), FactorParams(), 300, 1)


def test_load_resumes_the_same_overlay() -> None:
    params = FactorParams(3, 1)
    candles = random_walk(3, 300)
    state, events = engine.run(engine.initial_state(params), candles, params)
    resumed = Overlay(STEP, 40)
    start = state.head_time - 40 * STEP
    resumed.load([e for e in events if e.candle_time >= start], state)
    current, active_ref = reference(events, state, 40)
    assert {k: v.definition_json for k, v in resumed.current.items()} == {
        ins.instruction_id: ins.definition_json for ins in current}
    assert resumed.active_ids() == active_ref
