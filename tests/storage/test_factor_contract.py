"""Factor ledger contract: events, snapshot and draw versions behave alike on every backend."""

from __future__ import annotations

import pytest

from trade_canvas.candles import Candle
from trade_canvas.factors.draw import Instruction
from trade_canvas.factors.events import make_event
from trade_canvas.storage import FactorSnapshot

S = "binance:futures:BTC/USDT:1m"
T = "binance:spot:ETH/USDT:1m"


def event(t: int, key: str, kind: str = "pivot.major", name: str = "pivot"):
    return make_event(name, kind, key, t, {"visible_time": t, "key": key})


def snap(head: int, fp: str = "fp1") -> FactorSnapshot:
    return FactorSnapshot(head, fp, '{"schema_version":1}')


def ins(ident: str, visible: int, definition: str = '{"type":"marker"}') -> Instruction:
    return Instruction(ident, "marker", visible, definition)


def test_empty_series_has_no_factor_data(store) -> None:
    assert store.read_factor_snapshot(S) is None
    assert store.factor_head_time(S) is None
    assert store.read_factor_events(S, 0, 10**10) == []
    assert store.read_latest_factor_event(S, "pivot", "pivot.major", 10**10) is None
    assert store.read_draw_versions(S, 0, 10**10) == []
    assert store.last_draw_version(S) == 0


def test_batch_stores_events_snapshot_and_versions(store) -> None:
    events = [event(120, "a"), event(60, "b"), event(120, "c", "pivot.minor")]
    versions = store.save_factor_batch(S, events, snap(120), [ins("x", 60), ins("y", 120)])
    assert [v.instruction_id for v in versions] == ["x", "y"]
    assert versions[0].version_id < versions[1].version_id
    assert store.read_factor_snapshot(S) == snap(120)
    assert store.factor_head_time(S) == 120
    assert [e.event_key for e in store.read_factor_events(S, 0, 200)] == ["b", "a", "c"]
    assert [e.event_key for e in store.read_factor_events(S, 100, 120)] == ["a", "c"]
    assert store.read_factor_events(S, 0, 200)[1] == events[0]
    assert store.read_draw_versions(S, 0, 10**10) == versions
    assert versions[0].to_dict()["definition"] == {"type": "marker"}


def test_events_are_idempotent_and_snapshot_replaced(store) -> None:
    store.save_factor_batch(S, [event(60, "a")], snap(60), [])
    store.save_factor_batch(S, [event(60, "a"), event(120, "b")], snap(120, "fp2"), [])
    assert [e.event_key for e in store.read_factor_events(S, 0, 200)] == ["a", "b"]
    assert store.read_factor_snapshot(S) == snap(120, "fp2")


def test_latest_event_at_or_before(store) -> None:
    rows = [event(60, "f1", "zhongshu.formed", "zhongshu"),
            event(180, "f2", "zhongshu.formed", "zhongshu"),
            event(240, "d1", "zhongshu.dead", "zhongshu")]
    store.save_factor_batch(S, rows, snap(240), [])
    assert store.read_latest_factor_event(S, "zhongshu", "zhongshu.formed", 179).event_key == "f1"
    assert store.read_latest_factor_event(S, "zhongshu", "zhongshu.formed", 500).event_key == "f2"
    assert store.read_latest_factor_event(S, "zhongshu", "zhongshu.formed", 59) is None


def test_draw_versions_filter_by_cursor_time_and_limit(store) -> None:
    first = store.save_factor_batch(S, [], snap(60), [ins("a", 60), ins("b", 180)])
    second = store.save_factor_batch(S, [], snap(240), [ins("a", 240, '{"v":2}')])
    cursor = first[0].version_id
    assert [v.instruction_id for v in store.read_draw_versions(S, cursor, 10**10)] == ["b", "a"]
    assert store.read_draw_versions(S, cursor, 200) == [first[1]]
    assert store.read_draw_versions(S, 0, 10**10, limit=1) == [first[0]]
    assert store.read_draw_versions(S, second[0].version_id, 10**10) == []
    assert store.last_draw_version(S) == second[0].version_id


def test_clear_removes_factor_data_but_never_candles(store) -> None:
    store.upsert_candles(S, [Candle(60, 1.0, 2.0, 0.5, 1.5, 1.0)])
    old = store.save_factor_batch(S, [event(60, "a")], snap(60), [ins("a", 60)])
    store.save_factor_batch(T, [event(60, "a")], snap(60), [ins("a", 60)])
    store.clear_factor_data(S)
    assert store.read_factor_snapshot(S) is None
    assert store.read_factor_events(S, 0, 100) == []
    assert store.read_draw_versions(S, 0, 100) == []
    assert store.last_draw_version(S) == 0
    assert store.count(S) == 1
    assert store.factor_head_time(T) == 60
    again = store.save_factor_batch(S, [event(60, "a")], snap(60), [ins("a", 60)])
    assert again[0].version_id > old[0].version_id  # ids are never reused: old cursors stay valid
    assert len(store.read_factor_events(S, 0, 100)) == 1


def test_failed_batch_writes_nothing(store) -> None:
    with pytest.raises(Exception):
        store.save_factor_batch(S, [event(60, "a")], snap(60), [ins("a", 60, None)])  # type: ignore[arg-type]
    assert store.read_factor_events(S, 0, 100) == []
    assert store.read_factor_snapshot(S) is None
