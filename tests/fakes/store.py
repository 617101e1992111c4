"""An in-memory CandleStore: a small working implementation for actor tests."""

from __future__ import annotations

import threading
from typing import Sequence

from trade_canvas.candles import Candle
from trade_canvas.factors.draw import Instruction
from trade_canvas.factors.events import FactorEvent
from trade_canvas.storage import DrawVersion, FactorSnapshot, Fence


class MemoryCandleStore:
    backend = "memory"

    def __init__(self) -> None:
        self._backtests: dict[str, tuple[float, str]] = {}
        self._factor_lock = threading.Lock()
        self._events: dict[str, dict[tuple[str, str], FactorEvent]] = {}
        self._snapshots: dict[str, FactorSnapshot] = {}
        self._versions: dict[str, list[DrawVersion]] = {}
        self._next_version = 1
        self.saved_batches = 0
        self._lock = threading.Lock()
        self._series: dict[str, dict[int, Candle]] = {}
        self.fail_writes = False

    def upsert_candles(self, series_id: str, candles: Sequence[Candle]) -> None:
        if self.fail_writes:
            raise OSError("disk on fire")
        with self._lock:
            rows = self._series.setdefault(series_id, {})
            for candle in candles:
                rows[candle.candle_time] = candle

    def _sorted(self, series_id: str) -> list[Candle]:
        with self._lock:
            rows = self._series.get(series_id, {})
            return [rows[t] for t in sorted(rows)]

    def read_tail(self, series_id: str, limit: int) -> list[Candle]:
        return self._sorted(series_id)[-limit:]

    def read_since(self, series_id: str, since: int, limit: int) -> list[Candle]:
        return [c for c in self._sorted(series_id) if c.candle_time > since][:limit]

    def read_rows(
        self, series_id: str, since: int | None, limit: int
    ) -> list[tuple[int, float, float, float, float, float]]:
        candles = self.read_tail(series_id, limit) if since is None else self.read_since(
            series_id, since, limit)
        return [c.to_row() for c in candles]

    def read_range(self, series_id: str, start: int, end: int) -> list[Candle]:
        return [c for c in self._sorted(series_id) if start <= c.candle_time <= end]

    def head_time(self, series_id: str) -> int | None:
        rows = self._sorted(series_id)
        return rows[-1].candle_time if rows else None

    def count(self, series_id: str) -> int:
        return len(self._sorted(series_id))

    def series_ids(self) -> list[str]:
        return sorted(self._series)

    def save_backtest(self, job_id: str, finished_at: float, record_json: str, keep: int) -> None:
        self._backtests[job_id] = (finished_at, record_json)
        newest = sorted(self._backtests.items(), key=lambda item: (item[1][0], item[0]), reverse=True)
        self._backtests = dict(newest[:keep])

    def read_backtests(self, limit: int) -> list[str]:
        newest = sorted(self._backtests.items(), key=lambda item: (item[1][0], item[0]), reverse=True)
        return [record for _, (_, record) in newest[:limit]]

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    # -- factor ledger

    def save_factor_batch(
        self,
        series_id: str,
        events: Sequence[FactorEvent],
        snapshot: FactorSnapshot,
        instructions: Sequence[Instruction],
        fence: Fence | None = None,
    ) -> list[DrawVersion]:
        with self._factor_lock:
            rows = self._events.setdefault(series_id, {})
            for event in events:
                rows.setdefault((event.factor_name, event.event_key), event)
            self._snapshots[series_id] = snapshot
            new = []
            for ins in instructions:
                new.append(DrawVersion(self._next_version, ins.instruction_id, ins.kind,
                                       ins.visible_time, ins.definition_json))
                self._next_version += 1
            self._versions.setdefault(series_id, []).extend(new)
            self.saved_batches += 1
            return new

    def read_factor_snapshot(self, series_id: str) -> FactorSnapshot | None:
        return self._snapshots.get(series_id)

    def factor_head_time(self, series_id: str) -> int | None:
        snapshot = self._snapshots.get(series_id)
        return None if snapshot is None else snapshot.head_time

    def _all_events(self, series_id: str) -> list[FactorEvent]:
        with self._factor_lock:
            rows = list(self._events.get(series_id, {}).values())
        return sorted(rows, key=lambda e: e.candle_time)  # stable: insertion order per time

    def read_factor_events(self, series_id: str, start: int, end: int) -> list[FactorEvent]:
        return [e for e in self._all_events(series_id) if start <= e.candle_time <= end]

    def read_latest_factor_event(
        self, series_id: str, factor_name: str, kind: str, at_or_before: int
    ) -> FactorEvent | None:
        rows = [
            e for e in self._all_events(series_id)
            if e.factor_name == factor_name and e.kind == kind and e.candle_time <= at_or_before
        ]
        return rows[-1] if rows else None

    def read_draw_versions(
        self, series_id: str, after_version_id: int, to_time: int, limit: int = 50_000
    ) -> list[DrawVersion]:
        with self._factor_lock:
            rows = list(self._versions.get(series_id, []))
        return [
            v for v in rows if v.version_id > after_version_id and v.visible_time <= to_time
        ][:limit]

    def last_draw_version(self, series_id: str) -> int:
        with self._factor_lock:
            rows = self._versions.get(series_id, [])
            return rows[-1].version_id if rows else 0

    def clear_factor_data(self, series_id: str) -> None:
        with self._factor_lock:
            self._events.pop(series_id, None)
            self._snapshots.pop(series_id, None)
            self._versions.pop(series_id, None)
