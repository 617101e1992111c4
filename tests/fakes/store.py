"""An in-memory CandleStore: a small working implementation for actor tests."""

from __future__ import annotations

import threading
from typing import Sequence

from trade_canvas.candles import Candle


class MemoryCandleStore:
    backend = "memory"

    def __init__(self) -> None:
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

    def read_range(self, series_id: str, start: int, end: int) -> list[Candle]:
        return [c for c in self._sorted(series_id) if start <= c.candle_time <= end]

    def head_time(self, series_id: str) -> int | None:
        rows = self._sorted(series_id)
        return rows[-1].candle_time if rows else None

    def count(self, series_id: str) -> int:
        return len(self._sorted(series_id))

    def series_ids(self) -> list[str]:
        return sorted(self._series)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
