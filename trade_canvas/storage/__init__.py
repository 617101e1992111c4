"""Candle storage: the CandleStore contract and its two implementations (sqlite, postgres).

Besides candles a store keeps each series' factor ledger: append-only factor events, one engine
state snapshot (written in the same transaction as the events it produced, so the two never
disagree) and the versioned draw instructions behind ``GET /api/draw/delta``.

Stores do blocking I/O and know nothing about actors. Every method is safe to call from
several threads or greenlets; writes of one call happen in one transaction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from trade_canvas.candles import Candle
from trade_canvas.errors import ConfigError
from trade_canvas.factors.draw import Instruction
from trade_canvas.factors.events import FactorEvent

# Cluster mode: (node id, lease epoch) a series' owner writes its factor batches under.
Fence = tuple[str, int]

# Most draw versions one read returns (the earlier backend's patch limit).
DRAW_PATCH_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class FactorSnapshot:
    """The factor engine state of one series after its last stored batch."""

    head_time: int
    fingerprint: str
    state_json: str


@dataclass(frozen=True, slots=True)
class DrawVersion:
    """One stored version of a draw instruction; ``version_id`` grows and is never reused."""

    version_id: int
    instruction_id: str
    kind: str
    visible_time: int
    definition_json: str

    def to_dict(self) -> dict[str, Any]:
        """Return the ``instruction_catalog_patch`` row shape."""
        return {
            "version_id": self.version_id,
            "instruction_id": self.instruction_id,
            "kind": self.kind,
            "visible_time": self.visible_time,
            "definition": json.loads(self.definition_json),
        }


class CandleStore(Protocol):
    """What the runtime needs from a candle store."""

    backend: str

    def upsert_candles(self, series_id: str, candles: Sequence[Candle]) -> int | None:
        """Insert or overwrite candles by (series_id, candle_time) in one transaction.

        Returns the series' write sequence number where the store keeps one (Postgres in
        cluster mode), else None.
        """

    def read_tail(self, series_id: str, limit: int) -> list[Candle]:
        """Return the newest ``limit`` candles, oldest first."""

    def read_since(self, series_id: str, since: int, limit: int) -> list[Candle]:
        """Return the first ``limit`` candles with ``candle_time > since``, oldest first."""

    def read_rows(
        self, series_id: str, since: int | None, limit: int
    ) -> list[tuple[int, float, float, float, float, float]]:
        """Return ``read_tail`` (``since`` None) or ``read_since`` as raw storage rows.

        The HTTP read path encodes rows straight to JSON: building a frozen ``Candle`` per row
        and then a dict from it cost most of a 500-candle read (see docs/performance.md).
        """

    def read_range(self, series_id: str, start: int, end: int) -> list[Candle]:
        """Return all candles with ``start <= candle_time <= end``, oldest first."""

    def head_time(self, series_id: str) -> int | None:
        """Return the newest stored candle_time, or None for an empty series."""

    def count(self, series_id: str) -> int:
        """Return how many candles the series has."""

    def series_ids(self) -> list[str]:
        """Return every series id that has candles, sorted."""

    def save_factor_batch(
        self,
        series_id: str,
        events: Sequence[FactorEvent],
        snapshot: FactorSnapshot,
        instructions: Sequence[Instruction],
        fence: Fence | None = None,
    ) -> list[DrawVersion]:
        """Store one factor batch in one transaction; return the new draw versions.

        Events are inserted or ignored by ``(series_id, factor_name, event_key)``; the snapshot
        replaces the previous one; each instruction becomes a new version, in the given order.
        ``fence`` (cluster mode, Postgres only): ``(node_id, epoch)`` of the series' lease; the
        batch commits only while the lease still has them, else ``Fenced`` and nothing changed.
        """

    def read_factor_snapshot(self, series_id: str) -> FactorSnapshot | None:
        """Return the stored engine snapshot, or None before the first batch."""

    def factor_head_time(self, series_id: str) -> int | None:
        """Return the snapshot's ``head_time`` without reading the state itself."""

    def read_factor_events(self, series_id: str, start: int, end: int) -> list[FactorEvent]:
        """Return events with ``start <= candle_time <= end``, in insertion order per time."""

    def read_latest_factor_event(
        self, series_id: str, factor_name: str, kind: str, at_or_before: int
    ) -> FactorEvent | None:
        """Return the newest event of ``kind`` with ``candle_time <= at_or_before``."""

    def read_draw_versions(
        self, series_id: str, after_version_id: int, to_time: int, limit: int = DRAW_PATCH_LIMIT
    ) -> list[DrawVersion]:
        """Return versions with ``version_id > after``, ``visible_time <= to_time``, ascending."""

    def last_draw_version(self, series_id: str) -> int:
        """Return the series' newest draw ``version_id``, or 0 when it has none."""

    def clear_factor_data(self, series_id: str) -> None:
        """Delete the series' factor events, snapshot and draw versions (never its candles)."""

    def save_backtest(self, job_id: str, finished_at: float, record_json: str, keep: int) -> None:
        """Store a finished backtest's record; only the newest ``keep`` records are kept."""

    def read_backtests(self, limit: int) -> list[str]:
        """Return the newest ``limit`` backtest records (JSON), newest first."""

    def ping(self) -> None:
        """Raise if the store cannot serve a query right now."""

    def close(self) -> None:
        """Release connections; further calls fail."""


def event_rows(series_id: str, events: Sequence[FactorEvent]) -> list[tuple[Any, ...]]:
    """Return factor events as the column tuples both stores insert."""
    return [(series_id, e.factor_name, e.kind, e.event_key, e.candle_time, e.payload_json)
            for e in events]


def open_store(
    location: str, *, postgres: bool, must_exist: bool = False, **postgres_options: Any
) -> CandleStore:
    """Open the store at a PostgreSQL DSN (``postgres``) or a SQLite file path.

    ``postgres_options`` go to ``PostgresCandleStore`` (schema, pool sizes, timeouts, ...).

    Raises:
        ConfigError: ``must_exist`` and the SQLite file is missing; bad DSN or schema.
        Unavailable: the PostgreSQL server cannot be reached.
    """
    if postgres:
        from trade_canvas.storage.postgres import PostgresCandleStore

        return PostgresCandleStore(location, **postgres_options)
    from trade_canvas.storage.sqlite import SqliteCandleStore

    if must_exist and not os.path.isfile(location):
        raise ConfigError(f"SQLite file {location} does not exist")
    return SqliteCandleStore(location)
