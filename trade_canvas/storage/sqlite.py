"""Embedded SQLite candle store (the default backend).

One connection guarded by a lock: under gevent every greenlet shares one OS thread, so a
connection per caller would buy no parallelism, only more file handles. WAL lets readers
proceed while a write commits; ``synchronous=NORMAL`` keeps every committed transaction
across a process kill (only an OS crash can lose the last commits).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from typing import Any, Callable, Sequence, TypeVar

from trade_canvas.candles import Candle
from trade_canvas.errors import Unavailable
from trade_canvas.factors.draw import Instruction
from trade_canvas.factors.events import FactorEvent
from trade_canvas.storage import DRAW_PATCH_LIMIT, DrawVersion, FactorSnapshot, Fence, event_rows

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS candles (
        series_id TEXT NOT NULL,
        candle_time INTEGER NOT NULL,
        open REAL NOT NULL,
        high REAL NOT NULL,
        low REAL NOT NULL,
        close REAL NOT NULL,
        volume REAL NOT NULL,
        PRIMARY KEY (series_id, candle_time)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS factor_events (
        id INTEGER PRIMARY KEY,
        series_id TEXT NOT NULL,
        factor_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        event_key TEXT NOT NULL,
        candle_time INTEGER NOT NULL,
        payload_json TEXT NOT NULL,
        UNIQUE (series_id, factor_name, event_key)
    )
    """,
    "CREATE INDEX IF NOT EXISTS factor_events_by_time ON factor_events (series_id, candle_time)",
    "CREATE INDEX IF NOT EXISTS factor_events_by_kind "
    "ON factor_events (series_id, factor_name, kind, candle_time)",
    """
    CREATE TABLE IF NOT EXISTS factor_state (
        series_id TEXT PRIMARY KEY,
        head_time INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        state_json TEXT NOT NULL
    )
    """,
    # AUTOINCREMENT: a version id is never reused after a rebuild clears the table, so a
    # client's old cursor can never skip new versions.
    """
    CREATE TABLE IF NOT EXISTS draw_versions (
        version_id INTEGER PRIMARY KEY AUTOINCREMENT,
        series_id TEXT NOT NULL,
        instruction_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        visible_time INTEGER NOT NULL,
        definition_json TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS draw_versions_by_series ON draw_versions (series_id, version_id)",
    """
    CREATE TABLE IF NOT EXISTS backtest_results (
        job_id TEXT PRIMARY KEY,
        finished_at REAL NOT NULL,
        record_json TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS backtest_results_by_time ON backtest_results (finished_at)",
)

_UPSERT = (
    "INSERT INTO candles (series_id, candle_time, open, high, low, close, volume) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (series_id, candle_time) DO UPDATE SET open = excluded.open, "
    "high = excluded.high, low = excluded.low, close = excluded.close, volume = excluded.volume"
)
_COLUMNS = "candle_time, open, high, low, close, volume"
_EVENT_COLUMNS = "factor_name, kind, event_key, candle_time, payload_json"
_INSERT_EVENT = (
    "INSERT INTO factor_events (series_id, " + _EVENT_COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (series_id, factor_name, event_key) DO NOTHING"
)
_UPSERT_STATE = (
    "INSERT INTO factor_state (series_id, head_time, fingerprint, state_json) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (series_id) DO UPDATE SET head_time = excluded.head_time, "
    "fingerprint = excluded.fingerprint, state_json = excluded.state_json"
)
_INSERT_VERSION = (
    "INSERT INTO draw_versions (series_id, instruction_id, kind, visible_time, definition_json) "
    "VALUES (?, ?, ?, ?, ?)"
)
_VERSION_COLUMNS = "version_id, instruction_id, kind, visible_time, definition_json"
_INSERT_BACKTEST = (
    "INSERT INTO backtest_results (job_id, finished_at, record_json) VALUES (?, ?, ?) "
    "ON CONFLICT (job_id) DO UPDATE SET finished_at = excluded.finished_at, "
    "record_json = excluded.record_json"
)
_PRUNE_BACKTESTS = (
    "DELETE FROM backtest_results WHERE job_id NOT IN (SELECT job_id FROM backtest_results "
    "ORDER BY finished_at DESC, job_id DESC LIMIT ?)"
)


class SqliteCandleStore:
    """CandleStore on one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for number, sql in enumerate(_MIGRATIONS[version:], start=version + 1):
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(sql)
                self._conn.execute(f"PRAGMA user_version={number}")
                self._conn.execute("COMMIT")
                logger.info("sqlite store %s migrated to version %d", self.path, number)

    def upsert_candles(self, series_id: str, candles: Sequence[Candle]) -> None:
        rows = [(series_id, *candle.to_row()) for candle in candles]
        self._write(lambda conn: conn.executemany(_UPSERT, rows))

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                result = work(self._conn)
                self._conn.execute("COMMIT")
                return result
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def read_rows(
        self, series_id: str, since: int | None, limit: int
    ) -> list[tuple[int, float, float, float, float, float]]:
        if since is None:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM candles WHERE series_id = ? "
                "ORDER BY candle_time DESC LIMIT ?",
                (series_id, limit),
            )
            rows.reverse()
            return rows
        return self._query(
            f"SELECT {_COLUMNS} FROM candles WHERE series_id = ? AND candle_time > ? "
            "ORDER BY candle_time LIMIT ?",
            (series_id, since, limit),
        )

    def read_tail(self, series_id: str, limit: int) -> list[Candle]:
        return [Candle(*row) for row in self.read_rows(series_id, None, limit)]

    def read_since(self, series_id: str, since: int, limit: int) -> list[Candle]:
        return [Candle(*row) for row in self.read_rows(series_id, since, limit)]

    def read_range(self, series_id: str, start: int, end: int) -> list[Candle]:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM candles WHERE series_id = ? "
            "AND candle_time >= ? AND candle_time <= ? ORDER BY candle_time",
            (series_id, start, end),
        )
        return [Candle(*row) for row in rows]

    def head_time(self, series_id: str) -> int | None:
        rows = self._query("SELECT MAX(candle_time) FROM candles WHERE series_id = ?", (series_id,))
        head = rows[0][0]
        return None if head is None else int(head)

    def count(self, series_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM candles WHERE series_id = ?", (series_id,))
        return int(rows[0][0])

    def series_ids(self) -> list[str]:
        rows = self._query("SELECT DISTINCT series_id FROM candles ORDER BY series_id", ())
        return [row[0] for row in rows]

    def save_factor_batch(
        self,
        series_id: str,
        events: Sequence[FactorEvent],
        snapshot: FactorSnapshot,
        instructions: Sequence[Instruction],
        fence: Fence | None = None,
    ) -> list[DrawVersion]:
        rows = event_rows(series_id, events)

        def work(conn: sqlite3.Connection) -> list[DrawVersion]:
            conn.executemany(_INSERT_EVENT, rows)
            conn.execute(
                _UPSERT_STATE,
                (series_id, snapshot.head_time, snapshot.fingerprint, snapshot.state_json),
            )
            versions = []
            for ins in instructions:
                cursor = conn.execute(_INSERT_VERSION, (
                    series_id, ins.instruction_id, ins.kind, ins.visible_time, ins.definition_json
                ))
                versions.append(DrawVersion(
                    int(cursor.lastrowid or 0), ins.instruction_id, ins.kind, ins.visible_time,
                    ins.definition_json,
                ))
            return versions

        return self._write(work)

    def read_factor_snapshot(self, series_id: str) -> FactorSnapshot | None:
        rows = self._query(
            "SELECT head_time, fingerprint, state_json FROM factor_state WHERE series_id = ?",
            (series_id,),
        )
        return FactorSnapshot(*rows[0]) if rows else None

    def factor_head_time(self, series_id: str) -> int | None:
        rows = self._query("SELECT head_time FROM factor_state WHERE series_id = ?", (series_id,))
        return rows[0][0] if rows else None

    def read_factor_events(self, series_id: str, start: int, end: int) -> list[FactorEvent]:
        rows = self._query(
            f"SELECT {_EVENT_COLUMNS} FROM factor_events WHERE series_id = ? "
            "AND candle_time >= ? AND candle_time <= ? ORDER BY candle_time, id",
            (series_id, start, end),
        )
        return [FactorEvent(*row) for row in rows]

    def read_latest_factor_event(
        self, series_id: str, factor_name: str, kind: str, at_or_before: int
    ) -> FactorEvent | None:
        rows = self._query(
            f"SELECT {_EVENT_COLUMNS} FROM factor_events WHERE series_id = ? AND factor_name = ? "
            "AND kind = ? AND candle_time <= ? ORDER BY candle_time DESC, id DESC LIMIT 1",
            (series_id, factor_name, kind, at_or_before),
        )
        return FactorEvent(*rows[0]) if rows else None

    def read_draw_versions(
        self, series_id: str, after_version_id: int, to_time: int, limit: int = DRAW_PATCH_LIMIT
    ) -> list[DrawVersion]:
        rows = self._query(
            f"SELECT {_VERSION_COLUMNS} FROM draw_versions WHERE series_id = ? "
            "AND version_id > ? AND visible_time <= ? ORDER BY version_id LIMIT ?",
            (series_id, after_version_id, to_time, limit),
        )
        return [DrawVersion(*row) for row in rows]

    def last_draw_version(self, series_id: str) -> int:
        rows = self._query(
            "SELECT MAX(version_id) FROM draw_versions WHERE series_id = ?", (series_id,)
        )
        return int(rows[0][0] or 0)

    def save_backtest(self, job_id: str, finished_at: float, record_json: str, keep: int) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_BACKTEST, (job_id, finished_at, record_json))
            conn.execute(_PRUNE_BACKTESTS, (keep,))

        self._write(work)

    def read_backtests(self, limit: int) -> list[str]:
        rows = self._query("SELECT record_json FROM backtest_results "
                           "ORDER BY finished_at DESC, job_id DESC LIMIT ?", (limit,))
        return [str(row[0]) for row in rows]

    def clear_factor_data(self, series_id: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for table in ("factor_events", "factor_state", "draw_versions"):
                conn.execute(f"DELETE FROM {table} WHERE series_id = ?", (series_id,))

        self._write(work)

    def ping(self) -> None:
        try:
            self._query("SELECT 1", ())
        except sqlite3.Error as exc:
            raise Unavailable(f"sqlite store unavailable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
