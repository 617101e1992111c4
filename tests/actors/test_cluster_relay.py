"""What crosses processes besides closed candles: forming candles, draw deltas, system messages.

The sending side is the hub's relay (local messages only), the receiving side the fan-out
actor's hand-over to the local hub (marked remote); both called unstarted. A draw delta too big
for a hint is rebuilt from the store: for every delta a factor actor pushes, the rebuilt one
equals it, also when the store has moved on since.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.actors.test_factor_actor import SERIES, S, Hub, drain, make_actor
from tests.actors.test_hub import drain as drain_box
from tests.actors.test_hub import make_hub
from tests.fakes.store import MemoryCandleStore
from tests.unit.test_factor_engine import random_walk
from trade_canvas.actors.cluster import FanoutActor
from trade_canvas.actors.messages import (
    Broadcast,
    CandlesStored,
    DrawChanged,
    HintReceived,
    PublishForming,
    Subscribe,
)
from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.actors.subscriber import Outbox
from trade_canvas.candles import Candle
from trade_canvas.cluster import (
    BroadcastHint, DrawHint, DrawRef, FormingHint, decode_hint, draw_ref, encode_hints,
)
from trade_canvas.errors import Conflict
from trade_canvas.runtime.cluster import draw_rebuilder


def pushed_deltas(seed: int, count: int, batch: int) -> tuple[MemoryCandleStore, list[dict]]:
    """Fold a random walk in batches; return the store and every draw_delta pushed."""
    store, hub = MemoryCandleStore(), Hub()
    actor = make_actor(store, hub)
    actor.on_start()
    candles = random_walk(seed, count)
    for i in range(0, count, batch):
        store.upsert_candles(S, candles[i:i + batch])
        actor.on_receive(CandlesStored(tuple(candles[i:i + batch])))
        drain(actor)
    return store, hub.of_type("draw_delta")


@pytest.mark.parametrize("seed, batch", [(3, 1), (11, 7), (29, 40)])
def test_a_delta_rebuilt_from_its_reference_equals_the_pushed_one(seed: int, batch: int) -> None:
    store, deltas = pushed_deltas(seed, 600, batch)
    assert len(deltas) > 10
    assert any(m["removed_ids"] for m in deltas)
    rebuild = draw_rebuilder(store)
    for message in deltas:  # rebuilt after the store moved on: later versions are left out
        [payload] = encode_hints(DrawHint(S, "a", message), limit=200)  # too big: a reference
        hint = decode_hint(payload)
        assert isinstance(hint, DrawHint) and hint.message is None and hint.ref is not None
        assert rebuild(S, hint.ref) == message
    for before, after in zip(deltas, deltas[1:]):
        assert after["from_version_id"] == before["next_cursor"]["version_id"]


def apply(visible: set[str], message: dict) -> set[str]:
    """A client's rule (README "WebSocket push: draw_delta") for its visible set."""
    if "active_ids" in message:
        return set(message["active_ids"])
    ids = {row["instruction_id"] for row in message["instruction_catalog_patch"]}
    return (visible | ids) - set(message["removed_ids"])


@pytest.mark.parametrize("seed", [5, 17])
def test_a_reference_without_the_removed_ids_carries_the_whole_active_list(seed: int) -> None:
    store, hub = MemoryCandleStore(), Hub()
    actor = make_actor(store, hub)
    actor.on_start()
    rebuild = draw_rebuilder(store)
    candles = random_walk(seed, 500)
    visible: set[str] = set()
    refs: list[DrawRef] = []
    for i in range(0, len(candles), 3):
        store.upsert_candles(S, candles[i:i + 3])
        actor.on_receive(CandlesStored(tuple(candles[i:i + 3])))
        drain(actor)
        for message in hub.of_type("draw_delta")[len(refs):]:
            visible = apply(visible, message)  # a client applying every push
            ref = draw_ref(message)
            removed = tuple(f"pivot.minor:{i}:support:5" for i in range(300))
            [payload] = encode_hints(DrawHint(S, "a", ref=DrawRef(
                ref.from_version, ref.to_version, ref.to_time, removed, ref.active)))
            hint = decode_hint(payload)  # too many removed ids for one hint: sent without
            assert isinstance(hint, DrawHint) and hint.ref is not None
            assert hint.ref.removed_ids is None and hint.ref.active
            refs.append(hint.ref)
            rebuilt = rebuild(S, hint.ref)  # read at once, as the fan-out actor does
            assert rebuilt is not None and rebuilt["removed_ids"] == []
            assert rebuilt["next_cursor"] == message["next_cursor"]
            assert rebuilt["instruction_catalog_patch"] == message["instruction_catalog_patch"]
            assert set(rebuilt["active_ids"]) == visible
    assert len(refs) > 20
    # read after the ledger moved on, a whole list could differ from the one drawn: lost
    assert all(rebuild(S, ref) is None for ref in refs[:-1])


def test_a_reference_the_store_no_longer_covers_is_lost_not_made_up() -> None:
    store, deltas = pushed_deltas(3, 300, 10)
    message = next(m for m in deltas if m["instruction_catalog_patch"])
    ref = draw_ref(message)
    store.clear_factor_data(S)  # a rebuild cleared the ledger meanwhile
    with pytest.raises(Conflict):  # the fan-out actor counts it lost
        draw_rebuilder(store)(S, ref)
    actor = make_actor(store, Hub())  # and recomputed it: new version ids
    actor.on_start()
    drain(actor)
    assert store.last_draw_version(S) > ref.to_version
    assert draw_rebuilder(store)(S, ref) is None


class Group:
    """A series group as the fan-out actor sees it: refs by kind, and whether it is in use."""

    def __init__(self, hub: Any, used: bool = True) -> None:
        self.hub = hub
        self.in_use = lambda: used

    def ref(self, kind: str) -> Any:
        return self.hub if kind == "hub" else None


class Ref:
    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)


def make_fanout(groups: dict[str, Group], rebuild: Any = None) -> FanoutActor:
    record = ChildRecord(kind="fanout", series_id=None, start=lambda link: None)  # type: ignore[arg-type,return-value]
    return FanoutActor(MemoryCandleStore(), groups, ChildLink(record, None), catchup_limit=100,
                       rebuild_draw=rebuild)


def test_relayed_hints_reach_the_local_hubs_marked_remote() -> None:
    here, idle = Ref(), Ref()
    rebuilt: list[DrawRef] = []
    fanout = make_fanout({"a": Group(here), "b": Group(idle, used=False)},
                         rebuild=lambda sid, ref: rebuilt.append(ref) or {"type": "draw_delta"})
    candle = Candle(60, 1, 2, 0.5, 1.5, 3)
    fanout.on_receive(HintReceived(FormingHint("n2", (("a", candle), ("gone", candle)))))
    fanout.on_receive(HintReceived(BroadcastHint("a", "n2", {"type": "system"})))
    fanout.on_receive(HintReceived(DrawHint("a", "n2", {"type": "draw_delta", "x": 1})))
    ref = DrawRef(1, 2, 60, (), False)
    fanout.on_receive(HintReceived(DrawHint("a", "n2", ref=ref)))
    fanout.on_receive(HintReceived(DrawHint("b", "n2", ref=ref)))  # no subscriber: no read
    fanout.on_receive(HintReceived(DrawHint("gone", "n2", ref=ref)))
    assert here.told == [
        PublishForming(candle, remote=True), Broadcast({"type": "system"}, remote=True),
        DrawChanged({"type": "draw_delta", "x": 1}, remote=True),
        DrawChanged({"type": "draw_delta"}, remote=True),
    ]
    assert rebuilt == [ref] and idle.told == []
    assert fanout.counters["draw_rebuilt"] == 1


def test_the_hub_relays_what_this_process_tells_it_and_shows_remote_messages_too() -> None:
    relayed: list[tuple[str, Any]] = []
    hub = make_hub(MemoryCandleStore())
    hub.relay = lambda sid, message: relayed.append((sid, message))
    box = Outbox(10)
    hub.on_receive(Subscribe(box, None, False, draw=True))
    candle = Candle(60, 1, 2, 0.5, 1.5, 3)
    local = [PublishForming(candle), Broadcast({"type": "system", "n": 1}),
             DrawChanged({"type": "draw_delta", "n": 2})]
    remote = [PublishForming(Candle(120, 1, 2, 0.5, 1.5, 3), remote=True),
              Broadcast({"type": "system", "n": 3}, remote=True),
              DrawChanged({"type": "draw_delta", "n": 4}, remote=True),
              # throttled by the sender already: a second update at once is shown too
              PublishForming(Candle(120, 1, 2, 0.5, 1.75, 3), remote=True)]
    for message in local + remote + [PublishForming(Candle(120, 1, 2, 0.5, 1.25, 3))]:
        hub.on_receive(message)
    assert relayed == [(SERIES.text, m) for m in local] + [
        (SERIES.text, PublishForming(Candle(120, 1, 2, 0.5, 1.25, 3)))]  # never remote ones
    got = drain_box(box)
    assert [m["type"] for m in got] == ["candle_forming", "system", "draw_delta"] * 2 + [
        "candle_forming"]  # the local update at once is throttled; it was still relayed
    assert got[-1]["candle"]["close"] == 1.75
