"""Candle storage: the CandleStore contract and its two implementations (sqlite, postgres).

Stores do blocking I/O and know nothing about actors. Every method is safe to call from
several threads or greenlets; writes of one call happen in one transaction.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from trade_canvas.candles import Candle


class CandleStore(Protocol):
    """What the runtime needs from a candle store."""

    backend: str

    def upsert_candles(self, series_id: str, candles: Sequence[Candle]) -> None:
        """Insert or overwrite candles by (series_id, candle_time) in one transaction."""

    def read_tail(self, series_id: str, limit: int) -> list[Candle]:
        """Return the newest ``limit`` candles, oldest first."""

    def read_since(self, series_id: str, since: int, limit: int) -> list[Candle]:
        """Return the first ``limit`` candles with ``candle_time > since``, oldest first."""

    def read_range(self, series_id: str, start: int, end: int) -> list[Candle]:
        """Return all candles with ``start <= candle_time <= end``, oldest first."""

    def head_time(self, series_id: str) -> int | None:
        """Return the newest stored candle_time, or None for an empty series."""

    def count(self, series_id: str) -> int:
        """Return how many candles the series has."""

    def series_ids(self) -> list[str]:
        """Return every series id that has candles, sorted."""

    def ping(self) -> None:
        """Raise if the store cannot serve a query right now."""

    def close(self) -> None:
        """Release connections; further calls fail."""
