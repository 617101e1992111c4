"""``GET /api/draw/delta`` read at a past time equals what the live overlay drew at that time.

A FactorActor folds random walks (candle by candle, and in batches) into the in-memory store;
after each fold the active ids a ``draw: true`` client holds are recorded. Once the ledger has
reached the end, ``factor_reads.draw_delta`` is read at every recorded time: with the engine
state gone, the anchor must be the engine's anchor at that time, silent same-pointer updates
included (they decide which switch is drawn as ``anchor.history`` and whether the head
candidate replaces ``anchor.current``).
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.fakes import factor_golden as golden
from tests.fakes.store import MemoryCandleStore
from tests.unit.test_factor_engine import random_walk
from trade_canvas.actors.factor import DRAW_WINDOW_CANDLES, FactorActor
from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.actors.messages import CandlesStored
from trade_canvas.factors.engine import FactorParams
from trade_canvas.runtime import factor_reads


def live_then_past(
    seed: int, count: int, params: FactorParams, batch: int
) -> list[tuple[int, list[str], list[str]]]:
    """Return (time, past read ids, live ids) for every fold head where the two differ."""
    store, client = MemoryCandleStore(), golden.DrawClient()
    record = ChildRecord(kind="factor", series_id=golden.SERIES.text, start=lambda link: None)  # type: ignore[arg-type,return-value]
    lookup = lambda kind: client if kind == "hub" else None  # noqa: E731
    options = dataclasses.replace(golden.OPTIONS, params=params)
    actor = FactorActor(golden.SERIES, store, lookup, ChildLink(record, None), options)
    actor.on_start()
    candles = random_walk(seed, count)
    live: dict[int, list[str]] = {}
    for i in range(0, len(candles), batch):
        chunk = candles[i:i + batch]
        store.upsert_candles(golden.SERIES.text, chunk)
        actor.on_receive(CandlesStored(tuple(chunk)))
        golden.drain(actor)
        live[chunk[-1].candle_time] = sorted(client.active)
    assert store.factor_head_time(golden.SERIES.text) == candles[-1].candle_time
    differ = []
    for at, ids in live.items():
        body = factor_reads.draw_delta(store, golden.SERIES, 0, DRAW_WINDOW_CANDLES, at)
        assert body["to_candle_time"] == at
        if body["active_ids"] != ids:
            differ.append((at, body["active_ids"], ids))
    return differ


# Seeds and windows where the last switch's new_anchor was a shorter candidate than the
# anchor the engine held later (a past read drew that switch as anchor.history, or the head
# candidate as anchor.current, where the live overlay did not); plus a few others.
@pytest.mark.parametrize("seed,params", [
    (12, FactorParams()), (1, FactorParams(3, 1)), (1, FactorParams(2, 1)), (17, FactorParams(3, 1)),
])
@pytest.mark.parametrize("batch", [1, 9])
def test_past_draw_delta_equals_the_live_overlay(seed: int, params: FactorParams, batch: int) -> None:
    assert live_then_past(seed, 300, params, batch) == []
