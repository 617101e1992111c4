"""FactorActor: unstarted handlers on the in-memory store, then one started actor."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pykka
import pytest

from tests.fakes.store import MemoryCandleStore
from tests.unit.test_factor_engine import random_walk
from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.actors import factor as factor_module
from trade_canvas.actors.factor import FactorActor, FactorOptions
from trade_canvas.actors.messages import Broadcast, CandlesStored, DrawChanged, FoldPending
from trade_canvas.factors import engine
from trade_canvas.factors.engine import FactorParams
from trade_canvas.series import parse_series_id

SERIES = parse_series_id("binance:spot:BTC/USDT:1m")
S = SERIES.text
PARAMS = FactorParams(3, 1)
# one slice per chunk here (slice_s far above any fold); slicing has its own test
OPTIONS = FactorOptions(PARAMS, "fp-1", rebuild=True, keep_candles=150, chunk=40, slice_s=3600.0)
CANDLES = random_walk(7, 400)


class Hub:
    """Records what the actor tells the hub."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def tell(self, message: Any) -> None:
        assert isinstance(message, (Broadcast, DrawChanged))
        with self.lock:
            self.messages.append(message.message)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m["type"] == kind]


def make_actor(store: MemoryCandleStore, hub: Hub, options: FactorOptions = OPTIONS) -> FactorActor:
    record = ChildRecord(kind="factor", series_id=S, start=lambda link: None)  # type: ignore[arg-type,return-value]
    lookup = lambda kind: hub if kind == "hub" else None  # noqa: E731
    return FactorActor(SERIES, store, lookup, ChildLink(record, None), options)


def drain(actor: FactorActor) -> int:
    """Handle the continuation messages an unstarted actor told itself; return how many."""
    count = 0
    while not actor.actor_inbox.empty():
        actor.on_receive(actor.actor_inbox.get_nowait().message)
        count += 1
    return count


def ingest(store: MemoryCandleStore, actor: FactorActor, candles) -> None:
    store.upsert_candles(S, candles)
    actor.on_receive(CandlesStored(tuple(candles)))
    drain(actor)


def keys(events) -> list[tuple[str, str]]:
    return [(e.factor_name, e.event_key) for e in events]


def test_first_ingest_is_computed_in_chunks_without_rebuild_message() -> None:
    store, hub = MemoryCandleStore(), Hub()
    actor = make_actor(store, hub)
    actor.on_start()
    store.upsert_candles(S, CANDLES)
    actor.on_receive(CandlesStored(tuple(CANDLES)))
    assert drain(actor) == len(CANDLES) // OPTIONS.chunk + 1
    state, events = engine.run(engine.initial_state(PARAMS), CANDLES, PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)
    assert store.read_factor_snapshot(S).head_time == CANDLES[-1].candle_time
    assert engine.state_from_json(store.read_factor_snapshot(S).state_json) == state
    assert hub.of_type("system") == []
    deltas = hub.of_type("draw_delta")
    assert len(deltas) == len(CANDLES) // OPTIONS.chunk
    for before, after in zip(deltas, deltas[1:]):  # each push continues the previous cursor
        assert after["from_version_id"] == before["next_cursor"]["version_id"]
    assert deltas[-1]["to_candle_time"] == CANDLES[-1].candle_time
    assert deltas[-1]["next_cursor"]["version_id"] == store.last_draw_version(S)
    assert actor.status()["lag_seconds"] == 0


def test_small_batches_fold_at_once_and_old_candles_are_skipped() -> None:
    store, hub = MemoryCandleStore(), Hub()
    actor = make_actor(store, hub)
    actor.on_start()
    for i in range(0, 200, 10):
        ingest(store, actor, CANDLES[i:i + 10])
    assert len(hub.of_type("draw_delta")) >= 15
    ingest(store, actor, CANDLES[190:200])  # rewrite of folded history: ignored, counted
    assert actor.status()["old_candles_skipped"] == 10
    _, events = engine.run(engine.initial_state(PARAMS), CANDLES[:200], PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)


def test_restart_resumes_from_the_snapshot_and_catches_up() -> None:
    store, hub = MemoryCandleStore(), Hub()
    first = make_actor(store, hub)
    first.on_start()
    ingest(store, first, CANDLES[:250])
    store.upsert_candles(S, CANDLES[250:])  # stored while the factor actor was down
    batches = store.saved_batches
    second = make_actor(store, hub)
    second.on_start()
    assert second.state.head_time == CANDLES[249].candle_time  # resumed, nothing replayed
    assert second.status()["lag_candles"] == 150
    drain(second)
    assert store.saved_batches - batches == 150 // OPTIONS.chunk + 1
    _, events = engine.run(engine.initial_state(PARAMS), CANDLES, PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)
    assert hub.of_type("system") == []


def test_changed_fingerprint_rebuilds_from_newest_candles_once() -> None:
    store, hub = MemoryCandleStore(), Hub()
    first = make_actor(store, hub)
    first.on_start()
    ingest(store, first, CANDLES)
    changed = dataclasses.replace(OPTIONS, fingerprint="fp-2")
    actor = make_actor(store, hub, changed)
    actor.on_start()
    assert store.read_factor_snapshot(S) is None  # cleared, rebuild pending
    drain(actor)
    [message] = hub.of_type("system")
    assert message["event"] == "factor.rebuild" and message["series_id"] == S
    assert message["data"] == {"series_id": S, "fingerprint": "fp-2", "candles": 150}
    _, events = engine.run(engine.initial_state(PARAMS), CANDLES[-150:], PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)
    assert store.read_factor_snapshot(S).fingerprint == "fp-2"
    assert store.count(S) == len(CANDLES)  # candles are never deleted
    again = make_actor(store, hub, changed)
    again.on_start()
    assert drain(again) == 0 and len(hub.of_type("system")) == 1


def test_rebuild_off_continues_old_ledger_or_stalls_on_other_params() -> None:
    store, hub = MemoryCandleStore(), Hub()
    first = make_actor(store, hub)
    first.on_start()
    ingest(store, first, CANDLES[:200])
    off = dataclasses.replace(OPTIONS, fingerprint="fp-2", rebuild=False)
    actor = make_actor(store, hub, off)
    actor.on_start()
    ingest(store, actor, CANDLES[200:210])
    assert store.read_factor_snapshot(S).fingerprint == "fp-1"
    assert store.factor_head_time(S) == CANDLES[209].candle_time
    other = dataclasses.replace(off, params=FactorParams(4, 1))
    stalled = make_actor(store, hub, other)
    stalled.on_start()
    ingest(store, stalled, CANDLES[210:220])
    assert store.factor_head_time(S) == CANDLES[209].candle_time
    assert "pivot windows" in stalled.status()["stalled"]
    assert hub.of_type("system") == []


@pytest.fixture
def started() -> Any:
    refs: list[pykka.ActorRef[Any]] = []

    def start(store: MemoryCandleStore, hub: Hub) -> pykka.ActorRef[Any]:
        record = ChildRecord(kind="factor", series_id=S, start=lambda link: None)  # type: ignore[arg-type,return-value]
        ref = FactorActor.start(SERIES, store, lambda kind: hub, ChildLink(record, None), OPTIONS)
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        ref.stop()


def test_started_actor_folds_stored_candles(started) -> None:
    store, hub = MemoryCandleStore(), Hub()
    ref = started(store, hub)
    store.upsert_candles(S, CANDLES)
    ref.tell(CandlesStored(tuple(CANDLES)))
    deadline = time.monotonic() + 5
    while store.factor_head_time(S) != CANDLES[-1].candle_time and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.factor_head_time(S) == CANDLES[-1].candle_time
    assert hub.of_type("draw_delta")


def test_fast_writes_are_coalesced_into_one_fold() -> None:
    store, hub = MemoryCandleStore(), Hub()
    now = [100.0]
    options = dataclasses.replace(OPTIONS, coalesce_s=3600.0)  # the timer never fires here
    record = ChildRecord(kind="factor", series_id=S, start=lambda link: None)  # type: ignore[arg-type,return-value]
    actor = FactorActor(SERIES, store, lambda kind: hub if kind == "hub" else None,
                        ChildLink(record, None), options, clock=lambda: now[0])
    actor.on_start()
    first, rest = CANDLES[:1], CANDLES[1:30]
    ingest(store, actor, first)  # idle series: folded at once
    assert store.factor_head_time(S) == first[0].candle_time
    for candle in rest:  # within the interval: kept for one later fold
        ingest(store, actor, [candle])
    assert store.factor_head_time(S) == first[0].candle_time
    assert actor.status()["pending_candles"] == len(rest)
    now[0] += 3600.0
    actor.on_receive(FoldPending())
    assert store.factor_head_time(S) == rest[-1].candle_time
    assert actor.status()["coalesced_folds"] == 1
    state, events = engine.run(engine.initial_state(PARAMS), CANDLES[:30], PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)
    # a candle that arrives once the interval has passed is folded at once again
    now[0] += 3600.0
    ingest(store, actor, CANDLES[30:31])
    assert store.factor_head_time(S) == CANDLES[30].candle_time


def test_catch_up_folds_in_time_bounded_slices_and_yields_between_them() -> None:
    store, hub = MemoryCandleStore(), Hub()
    ticks = iter(range(10**6))
    options = dataclasses.replace(OPTIONS, chunk=400, slice_s=1.5)  # a clock call is 1 s here
    record = ChildRecord(kind="factor", series_id=S, start=lambda link: None)  # type: ignore[arg-type,return-value]
    actor = FactorActor(SERIES, store, lambda kind: hub if kind == "hub" else None,
                        ChildLink(record, None), options, clock=lambda: float(next(ticks)))
    actor.on_start()
    store.upsert_candles(S, CANDLES)
    batches = store.saved_batches
    actor.on_receive(CandlesStored(tuple(CANDLES)))
    slices = drain(actor)
    # each slice folds two engine steps of SLICE_STEP_CANDLES, then stores and yields
    step = 2 * factor_module.SLICE_STEP_CANDLES
    assert slices >= len(CANDLES) // step
    assert store.saved_batches - batches == -(-len(CANDLES) // step)
    _, events = engine.run(engine.initial_state(PARAMS), CANDLES, PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)
    assert store.read_factor_snapshot(S).head_time == CANDLES[-1].candle_time


def test_monthly_series_folds_factor_events_over_calendar_months() -> None:
    """36 synthetic months (2021..2023): the same ledger as the engine, exact month lags."""
    monthly = parse_series_id("binance:spot:BTC/USDT:1M")
    tf, sid = monthly.timeframe, monthly.text
    months = [dataclasses.replace(x, candle_time=tf.shift(1_609_459_200, i))
              for i, x in enumerate(random_walk(5, 36))]
    store, hub = MemoryCandleStore(), Hub()
    record = ChildRecord(kind="factor", series_id=sid, start=lambda link: None)  # type: ignore[arg-type,return-value]
    lookup = lambda kind: hub if kind == "hub" else None  # noqa: E731

    def actor() -> FactorActor:
        return FactorActor(monthly, store, lookup, ChildLink(record, None), OPTIONS)

    first = actor()
    first.on_start()
    for i in range(0, 24, 6):
        store.upsert_candles(sid, months[i:i + 6])
        first.on_receive(CandlesStored(tuple(months[i:i + 6])))
        drain(first)
    store.upsert_candles(sid, months[24:])  # twelve months stored while the actor was down
    second = actor()
    second.on_start()
    assert second.status()["lag_candles"] == 12 and second.state.head_time == months[23].candle_time
    drain(second)
    _, events = engine.run(engine.initial_state(PARAMS), months, PARAMS)
    assert len(events) > 10
    assert keys(store.read_factor_events(sid, 0, 10**10)) == keys(events)
    assert store.read_factor_snapshot(sid).head_time == months[-1].candle_time
    assert second.status()["lag_candles"] == 0
    assert hub.of_type("draw_delta")[-1]["to_candle_time"] == months[-1].candle_time


def sliced_actor(store: MemoryCandleStore, hub: Hub, **kw: Any) -> FactorActor:
    ticks = iter(range(10**6))
    options = dataclasses.replace(OPTIONS, chunk=400, slice_s=1.5)  # a clock call is 1 s here
    record = ChildRecord(kind="factor", series_id=S, start=lambda link: None)  # type: ignore[arg-type,return-value]
    return FactorActor(SERIES, store, lambda kind: hub if kind == "hub" else None,
                       ChildLink(record, None), options, clock=lambda: float(next(ticks)), **kw)


def step(actor: FactorActor) -> None:
    actor.on_receive(actor.actor_inbox.get_nowait().message)


def test_candles_stored_while_the_last_chunk_folds_are_read_once_more() -> None:
    """A write that lands between a catch-up's last read and its end was never folded."""
    store, hub = MemoryCandleStore(), Hub()
    actor = sliced_actor(store, hub)
    actor.on_start()
    store.upsert_candles(S, CANDLES[:300])
    actor.on_receive(CandlesStored(tuple(CANDLES[:300])))
    step(actor)  # read all 300 (fewer than a chunk), fold the first slice
    assert actor.cursor is not None and actor.backlog
    store.upsert_candles(S, CANDLES[300:310])  # stored meanwhile, told while catching up
    actor.on_receive(CandlesStored(tuple(CANDLES[300:310])))
    drain(actor)
    assert actor.state.head_time == CANDLES[309].candle_time
    _, events = engine.run(engine.initial_state(PARAMS), CANDLES[:310], PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)


def test_catch_up_hint_reads_what_another_process_stored() -> None:
    """Cluster mode: a write made elsewhere reaches the owner's factor actor without candles."""
    from trade_canvas.actors.messages import FactorCatchUp

    store, hub = MemoryCandleStore(), Hub()
    actor = make_actor(store, hub)
    actor.on_start()
    store.upsert_candles(S, CANDLES[:50])
    actor.on_receive(FactorCatchUp())  # nothing folded yet: from the stored tail
    drain(actor)
    assert actor.state.head_time == CANDLES[49].candle_time
    store.upsert_candles(S, CANDLES[50:120])
    actor.on_receive(FactorCatchUp())
    drain(actor)
    _, events = engine.run(engine.initial_state(PARAMS), CANDLES[:120], PARAMS)
    assert keys(store.read_factor_events(S, 0, 10**9)) == keys(events)
    assert actor.state.head_time == CANDLES[119].candle_time


def test_a_fenced_batch_stops_the_actor_writing() -> None:
    from trade_canvas.errors import Fenced

    class FencedStore(MemoryCandleStore):
        lease: tuple[str, int] = ("n1", 1)

        def save_factor_batch(self, series_id, events, snapshot, instructions, fence=None):
            if fence != self.lease:
                raise Fenced("lease moved")
            return super().save_factor_batch(series_id, events, snapshot, instructions)

    store, hub = FencedStore(), Hub()
    record = ChildRecord(kind="factor", series_id=S, start=lambda link: None)  # type: ignore[arg-type,return-value]
    actor = FactorActor(SERIES, store, lambda kind: hub if kind == "hub" else None,
                        ChildLink(record, None), OPTIONS, fence=("n1", 1))
    actor.on_start()
    ingest(store, actor, CANDLES[:20])
    assert store.read_factor_snapshot(S).head_time == CANDLES[19].candle_time
    store.lease = ("n2", 2)  # claimed by another process
    ingest(store, actor, CANDLES[20:30])
    ingest(store, actor, CANDLES[30:40])
    assert store.read_factor_snapshot(S).head_time == CANDLES[19].candle_time
    assert actor.status()["stalled"].startswith("lease lost")
    assert actor.state.head_time == CANDLES[19].candle_time
