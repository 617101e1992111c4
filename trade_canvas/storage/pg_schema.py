"""The Postgres store's schema: numbered migrations, applied once per schema under a lock.

Each step runs in its own transaction and is recorded in ``<schema>.schema_migrations``; two
processes booting at once serialise on an advisory lock and the second finds the work done.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

# One week of unix seconds per chunk: a week of 1m candles is ~10k rows per series, so even a
# thousand series keep the hot chunk's index small enough to stay in memory.
CHUNK_INTERVAL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema step; ``apply`` runs inside a transaction and must be re-runnable."""

    version: int
    name: str
    apply: Callable[[Conn, str], None]


def _statements(*texts: str) -> Callable[[Conn, str], None]:
    """Return a migration body running DDL texts with ``{schema}`` bound to the schema."""

    def apply(conn: Conn, schema: str) -> None:
        for text in texts:
            conn.execute(sql.SQL(text).format(schema=sql.Identifier(schema)))

    return apply


def _make_hypertable(conn: Conn, schema: str) -> None:
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        logger.info("timescaledb is not available; candles stay a plain table")
        return
    try:
        with conn.transaction():  # a savepoint: a failure leaves the migration usable
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        # Listed but unusable (not in shared_preload_libraries, or no privilege): plain is fine.
        logger.warning("timescaledb is available but cannot be created (%s); plain table", exc)
        return
    table = sql.Identifier(schema, "candles").as_string(conn)
    # The pre-2.13 signature: still accepted by current releases and by older installs alike.
    # No default time index: the primary key (series_id, candle_time) serves every query.
    conn.execute(
        "SELECT create_hypertable(%s::regclass, 'candle_time', "
        "chunk_time_interval => %s::bigint, create_default_indexes => FALSE, "
        "if_not_exists => TRUE, migrate_data => TRUE)",
        (table, CHUNK_INTERVAL_S),
    )
    logger.info("candles is a timescaledb hypertable (chunk %d s)", CHUNK_INTERVAL_S)


# Append new steps (factor events, state snapshots, fingerprints...) as one entry each; never
# edit or renumber a step that has shipped.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "candles",
        # COLLATE "C": series ids sort bytewise, as the SQLite store and Python's sorted() do.
        _statements(
            """
            CREATE TABLE IF NOT EXISTS {schema}.candles (
                series_id TEXT COLLATE "C" NOT NULL,
                candle_time BIGINT NOT NULL,
                open DOUBLE PRECISION NOT NULL,
                high DOUBLE PRECISION NOT NULL,
                low DOUBLE PRECISION NOT NULL,
                close DOUBLE PRECISION NOT NULL,
                volume DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (series_id, candle_time)
            )
            """
        ),
    ),
    Migration(2, "candles hypertable when timescaledb is available", _make_hypertable),
    Migration(
        3,
        "factor events, state snapshots and draw versions",
        # JSON stays TEXT: the canonical text the engine wrote is what readers compare and send.
        _statements(
            """
            CREATE TABLE IF NOT EXISTS {schema}.factor_events (
                id BIGSERIAL PRIMARY KEY,
                series_id TEXT COLLATE "C" NOT NULL,
                factor_name TEXT NOT NULL,
                kind TEXT NOT NULL,
                event_key TEXT NOT NULL,
                candle_time BIGINT NOT NULL,
                payload_json TEXT NOT NULL,
                UNIQUE (series_id, factor_name, event_key)
            )
            """,
            "CREATE INDEX IF NOT EXISTS factor_events_by_time "
            "ON {schema}.factor_events (series_id, candle_time)",
            "CREATE INDEX IF NOT EXISTS factor_events_by_kind "
            "ON {schema}.factor_events (series_id, factor_name, kind, candle_time)",
            """
            CREATE TABLE IF NOT EXISTS {schema}.factor_state (
                series_id TEXT COLLATE "C" PRIMARY KEY,
                head_time BIGINT NOT NULL,
                fingerprint TEXT NOT NULL,
                state_json TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS {schema}.draw_versions (
                version_id BIGSERIAL PRIMARY KEY,
                series_id TEXT COLLATE "C" NOT NULL,
                instruction_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                visible_time BIGINT NOT NULL,
                definition_json TEXT NOT NULL
            )
            """,
            "CREATE INDEX IF NOT EXISTS draw_versions_by_series "
            "ON {schema}.draw_versions (series_id, version_id)",
        ),
    ),
    Migration(
        4,
        "cluster mode: nodes, series leases with a fencing epoch, per-series write sequence",
        # Times are Postgres' now(): no process compares its own clock with another's.
        _statements(
            """
            CREATE TABLE IF NOT EXISTS {schema}.cluster_nodes (
                node_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                pid INTEGER NOT NULL,
                backend_pid INTEGER,
                backend_start TIMESTAMPTZ,
                started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                heartbeat_at TIMESTAMPTZ NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS {schema}.series_owners (
                series_id TEXT COLLATE "C" PRIMARY KEY,
                node_id TEXT,
                epoch BIGINT NOT NULL DEFAULT 0,
                expires_at TIMESTAMPTZ NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS {schema}.series_heads (
                series_id TEXT COLLATE "C" PRIMARY KEY,
                seq BIGINT NOT NULL,
                head_time BIGINT NOT NULL
            )
            """,
        ),
    ),
    Migration(
        5,
        "backtest results",
        _statements(
            """
            CREATE TABLE IF NOT EXISTS {schema}.backtest_results (
                job_id TEXT COLLATE "C" PRIMARY KEY,
                finished_at DOUBLE PRECISION NOT NULL,
                record_json TEXT NOT NULL
            )
            """,
            "CREATE INDEX IF NOT EXISTS backtest_results_by_time "
            "ON {schema}.backtest_results (finished_at)",
        ),
    ),
    Migration(
        6,
        "cluster mode: a node below its fair share asks an owner for a series (handoff)",
        _statements("ALTER TABLE {schema}.series_owners ADD COLUMN IF NOT EXISTS taker TEXT"),
    ),
    Migration(
        7,
        "cluster mode: on-demand feed jobs and every node's subscriber counts",
        # idle_since: epoch seconds on Postgres' clock (a double, so tests can pass their own).
        _statements(
            """
            CREATE TABLE IF NOT EXISTS {schema}.feed_jobs (
                series_id TEXT COLLATE "C" PRIMARY KEY,
                idle_since DOUBLE PRECISION,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS {schema}.feed_refs (
                series_id TEXT COLLATE "C" NOT NULL,
                node_id TEXT NOT NULL,
                refs INTEGER NOT NULL,
                pinned BOOLEAN NOT NULL,
                touched_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (series_id, node_id)
            )
            """,
            "CREATE INDEX IF NOT EXISTS feed_refs_by_node ON {schema}.feed_refs (node_id)",
        ),
    ),
)
assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def migration_lock_key(schema: str) -> int:
    """Return the advisory-lock key (signed 64-bit) guarding migrations of ``schema``."""
    digest = hashlib.blake2b(f"trade_canvas.migrations:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def run_migrations(conn: Conn, schema: str) -> list[int]:
    """Apply the missing MIGRATIONS to ``schema`` under its advisory lock; return their numbers.

    ``conn`` must be in autocommit mode. Two processes booting at once serialise on the lock,
    and the second finds the work done.
    """
    key = migration_lock_key(schema)
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        done = _prepare_migrations(conn, schema)
        applied = []
        for migration in MIGRATIONS:
            if migration.version not in done:
                _apply(conn, schema, migration)
                applied.append(migration.version)
        return applied
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _prepare_migrations(conn: Conn, schema: str) -> set[int]:
    ident = sql.Identifier(schema)
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if exists is None:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ).format(ident)
    )
    rows = conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(ident))
    return {row[0] for row in rows.fetchall()}


def _apply(conn: Conn, schema: str, migration: Migration) -> None:
    ident = sql.Identifier(schema)
    with conn.transaction():
        migration.apply(conn, schema)
        conn.execute(
            sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(
                ident
            ),
            (migration.version, migration.name),
        )
    logger.info("postgres schema %s migrated to version %d (%s)",
                schema, migration.version, migration.name)
