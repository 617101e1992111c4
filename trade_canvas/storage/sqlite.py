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
from typing import Sequence

from trade_canvas.candles import Candle
from trade_canvas.errors import Unavailable

logger = logging.getLogger(__name__)

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
)

_UPSERT = (
    "INSERT INTO candles (series_id, candle_time, open, high, low, close, volume) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (series_id, candle_time) DO UPDATE SET open = excluded.open, "
    "high = excluded.high, low = excluded.low, close = excluded.close, volume = excluded.volume"
)
_COLUMNS = "candle_time, open, high, low, close, volume"


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
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(_UPSERT, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def read_tail(self, series_id: str, limit: int) -> list[Candle]:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM candles WHERE series_id = ? "
            "ORDER BY candle_time DESC LIMIT ?",
            (series_id, limit),
        )
        rows.reverse()
        return [Candle(*row) for row in rows]

    def read_since(self, series_id: str, since: int, limit: int) -> list[Candle]:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM candles WHERE series_id = ? AND candle_time > ? "
            "ORDER BY candle_time LIMIT ?",
            (series_id, since, limit),
        )
        return [Candle(*row) for row in rows]

    def read_range(self, series_id: str, start: int, end: int) -> list[Candle]:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM candles WHERE series_id = ? "
            "AND candle_time >= ? AND candle_time <= ? ORDER BY candle_time",
            (series_id, start, end),
        )
        return [Candle(*row) for row in rows]

    def head_time(self, series_id: str) -> int | None:
        rows = self._query("SELECT MAX(candle_time) FROM candles WHERE series_id = ?", (series_id,))
        return rows[0][0]

    def count(self, series_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM candles WHERE series_id = ?", (series_id,))
        return int(rows[0][0])

    def series_ids(self) -> list[str]:
        rows = self._query("SELECT DISTINCT series_id FROM candles ORDER BY series_id", ())
        return [row[0] for row in rows]

    def ping(self) -> None:
        try:
            self._query("SELECT 1", ())
        except sqlite3.Error as exc:
            raise Unavailable(f"sqlite store unavailable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
