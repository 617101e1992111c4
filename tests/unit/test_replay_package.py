"""Replay package windows: catalog split, active sets, checkpoints/diffs, snapshot rows (pure)."""

from __future__ import annotations

from trade_canvas.candles import Candle
from trade_canvas.factors import replay_package as rp
from trade_canvas.factors.replay_package import VersionRow


def marker(vid: int, ident: str, visible: int, t: int) -> VersionRow:
    return VersionRow(vid, ident, "marker", visible, {"type": "marker", "time": t})


def line(vid: int, ident: str, visible: int, *times: int) -> VersionRow:
    return VersionRow(vid, ident, "polyline", visible,
                      {"type": "polyline", "points": [{"time": t, "value": 1.0} for t in times]})


TIMES = [100, 110, 120, 130, 140, 150]
VERSIONS = [
    marker(1, "old", 50, 40),  # before the package: not relevant
    marker(2, "m:100", 100, 100),
    line(3, "pen", 90, 20, 105),  # reaches into the package, active from its start
    marker(4, "m:110", 125, 110),  # visible at 130 (index 3)
    line(5, "pen", 140, 20, 60),  # now ends before the package: retired at 140
    line(6, "late", 160, 100, 150),  # visible after the package: not in it
]


def test_windows_split_catalog_and_track_the_active_set() -> None:
    first, second = rp.draw_windows(TIMES, VERSIONS, window_size=3, interval=2)
    assert [v["version_id"] for v in first["draw_catalog_base"]] == [3, 2]
    assert first["draw_catalog_patch"] == []
    assert first["draw_active_checkpoints"] == [
        {"at_idx": 0, "active_ids": ["m:100", "pen"]}, {"at_idx": 2, "active_ids": ["m:100", "pen"]}]
    assert first["draw_active_diffs"] == []
    assert [v["version_id"] for v in second["draw_catalog_base"]] == [3, 2, 4]
    assert [v["version_id"] for v in second["draw_catalog_patch"]] == [5]
    assert second["draw_active_checkpoints"] == [
        {"at_idx": 3, "active_ids": ["m:100", "m:110", "pen"]},
        {"at_idx": 5, "active_ids": ["m:100", "m:110"]}]
    assert second["draw_active_diffs"] == [{"at_idx": 4, "add_ids": [], "remove_ids": ["pen"]}]


def test_window_bodies_carry_baseline_rows_and_trim_pivots() -> None:
    bars = [Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0) for t in TIMES]
    draws = rp.draw_windows(TIMES, VERSIONS, 3, 2)
    rows = [
        {"factor_name": "pen", "candle_time": 100, "snapshot": {"history": {}, "head": {}}},
        {"factor_name": "pivot", "candle_time": 110, "snapshot": {
            "history": {"major": [{"pivot_time": 100}, {"pivot_time": 130}], "minor": []},
            "head": {}}},
        {"factor_name": "pen", "candle_time": 140, "snapshot": {"history": {}, "head": {}}},
    ]
    _, second = rp.window_bodies("k" * 24, bars, draws, rows, 3)
    assert second["window"]["kline"][0] == {"time": 130, "open": 1.0, "high": 2.0, "low": 0.5,
                                            "close": 1.5, "volume": 3.0}
    snaps = second["factor_snapshots"]
    assert [(r["candle_time"], r["factor_name"]) for r in snaps] == [
        (100, "pen"), (110, "pivot"), (140, "pen")]
    assert snaps[1]["snapshot"]["history"]["major"] == [{"pivot_time": 130}]


def test_cache_key_changes_with_the_ledgers() -> None:
    spec = rp.PackageSpec("s", 60, 1000, 2000, 500, 25)
    key = rp.cache_key(spec, 1000, 1000, 7)
    assert len(key) == 24 and int(key, 16) >= 0
    assert key != rp.cache_key(spec, 1000, 1000, 8) != rp.cache_key(spec, 1060, 1000, 7)
