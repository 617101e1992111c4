"""PostgreSQL candle store (psycopg 3 + a connection pool), TimescaleDB when the server has it.

Blocking psycopg only, never its async API: since psycopg 3.1.14 the blocking calls wait on
sockets through ``select``, which gevent's monkey-patching makes cooperative, and the pool's
worker threads become greenlets. So one code path serves plain threads and the gevent worker.

Connections run in autocommit: a read is one round trip, a write opens an explicit
transaction. Every operation of the contract is idempotent (reads, and upserts keyed by
``(series_id, candle_time)``), so an operation that fails because the connection died (server
restart, ``pg_terminate_backend``, failover) is retried a few times with short backoff after
asking the pool to weed out its other dead idle connections.

Bulk upserts: rows are streamed with binary ``COPY`` into a per-session temp table and merged
with one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``. Measured for 5000 rows on the local
PostgreSQL 15 (pure-Python libpq binding): COPY ~31 ms fresh / ~38 ms overwrite, pipelined
``executemany`` ~150 ms either way. Small batches (live candles) skip the temp table: they are
one ``INSERT ... SELECT FROM unnest(...)`` statement with the columns as arrays, one round trip
and, in autocommit, its own transaction (with the cluster-mode sequence bump in the same
statement). The schema and its numbered migrations are in ``pg_schema.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from typing import Any, Callable, Iterator, Sequence, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from trade_canvas.candles import Candle
from trade_canvas.errors import ConfigError, Fenced, Unavailable
from trade_canvas.factors.draw import Instruction
from trade_canvas.factors.events import FactorEvent
from trade_canvas.storage import DRAW_PATCH_LIMIT, DrawVersion, FactorSnapshot, Fence, event_rows
from trade_canvas.storage.pg_schema import Conn, run_migrations

logger = logging.getLogger(__name__)

DSN_SETTING = "TRADE_CANVAS_POSTGRES_DSN"
SCHEMA_SETTING = "TRADE_CANVAS_POSTGRES_SCHEMA"
SCHEMA_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Below this many rows one INSERT ... SELECT FROM unnest(arrays) beats COPY + temp table
# (measured, sequenced: 1 row 0.37 ms vs 1.3 ms, 128 rows 1.2 ms vs 2.3 ms, 256 rows and more
# about equal).
COPY_MIN_ROWS = 256
# Backoff before each retry of an operation that lost its connection; len() is the retry count.
RETRY_DELAYS_S: tuple[float, ...] = (0.05, 0.25, 1.0)
# How long the pool retries one lost connection (backoff 1 s, 2 s, ...) before it gives the slot
# up; the next request then connects at once. The pool's default (300 s) let the backoff grow to
# 16 s and more during an outage, so requests kept failing for ~20 s after the server was back.
RECONNECT_TIMEOUT_S = 3.0
# A fenced factor batch locks its lease row; a process frozen inside one (SIGSTOP, a VM pause)
# would keep any other node from claiming the series for as long as it stays frozen. The
# server ends such a transaction after this long without a statement (below the default
# lease TTL of 3 s; a batch sends its statements back to back).
FENCE_IDLE_TIMEOUT_MS = 1000

T = TypeVar("T")




_URL_PREFIX = re.compile(r"^(postgres(?:ql)?://)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


class DeadlineExceeded(psycopg.OperationalError):
    """A control transaction got no answer in time: the connection must be dropped."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt the calling greenlet's wait on Postgres after ``seconds`` (the gevent worker).

    A partition that closes nothing and still acknowledges (or a server that stopped answering)
    leaves a query waiting forever: no TCP timeout fires while bytes are acknowledged. Cluster
    control transactions must end anyway, so that the process can fence itself and its
    supervisor stays responsive. Under gevent, psycopg waits in the patched ``poll``, where a
    ``gevent.Timeout`` interrupts it with ``DeadlineExceeded`` (an ordinary psycopg error, so
    callers drop the connection as after any connection loss). Without gevent's patching
    (tests of storage alone, CLI commands) nothing can interrupt a blocked socket and this does
    nothing; ``tcp_user_timeout`` still bounds a partition that drops packets.
    """
    try:
        from gevent import Timeout, monkey  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - gevent is a dependency of the server
        yield
        return
    if not monkey.is_module_patched("select"):
        yield
        return
    with Timeout(seconds, DeadlineExceeded(f"no answer from PostgreSQL within {seconds:g}s")):
        yield


def close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection that may be broken already (it is closed either way)."""
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass


def redact_dsn(dsn: str) -> str:
    """Return the DSN with any password replaced by ``***`` (URL and key=value forms)."""
    match = _URL_PREFIX.match(dsn)
    if match is None:
        return _KEYWORD_PASSWORD.sub(r"\1***", dsn)
    scheme, rest = match.group(1), dsn[match.end():]
    before_query = rest.split("?", 1)[0]
    at = before_query.rfind("@")  # userinfo ends at the last "@" of the authority
    if at >= 0 and ":" in before_query[:at]:
        user = before_query[: before_query.index(":")]
        rest = f"{user}:***{rest[at:]}"
    return scheme + _QUERY_PASSWORD.sub(r"\1***", rest)


def _scrub(text: str, dsn: str) -> str:
    # One line: libpq's messages carry "\n\tIs the server running..." style continuations.
    password = _dsn_password(dsn)
    return " ".join((text.replace(password, "***") if password else text).split())


def _dsn_password(dsn: str) -> str | None:
    try:
        return conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except psycopg.Error:
        return None


def _is_connection_loss(exc: psycopg.OperationalError) -> bool:
    # Client-side failures carry no SQLSTATE; 08 = connection exception; 57P01-03 = admin or
    # crash shutdown, cannot connect now; 40 = deadlock/serialization: all safe to redo.
    state = exc.sqlstate
    return state is None or state[:2] in ("08", "40") or state in ("57P01", "57P02", "57P03")


def _rejected_by_server(message: str) -> bool:
    transient = ("starting up", "shutting down", "in recovery", "too many clients")
    return "FATAL:" in message and not any(word in message for word in transient)


class _Queries:
    """The store's SQL, rendered once for its schema."""

    def __init__(self, schema: str) -> None:
        table = sql.Identifier(schema, "candles")
        columns = "candle_time, open, high, low, close, volume"
        conflict = (
            " ON CONFLICT (series_id, candle_time) DO UPDATE SET open = EXCLUDED.open, "
            "high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, "
            "volume = EXCLUDED.volume"
        )

        def render(text: str) -> str:
            return sql.SQL(text).format(table=table).as_string(None)

        self.merge_staged = render(
            "INSERT INTO {table} (series_id, " + columns + ") "
            "SELECT %s, " + columns + " FROM pg_temp.tc_candles_in ORDER BY candle_time" + conflict
        )
        # A few rows as one statement (one round trip, its own transaction in autocommit).
        unnested = ("unnest(%s::int8[], %s::float8[], %s::float8[], %s::float8[], %s::float8[], "
                    "%s::float8[]) AS u(" + columns + ")")
        self.write = render(
            "INSERT INTO {table} (series_id, " + columns + ") SELECT %s, u.* FROM " + unnested
            + conflict
        )
        heads = sql.Identifier(schema, "series_heads")
        # Cluster mode: the series' seq bump and the candles in one statement. The candles are
        # joined to the bumped row, so the heads row lock is taken before any candle row's and
        # held to the commit: writers of one series commit in seq order (spec 2.3, I1).
        bump = sql.SQL(
            "WITH bumped AS (INSERT INTO {heads} AS h (series_id, seq, head_time) "
            "VALUES (%s, 1, %s) ON CONFLICT (series_id) DO UPDATE SET seq = h.seq + 1, "
            "head_time = greatest(h.head_time, EXCLUDED.head_time) RETURNING seq), "
            "written AS (INSERT INTO {table} (series_id, " + columns + ") "
        ).format(heads=heads, table=table).as_string(None)
        self.write_sequenced = (
            bump + "SELECT %s, u.* FROM bumped, " + unnested + conflict
            + ") SELECT seq FROM bumped"
        )
        self.merge_staged_sequenced = (
            bump + "SELECT %s, s.* FROM bumped, (SELECT " + columns
            + " FROM pg_temp.tc_candles_in ORDER BY candle_time) AS s" + conflict
            + ") SELECT seq FROM bumped"
        )
        self.tail = render(
            "SELECT " + columns + " FROM {table} WHERE series_id = %s "
            "ORDER BY candle_time DESC LIMIT %s"
        )
        self.since = render(
            "SELECT " + columns + " FROM {table} WHERE series_id = %s AND candle_time > %s "
            "ORDER BY candle_time LIMIT %s"
        )
        self.range = render(
            "SELECT " + columns + " FROM {table} WHERE series_id = %s "
            "AND candle_time >= %s AND candle_time <= %s ORDER BY candle_time"
        )
        self.head = render("SELECT max(candle_time) FROM {table} WHERE series_id = %s")
        self.heads = sql.SQL(
            "SELECT series_id, seq, head_time FROM {heads} WHERE series_id = ANY(%s)"
        ).format(heads=heads).as_string(None)
        self.count = render("SELECT count(*) FROM {table} WHERE series_id = %s")
        # DISTINCT would read every row; this walks the primary key once per series instead.
        self.series_ids = render(
            "WITH RECURSIVE ids AS ("
            " (SELECT series_id FROM {table} ORDER BY series_id LIMIT 1)"
            " UNION ALL"
            " SELECT (SELECT c.series_id FROM {table} c WHERE c.series_id > ids.series_id"
            " ORDER BY c.series_id LIMIT 1) FROM ids WHERE ids.series_id IS NOT NULL"
            ") SELECT series_id FROM ids WHERE series_id IS NOT NULL"
        )


class _BacktestQueries:
    """The backtest_results statements of one schema."""

    def __init__(self, schema: str) -> None:
        table = sql.Identifier(schema, "backtest_results")

        def render(text: str) -> str:
            return sql.SQL(text).format(table=table).as_string(None)

        self.insert = render(
            "INSERT INTO {table} (job_id, finished_at, record_json) VALUES (%s, %s, %s) "
            "ON CONFLICT (job_id) DO UPDATE SET finished_at = EXCLUDED.finished_at, "
            "record_json = EXCLUDED.record_json")
        self.prune = render(
            "DELETE FROM {table} WHERE job_id NOT IN (SELECT job_id FROM {table} "
            "ORDER BY finished_at DESC, job_id DESC LIMIT %s)")
        self.newest = render(
            "SELECT record_json FROM {table} ORDER BY finished_at DESC, job_id DESC LIMIT %s")


class _FactorQueries:
    """The factor ledger's SQL, rendered once for its schema."""

    def __init__(self, schema: str) -> None:
        def render(text: str) -> str:
            return sql.SQL(text).format(schema=sql.Identifier(schema)).as_string(None)

        events = "factor_name, kind, event_key, candle_time, payload_json"
        versions = "version_id, instruction_id, kind, visible_time, definition_json"
        # Cluster mode: the batch's first statement. FOR SHARE keeps the lease row from being
        # claimed (claims skip locked rows) until the batch committed or rolled back.
        self.fence = render(
            "SELECT 1 FROM {schema}.series_owners WHERE series_id = %s AND node_id = %s "
            "AND epoch = %s FOR SHARE"
        )
        self.insert_event = render(
            "INSERT INTO {schema}.factor_events (series_id, " + events + ") "
            "VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (series_id, factor_name, event_key) DO NOTHING"
        )
        self.upsert_state = render(
            "INSERT INTO {schema}.factor_state (series_id, head_time, fingerprint, state_json) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (series_id) DO UPDATE SET "
            "head_time = EXCLUDED.head_time, fingerprint = EXCLUDED.fingerprint, "
            "state_json = EXCLUDED.state_json"
        )
        # One statement for the whole batch; ids follow the ORDER BY, i.e. the given order.
        self.insert_versions = render(
            "INSERT INTO {schema}.draw_versions "
            "(series_id, instruction_id, kind, visible_time, definition_json) "
            "SELECT %s, i, k, v, d FROM unnest(%s::text[], %s::text[], %s::int8[], %s::text[]) "
            "WITH ORDINALITY AS u(i, k, v, d, n) ORDER BY n RETURNING version_id"
        )
        self.state = render(
            "SELECT head_time, fingerprint, state_json FROM {schema}.factor_state "
            "WHERE series_id = %s"
        )
        self.head = render("SELECT head_time FROM {schema}.factor_state WHERE series_id = %s")
        self.events = render(
            "SELECT " + events + " FROM {schema}.factor_events WHERE series_id = %s "
            "AND candle_time >= %s AND candle_time <= %s ORDER BY candle_time, id"
        )
        self.latest_event = render(
            "SELECT " + events + " FROM {schema}.factor_events WHERE series_id = %s "
            "AND factor_name = %s AND kind = %s AND candle_time <= %s "
            "ORDER BY candle_time DESC, id DESC LIMIT 1"
        )
        self.versions = render(
            "SELECT " + versions + " FROM {schema}.draw_versions WHERE series_id = %s "
            "AND version_id > %s AND visible_time <= %s ORDER BY version_id LIMIT %s"
        )
        self.last_version = render(
            "SELECT max(version_id) FROM {schema}.draw_versions WHERE series_id = %s"
        )
        self.clear = [
            render("DELETE FROM {schema}." + table + " WHERE series_id = %s")
            for table in ("factor_events", "factor_state", "draw_versions")
        ]


_STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS tc_candles_in (candle_time BIGINT, open FLOAT8, "
    "high FLOAT8, low FLOAT8, close FLOAT8, volume FLOAT8) ON COMMIT DELETE ROWS"
)
_STAGE_COPY = "COPY pg_temp.tc_candles_in FROM STDIN (FORMAT BINARY)"
_STAGE_TYPES = ("int8", "float8", "float8", "float8", "float8", "float8")

Row = tuple[int, float, float, float, float, float]


class PostgresCandleStore:
    """CandleStore on a PostgreSQL schema, through a bounded connection pool."""

    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        schema: str = "public",
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        connect_timeout_s: float = 5.0,
        sequenced: bool = False,
    ) -> None:
        """Connect, migrate the schema and open the pool.

        ``sequenced`` (cluster mode): every candle write also bumps the series' row in
        ``series_heads`` in its transaction and ``upsert_candles`` returns the new number. The
        row lock orders the writers of one series across processes, so commit order is
        sequence order and a follower that sees a jump knows it missed a write.

        Raises:
            ConfigError: bad schema name, pool sizes, DSN syntax, or the server rejected the
                login (unknown role or database, wrong password).
            Unavailable: the server cannot be reached within ``connect_timeout_s``.
        """
        _check_arguments(schema, pool_min_size, pool_max_size, connect_timeout_s)
        self.schema = schema
        self._dsn = dsn
        self._where = redact_dsn(dsn)
        self._closed = False
        self.sequenced = sequenced
        self._queries = _Queries(schema)
        self._factor = _FactorQueries(schema)
        self._backtests = _BacktestQueries(schema)
        self._connect_kwargs = _connect_kwargs(dsn, connect_timeout_s)
        self._migrate()
        self._pool = self._open_pool(pool_min_size, pool_max_size, connect_timeout_s)

    def _migrate(self) -> None:
        try:
            with psycopg.connect(self._dsn, **self._connect_kwargs) as conn:
                run_migrations(conn, self.schema)
        except psycopg.OperationalError as exc:
            raise self._connect_error(exc) from None
        except psycopg.Error as exc:  # e.g. no privilege to create the schema or its tables
            detail = _scrub(str(exc).strip(), self._dsn)
            raise ConfigError(
                f"cannot migrate {SCHEMA_SETTING} {self.schema} at {self._where} "
                f"({DSN_SETTING}): {detail}"
            ) from None

    def _open_pool(self, min_size: int, max_size: int, timeout_s: float) -> ConnectionPool[Conn]:
        pool: ConnectionPool[Conn] = ConnectionPool(
            self._dsn,
            kwargs=self._connect_kwargs,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            name=f"trade_canvas.{self.schema}",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout as exc:
            pool.close()
            raise self._connect_error(exc) from None
        logger.info("postgres store %s schema %s ready (pool %d..%d)",
                    self._where, self.schema, min_size, max_size)
        return pool

    def _connect_error(self, exc: psycopg.OperationalError) -> ConfigError | Unavailable:
        detail = _scrub(str(exc).strip(), self._dsn)
        message = f"cannot use PostgreSQL at {self._where} ({DSN_SETTING}): {detail}"
        return ConfigError(message) if _rejected_by_server(detail) else Unavailable(message)

    def _run(self, what: str, work: Callable[[Conn], T]) -> T:
        for attempt in range(len(RETRY_DELAYS_S) + 1):
            if self._closed:
                raise Unavailable(f"postgres store {self._where} is closed")
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except PoolTimeout as exc:
                # The pool already spent its whole timeout trying to connect: do not repeat it.
                raise self._unavailable(what, exc) from exc
            except psycopg.OperationalError as exc:
                if not _is_connection_loss(exc) or attempt == len(RETRY_DELAYS_S):
                    raise self._unavailable(what, exc) from exc
                self._before_retry(what, exc, attempt)
        raise AssertionError("unreachable")

    def _before_retry(self, what: str, exc: psycopg.OperationalError, attempt: int) -> None:
        delay = RETRY_DELAYS_S[attempt]
        logger.warning("postgres store %s: %s failed (%s); retry %d/%d in %.2f s",
                       self._where, what, _scrub(str(exc).strip(), self._dsn),
                       attempt + 1, len(RETRY_DELAYS_S), delay)
        if exc.sqlstate is None or not exc.sqlstate.startswith("40"):
            self._pool.check()  # drop the other idle connections the same outage killed
        time.sleep(delay)

    def _unavailable(self, what: str, exc: psycopg.OperationalError) -> Unavailable:
        detail = _scrub(str(exc).strip(), self._dsn)
        return Unavailable(f"postgres store {self._where}: {what} failed: {detail}")

    def upsert_candles(self, series_id: str, candles: Sequence[Candle]) -> int | None:
        """Insert or overwrite candles in one transaction; the last one given per time wins.

        Returns the series' new write sequence number when ``sequenced``, else None.
        """
        by_time = {candle.candle_time: candle.to_row() for candle in candles}
        rows = [by_time[t] for t in sorted(by_time)]  # one lock order: no upsert deadlocks
        if not rows:
            return None
        if len(rows) >= COPY_MIN_ROWS:
            return self._run("upsert", lambda conn: self._copy_rows(conn, series_id, rows))
        return self._run("upsert", lambda conn: self._insert_rows(conn, series_id, rows))

    def read_heads(self, series_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Return ``{series_id: (seq, head_time)}`` of the series written in cluster mode."""
        rows = self._fetch("read_heads", self._queries.heads, (list(series_ids),))
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    def _insert_rows(self, conn: Conn, series_id: str, rows: list[Row]) -> int | None:
        # One statement, so one round trip and (autocommit) its own transaction.
        columns = [list(column) for column in zip(*rows)]
        arrays = [columns[0], *([float(x) for x in column] for column in columns[1:])]
        if not self.sequenced:
            conn.execute(self._queries.write, (series_id, *arrays))
            return None
        bumped = conn.execute(self._queries.write_sequenced,
                              (series_id, rows[-1][0], series_id, *arrays)).fetchone()
        return int(bumped[0]) if bumped is not None else None

    def _copy_rows(self, conn: Conn, series_id: str, rows: list[Row]) -> int | None:
        # Created inside the transaction (not once per connection) so that it also works
        # behind a transaction-pooling proxy such as pgbouncer.
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_STAGE_TABLE)
            with cur.copy(_STAGE_COPY) as copy:
                copy.set_types(_STAGE_TYPES)
                for row in rows:
                    copy.write_row(row)
            if not self.sequenced:
                cur.execute(self._queries.merge_staged, (series_id,))
                return None
            cur.execute(self._queries.merge_staged_sequenced,
                        (series_id, rows[-1][0], series_id))
            bumped = cur.fetchone()
        return int(bumped[0]) if bumped is not None else None

    def _fetch(self, what: str, query: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return self._run(what, lambda conn: conn.execute(query, args).fetchall())

    def read_rows(
        self, series_id: str, since: int | None, limit: int
    ) -> list[tuple[int, float, float, float, float, float]]:
        """Return a tail (``since`` None) or since read as raw rows, oldest first."""
        if since is None:
            rows = self._fetch("read_tail", self._queries.tail, (series_id, limit))
            rows.reverse()
            return rows
        return self._fetch("read_since", self._queries.since, (series_id, since, limit))

    def read_tail(self, series_id: str, limit: int) -> list[Candle]:
        """Return the newest ``limit`` candles, oldest first."""
        return [Candle(*row) for row in self.read_rows(series_id, None, limit)]

    def read_since(self, series_id: str, since: int, limit: int) -> list[Candle]:
        """Return the first ``limit`` candles with ``candle_time > since``, oldest first."""
        return [Candle(*row) for row in self.read_rows(series_id, since, limit)]

    def read_range(self, series_id: str, start: int, end: int) -> list[Candle]:
        """Return all candles with ``start <= candle_time <= end``, oldest first."""
        rows = self._fetch("read_range", self._queries.range, (series_id, start, end))
        return [Candle(*row) for row in rows]

    def head_time(self, series_id: str) -> int | None:
        """Return the newest stored candle_time, or None for an empty series."""
        value = self._fetch("head_time", self._queries.head, (series_id,))[0][0]
        return None if value is None else int(value)

    def count(self, series_id: str) -> int:
        """Return how many candles the series has."""
        return int(self._fetch("count", self._queries.count, (series_id,))[0][0])

    def series_ids(self) -> list[str]:
        """Return every series id that has candles, sorted bytewise."""
        return [row[0] for row in self._fetch("series_ids", self._queries.series_ids, ())]

    def save_factor_batch(
        self,
        series_id: str,
        events: Sequence[FactorEvent],
        snapshot: FactorSnapshot,
        instructions: Sequence[Instruction],
        fence: Fence | None = None,
    ) -> list[DrawVersion]:
        """Store events (insert or ignore), snapshot and new draw versions in one transaction.

        Raises:
            Fenced: ``fence`` is given and the series' lease no longer has that node and epoch.
        """
        rows = event_rows(series_id, events)
        state = (series_id, snapshot.head_time, snapshot.fingerprint, snapshot.state_json)

        def work(conn: Conn) -> list[DrawVersion]:
            with conn.transaction(), conn.cursor() as cur:
                if fence is not None:
                    self.hold_fence(cur, series_id, fence)
                if rows:
                    cur.executemany(self._factor.insert_event, rows)
                cur.execute(self._factor.upsert_state, state)
                if not instructions:
                    return []
                cur.execute(self._factor.insert_versions, (
                    series_id,
                    [i.instruction_id for i in instructions], [i.kind for i in instructions],
                    [i.visible_time for i in instructions],
                    [i.definition_json for i in instructions],
                ))
                ids = sorted(int(row[0]) for row in cur.fetchall())
            return [
                DrawVersion(vid, i.instruction_id, i.kind, i.visible_time, i.definition_json)
                for vid, i in zip(ids, instructions)
            ]

        return self._run("save_factor_batch", work)

    def hold_fence(self, cur: Any, series_id: str, fence: Fence) -> None:
        """Start a fenced transaction: lock the series' lease row FOR SHARE if ``fence`` (node,
        epoch) still holds it, and let the server end the transaction if this process stops
        sending within ``FENCE_IDLE_TIMEOUT_MS`` (frozen mid-batch: SIGSTOP, a VM pause), since
        no other node can claim the row while it is locked.

        Raises:
            Fenced: the series' lease no longer has that node and epoch.
        """
        cur.execute(f"SET LOCAL idle_in_transaction_session_timeout = {FENCE_IDLE_TIMEOUT_MS}")
        if cur.execute(self._factor.fence, (series_id, *fence)).fetchone() is None:
            raise Fenced(f"the lease of {series_id} is no longer held by node "
                         f"{fence[0]} at epoch {fence[1]}")

    def read_factor_snapshot(self, series_id: str) -> FactorSnapshot | None:
        """Return the stored engine snapshot, or None before the first batch."""
        rows = self._fetch("read_factor_snapshot", self._factor.state, (series_id,))
        return FactorSnapshot(int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def factor_head_time(self, series_id: str) -> int | None:
        """Return the snapshot's ``head_time`` without reading the state itself."""
        rows = self._fetch("factor_head_time", self._factor.head, (series_id,))
        return int(rows[0][0]) if rows else None

    def read_factor_events(self, series_id: str, start: int, end: int) -> list[FactorEvent]:
        """Return events with ``start <= candle_time <= end``, in insertion order per time."""
        rows = self._fetch("read_factor_events", self._factor.events, (series_id, start, end))
        return [FactorEvent(r[0], r[1], r[2], int(r[3]), r[4]) for r in rows]

    def read_latest_factor_event(
        self, series_id: str, factor_name: str, kind: str, at_or_before: int
    ) -> FactorEvent | None:
        """Return the newest event of ``kind`` with ``candle_time <= at_or_before``."""
        args = (series_id, factor_name, kind, at_or_before)
        rows = self._fetch("read_latest_factor_event", self._factor.latest_event, args)
        if not rows:
            return None
        row = rows[0]
        return FactorEvent(row[0], row[1], row[2], int(row[3]), row[4])

    def read_draw_versions(
        self, series_id: str, after_version_id: int, to_time: int, limit: int = DRAW_PATCH_LIMIT
    ) -> list[DrawVersion]:
        """Return versions with ``version_id > after``, ``visible_time <= to_time``, ascending."""
        args = (series_id, after_version_id, to_time, limit)
        rows = self._fetch("read_draw_versions", self._factor.versions, args)
        return [DrawVersion(int(r[0]), r[1], r[2], int(r[3]), r[4]) for r in rows]

    def last_draw_version(self, series_id: str) -> int:
        """Return the series' newest draw ``version_id``, or 0 when it has none."""
        rows = self._fetch("last_draw_version", self._factor.last_version, (series_id,))
        return int(rows[0][0] or 0)

    def save_backtest(self, job_id: str, finished_at: float, record_json: str, keep: int) -> None:
        """Store a finished backtest's record; only the newest ``keep`` records are kept."""

        def work(conn: Conn) -> None:
            with conn.transaction():
                conn.execute(self._backtests.insert, (job_id, finished_at, record_json))
                conn.execute(self._backtests.prune, (keep,))

        self._run("save_backtest", work)

    def read_backtests(self, limit: int) -> list[str]:
        """Return the newest ``limit`` backtest records (JSON), newest first."""
        return [str(row[0]) for row in self._fetch("read_backtests", self._backtests.newest,
                                                    (limit,))]

    def clear_factor_data(self, series_id: str) -> None:
        """Delete the series' factor events, snapshot and draw versions (never its candles)."""

        def work(conn: Conn) -> None:
            with conn.transaction():
                for query in self._factor.clear:
                    conn.execute(query, (series_id,))

        self._run("clear_factor_data", work)

    def ping(self) -> None:
        """Run ``SELECT 1``; raise Unavailable if the server cannot answer."""
        self._fetch("ping", "SELECT 1", ())

    def close(self) -> None:
        """Close the pool; further calls raise Unavailable."""
        if self._closed:
            return
        self._closed = True
        self._pool.close()
        logger.info("postgres store %s schema %s closed", self._where, self.schema)


def _check_arguments(schema: str, min_size: int, max_size: int, timeout_s: float) -> None:
    problems = []
    if not SCHEMA_PATTERN.match(schema):
        problems.append(f"{SCHEMA_SETTING} {schema!r} must match {SCHEMA_PATTERN.pattern}")
    if min_size < 0 or max_size < 1 or min_size > max_size:
        problems.append(f"pool sizes must satisfy 0 <= min ({min_size}) <= max ({max_size}) >= 1")
    if not timeout_s >= 0.1:
        problems.append(f"connect timeout must be >= 0.1 s, got {timeout_s}")
    if problems:
        raise ConfigError("; ".join(problems))


POOL_TCP_USER_TIMEOUT_MS = 15_000


def _connect_kwargs(dsn: str, connect_timeout_s: float) -> dict[str, Any]:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's parse message quotes the DSN (password included), so it is not passed on.
        raise ConfigError(
            f"{DSN_SETTING} is not a valid PostgreSQL connection string ({redact_dsn(dsn)}); "
            "expected postgresql://user[:password]@host:port/database or key=value pairs"
        ) from None
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, math.ceil(connect_timeout_s)),
        # A server or host that vanishes without a FIN: idle connections are found dead by
        # keepalives, and a request the network stopped carrying fails after TCP_USER_TIMEOUT
        # instead of the kernel's ~15 minutes of retransmissions.
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 2, "keepalives_count": 3,
        "tcp_user_timeout": POOL_TCP_USER_TIMEOUT_MS,
    }
    if "application_name" not in params:
        kwargs["application_name"] = "trade_canvas"
    return kwargs
