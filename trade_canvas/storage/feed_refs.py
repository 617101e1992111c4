"""On-demand feeds for the whole cluster: subscriber counts, idle TTL and the job cap in Postgres.

``ClusterFeedDemand`` makes the decisions of the pure ``feed_demand.FeedDemand`` (start a feed,
evict the longest-idle one, refuse with ``CapacityExceeded``, reap after the idle TTL) for every
process of the cluster at once (README "Running several processes"). Two tables (migration 7):

- ``feed_refs (series_id, node_id)``: one node's subscriber count of a series, and whether the
  node pins it (its whitelist). A node's own process is the truth for its rows: a 0<->1 change
  is written at once (it may start, evict, refuse or idle a job); larger counts are written by
  the next sweep; a sweep also puts back rows that others deleted while they took this node
  for dead (frozen, cut off). Rows of dead nodes are deleted by whichever node sweeps next, so
  their subscribers stop counting.
- ``feed_jobs (series_id)``: the on-demand jobs of the cluster, whatever node asked for them and
  whatever node holds the series' lease and runs the feed. ``idle_since`` is set when the
  cluster's count (the sum over live nodes) drops to 0; the job is deleted ``idle_ttl_s`` later.

Every transaction that reads or changes jobs holds one transaction-scoped advisory lock per
schema (``pg_advisory_xact_lock``: released by the commit, so it also works behind a
transaction-mode pooler), so ``ONDEMAND_MAX_JOBS`` counts distinct jobs over all nodes and two
nodes never both take the last slot. A series pinned by any live node is not on demand: it
neither counts against the cap, nor idles, nor is evicted.

Every node mirrors the cluster's jobs in ``jobs`` (refreshed by each sweep, the supervisor's
tick), so every node wants the lease of every job: the feed stays with its lease owner while
the job lives, whichever nodes subscribe and unsubscribe meanwhile (same owner, same epoch), and
a job whose owner dies is taken over like any other series. A job evicted or expired by another
node leaves the mirror at the next sweep, and the owner stops its feed then.

Times: ``idle_since`` is Postgres' clock (epoch seconds) unless ``server_clock`` is off, when the
callers' ``now`` is used (the property test against the pure model).

Where this differs from the design (``scaleout.md`` section 2.7), and why:
- ``feed_refs`` has no foreign key to ``cluster_nodes`` (no cascade): a node's first subscribe
  may commit before its first heartbeat. Dead nodes' rows are deleted by the sweeps instead; a
  row of a node without any heartbeat row counts for ``grace_s`` (the lease TTL).
- Idle clocks and expiry are run by every node's sweep, not by the owner's lease tick: a job
  whose owner died still expires, and the lease tick stays one short transaction.
- No ``e|sid`` notification on eviction: the owner stops the evicted feed at its next sweep
  (at most one supervisor tick, 0.5 s, later).
- Every node, not only the asking one, wants the lease of every job; the asking node wants it
  at once and the others only from their next sweep, so it usually claims it first.
- Pinned is per node (``feed_refs.pinned``): a series pinned by any live node is not on demand,
  so nodes with different whitelists stay consistent; there is no whitelist hash warning.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg import sql

from trade_canvas.errors import CapacityExceeded, Unavailable
from trade_canvas.feed_demand import Acquired, FeedJob
from trade_canvas.storage.leases import Node, control_connection, control_deadline_s
from trade_canvas.storage.postgres import close_quietly, deadline, redact_dsn

logger = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 2.0  # a failed sweep is not retried sooner (the supervisor waits on it)
FULL_SWEEP_EVERY = 20  # sweeps; the others skip the checks that scan every row

_NOW = "coalesce(%(now)s::float8, extract(epoch FROM now())::float8)"
_PINNED = "SELECT 1 FROM {s}.feed_refs p WHERE p.series_id = j.series_id AND p.pinned"
_HELD = ("SELECT 1 FROM {s}.feed_refs r WHERE r.series_id = j.series_id "
         "AND (r.refs > 0 OR r.pinned)")

_QUERIES = {
    "lock": "SELECT pg_advisory_xact_lock(%(key)s)",
    "try_lock": "SELECT pg_try_advisory_xact_lock(%(key)s)",
    # The rows of nodes whose heartbeat expired.
    "forget_dead": (
        "DELETE FROM {s}.feed_refs r WHERE r.node_id IN (SELECT n.node_id FROM {s}.cluster_nodes n "
        "WHERE n.expires_at <= now() AND n.node_id <> %(node)s) "
        "AND r.touched_at < now() - %(grace)s * interval '1 second'"
    ),
    # Also the rows of nodes that have no heartbeat row at all (died before their first, or
    # forgotten): a scan of the whole table, so only every FULL_SWEEP_EVERY sweeps.
    "forget_all_dead": (
        "DELETE FROM {s}.feed_refs r WHERE r.node_id <> %(node)s "
        "AND r.touched_at < now() - %(grace)s * interval '1 second' "
        "AND NOT EXISTS (SELECT 1 FROM {s}.cluster_nodes n WHERE n.node_id = r.node_id "
        "AND n.expires_at > now())"
    ),
    "mine": "SELECT series_id, refs, pinned FROM {s}.feed_refs WHERE node_id = %(node)s",
    "mine_summary": (
        "SELECT count(*), coalesce(sum(refs), 0), count(*) FILTER (WHERE pinned) "
        "FROM {s}.feed_refs WHERE node_id = %(node)s"
    ),
    "write": (
        "INSERT INTO {s}.feed_refs AS f (series_id, node_id, refs, pinned, touched_at) "
        "SELECT x.sid, %(node)s, x.refs, x.pinned, now() "
        "FROM unnest(%(sids)s::text[], %(refs)s::int[], %(pins)s::bool[]) AS x(sid, refs, pinned) "
        "ON CONFLICT (series_id, node_id) DO UPDATE SET refs = EXCLUDED.refs, "
        "pinned = EXCLUDED.pinned, touched_at = now()"
    ),
    "drop": "DELETE FROM {s}.feed_refs WHERE node_id = %(node)s AND series_id = ANY(%(sids)s)",
    "state": (
        "SELECT EXISTS (SELECT 1 FROM {s}.feed_refs WHERE series_id = %(sid)s AND pinned), "
        "EXISTS (SELECT 1 FROM {s}.feed_jobs WHERE series_id = %(sid)s)"
    ),
    "busy": "UPDATE {s}.feed_jobs SET idle_since = NULL WHERE series_id = %(sid)s",
    "count": f"SELECT count(*) FROM {{s}}.feed_jobs j WHERE NOT EXISTS ({_PINNED})",
    "victim": (
        f"SELECT j.series_id FROM {{s}}.feed_jobs j WHERE j.idle_since IS NOT NULL "
        f"AND NOT EXISTS ({_PINNED}) ORDER BY j.idle_since, j.series_id LIMIT 1"
    ),
    "evict": "DELETE FROM {s}.feed_jobs WHERE series_id = %(victim)s",
    "insert": "INSERT INTO {s}.feed_jobs (series_id, idle_since) VALUES (%(sid)s, NULL)",
    "idle_one": (
        f"UPDATE {{s}}.feed_jobs j SET idle_since = {_NOW} WHERE j.series_id = %(sid)s "
        f"AND j.idle_since IS NULL AND NOT EXISTS ({_HELD}) RETURNING j.idle_since"
    ),
    # This node counts subscribers of a series no job exists for (its rows were taken for a
    # dead node's and the job expired meanwhile, or the node pinning it died): a job again.
    "restore_jobs": (
        "INSERT INTO {s}.feed_jobs (series_id, idle_since) SELECT j.series_id, NULL "
        "FROM {s}.feed_refs j WHERE j.node_id = %(node)s AND j.refs > 0 AND NOT j.pinned "
        f"AND NOT EXISTS ({_PINNED}) ON CONFLICT DO NOTHING"
    ),
    "busy_all": (
        f"UPDATE {{s}}.feed_jobs j SET idle_since = NULL WHERE j.idle_since IS NOT NULL "
        f"AND EXISTS ({_HELD})"
    ),
    "idle_all": (
        f"UPDATE {{s}}.feed_jobs j SET idle_since = {_NOW} WHERE j.idle_since IS NULL "
        f"AND NOT EXISTS ({_HELD})"
    ),
    "expire": (
        f"DELETE FROM {{s}}.feed_jobs WHERE idle_since IS NOT NULL "
        f"AND {_NOW} - idle_since >= %(ttl)s::float8 RETURNING series_id"
    ),
    "list": (
        "SELECT j.series_id, j.idle_since, coalesce(sum(r.refs), 0), coalesce(bool_or(r.pinned), "
        "false) FROM {s}.feed_jobs j LEFT JOIN {s}.feed_refs r ON r.series_id = j.series_id "
        "GROUP BY j.series_id, j.idle_since"
    ),
    "leave": "DELETE FROM {s}.feed_refs WHERE node_id = %(node)s",
}


def jobs_lock_key(schema: str) -> int:
    """Return the advisory-lock key (signed 64-bit) serializing the feed jobs of ``schema``."""
    digest = hashlib.blake2b(f"trade_canvas.feed_jobs:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


@dataclass
class _Mine:
    """This node's count of one series' subscribers, and whether it pins the series."""

    refs: int = 0
    pinned: bool = False


class ClusterFeedDemand:
    """``FeedDemand`` for the whole cluster, over its own control connection (see module doc)."""

    def __init__(
        self, dsn: str, schema: str, node: Node, max_jobs: int, *,
        tick_s: float, grace_s: float, connect_timeout_s: float = 2.0,
        server_clock: bool = True, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.node = node
        self.max_jobs = max_jobs
        self.tick_s = tick_s
        self.grace_s = grace_s  # a node's rows count this long before its first heartbeat
        self.connect_timeout_s = connect_timeout_s
        self.server_clock = server_clock
        self.clock = clock
        self.key = jobs_lock_key(schema)
        self.jobs: dict[str, FeedJob] = {}  # this node's pins and the cluster's on-demand jobs
        self.local: dict[str, _Mine] = {}
        self.dirty: set[str] = set()  # local counts not written yet
        self._written: set[str] = set()  # by the transaction in progress
        self.retry_at = 0.0
        self.sweeps = 0
        self.failing = False
        self.counters = {"transactions": 0, "errors": 0, "sweeps_skipped": 0}
        ident = sql.Identifier(schema)
        self.queries = {name: sql.SQL(q).format(s=ident).as_string(None)
                        for name, q in _QUERIES.items()}
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._where = redact_dsn(dsn)

    # -- the FeedDemand interface

    def pin(self, series_id: str) -> bool:
        """Follow a series for the life of this node; True if its feed must start."""
        mine = self.local.setdefault(series_id, _Mine())
        mine.pinned = True
        self.dirty.add(series_id)  # written by the next transaction
        job = self.jobs.get(series_id)
        if job is not None:
            job.pinned = True
            job.idle_since = None
            return False
        self.jobs[series_id] = FeedJob(series_id, pinned=True, refcount=mine.refs)
        return True

    def acquire(self, series_id: str, now: float) -> Acquired:
        """Count one more subscriber here; a first one here is decided for the cluster.

        Raises:
            CapacityExceeded: ``max_jobs`` on-demand jobs run in the cluster and none is idle.
            Unavailable: Postgres did not answer (nothing is counted then).
        """
        mine = self.local.get(series_id)
        job = self.jobs.get(series_id)
        if mine is not None and (mine.pinned or mine.refs > 0):
            mine.refs += 1  # the cluster's count is above 0 already: written by the next sweep
            self.dirty.add(series_id)
            if job is not None:
                job.refcount += 1
            return Acquired(start=False, evict=())
        self.local[series_id] = _Mine(refs=1)
        self.dirty.add(series_id)
        try:
            start, victim = self._transaction(
                "acquire", lambda cur: self._acquire(cur, series_id, now))
        except (CapacityExceeded, Unavailable):
            del self.local[series_id]  # still dirty: the next write deletes the row if any
            raise
        if job is not None:
            job.refcount += 1
            job.idle_since = None
        elif start:
            self.jobs[series_id] = FeedJob(series_id, pinned=False, refcount=1)
        if victim is None:
            return Acquired(start=start, evict=())
        self.jobs.pop(victim, None)
        return Acquired(start=start, evict=(victim,))

    def release(self, series_id: str, now: float) -> None:
        """Count one subscriber less here; at zero in the cluster the job's idle clock starts."""
        mine = self.local.get(series_id)
        if mine is None or mine.refs <= 0:
            return
        mine.refs -= 1
        self.dirty.add(series_id)
        job = self.jobs.get(series_id)
        if job is not None:
            job.refcount = max(0, job.refcount - 1)
        if mine.refs > 0 or mine.pinned:
            return
        del self.local[series_id]
        try:
            idle = self._transaction("release", lambda cur: self._release(cur, series_id, now))
        except Unavailable as exc:
            logger.warning("feed demand: release of %s not written yet: %s", series_id, exc)
            return
        if job is not None and idle is not None:
            job.idle_since = idle

    def expired(self, now: float, ttl_s: float) -> list[str]:
        """Sweep the cluster's jobs; return the ones gone from this node's mirror.

        Gone means idle for ``ttl_s`` (deleted by this sweep or another node's) or evicted by
        another node; the caller stops their feeds. Never raises: a sweep that fails is retried
        ``RETRY_AFTER_FAILURE_S`` later and returns nothing meanwhile.
        """
        if self.clock() < self.retry_at:
            return []
        try:
            listed = self._transaction("sweep", lambda cur: self._sweep(cur, now, ttl_s))
            if listed is None:
                self.counters["sweeps_skipped"] += 1
                return []
        except Unavailable as exc:
            self.retry_at = self.clock() + RETRY_AFTER_FAILURE_S
            if not self.failing:
                logger.warning("feed demand: sweep failed: %s", exc)
            self.failing = True
            return []
        if self.failing:
            logger.info("feed demand: sweeps commit again")
        self.failing = False
        for series_id, (idle_since, refcount, pinned) in listed.items():
            job = self.jobs.get(series_id)
            if job is None:
                job = self.jobs[series_id] = FeedJob(series_id, pinned=False)
            mine = self.local.get(series_id)
            job.pinned = pinned or (mine is not None and mine.pinned)
            job.refcount = refcount
            job.idle_since = idle_since
        gone = [sid for sid in self.jobs
                if sid not in listed and not (sid in self.local and self.local[sid].pinned)]
        for series_id in gone:
            del self.jobs[series_id]
        return gone

    def close(self) -> None:
        """Take this node's counts out of the cluster (graceful stop) and close the connection."""
        try:
            self._transaction("leave", self._leave)
        except Unavailable as exc:
            logger.warning("feed demand: could not remove this node's counts: %s", exc)
        conn, self._conn = self._conn, None
        close_quietly(conn)

    # -- transactions

    def _args(self, **extra: Any) -> dict[str, Any]:
        return {"node": self.node.node_id, "key": self.key, "grace": self.grace_s, **extra}

    def _prelude(self, cur: psycopg.Cursor[Any], now: float) -> dict[str, Any]:
        """Lock the jobs, forget dead nodes' counts, write this node's pending counts."""
        args = self._args(now=None if self.server_clock else now)
        q = self.queries
        cur.execute(q["lock"], args)
        cur.execute(q["forget_dead"], args)
        self._write(cur, sorted(self.dirty), args)
        return args

    def _write(self, cur: psycopg.Cursor[Any], series_ids: list[str], args: dict[str, Any]) -> None:
        self._written.update(series_ids)
        keep = [(sid, self.local[sid]) for sid in series_ids if sid in self.local]
        drop = [sid for sid in series_ids if sid not in self.local]
        if keep:
            cur.execute(self.queries["write"], {
                **args, "sids": [sid for sid, _ in keep], "refs": [m.refs for _, m in keep],
                "pins": [m.pinned for _, m in keep]})
        if drop:
            cur.execute(self.queries["drop"], {**args, "sids": drop})

    def _acquire(self, cur: psycopg.Cursor[Any], series_id: str, now: float) -> tuple[bool, str | None]:
        args = {**self._prelude(cur, now), "sid": series_id}
        q = self.queries
        pinned, exists = _row(cur.execute(q["state"], args).fetchone())
        if pinned:
            return False, None  # another node's whitelist series: its feed runs already
        if exists:
            cur.execute(q["busy"], args)
            return False, None
        victim = None
        if self.max_jobs and int(_row(cur.execute(q["count"]).fetchone())[0]) >= self.max_jobs:
            row = cur.execute(q["victim"]).fetchone()
            if row is None:
                raise CapacityExceeded("ondemand_ingest_capacity")  # rolls the transaction back
            victim = str(row[0])
            cur.execute(q["evict"], {**args, "victim": victim})
        cur.execute(q["insert"], args)
        return True, victim

    def _release(self, cur: psycopg.Cursor[Any], series_id: str, now: float) -> float | None:
        args = {**self._prelude(cur, now), "sid": series_id}
        row = cur.execute(self.queries["idle_one"], args).fetchone()
        return None if row is None else float(row[0])

    def _sweep(
        self, cur: psycopg.Cursor[Any], now: float, ttl_s: float
    ) -> dict[str, tuple[float | None, int, bool]] | None:
        q = self.queries
        args = self._args(now=None if self.server_clock else now, ttl=ttl_s)
        # Never waits: the supervisor runs the sweep, and must not stall behind another node's
        # transaction; a sweep that finds the lock taken is skipped (None) until the next tick.
        if not _row(cur.execute(q["try_lock"], args).fetchone())[0]:
            return None
        full = self.sweeps % FULL_SWEEP_EVERY == 0
        self.sweeps += 1
        cur.execute(q["forget_all_dead" if full else "forget_dead"], args)
        self._write(cur, sorted(self.dirty), args)
        # Others delete all of a node's rows at once when they take it for dead: a count shows it.
        count, refs, pins = _row(cur.execute(q["mine_summary"], args).fetchone())
        mine = self.local.values()
        if full or (count, refs, pins) != (len(mine), sum(m.refs for m in mine),
                                            sum(m.pinned for m in mine)):
            written = {r[0]: (int(r[1]), bool(r[2])) for r in cur.execute(q["mine"], args)}
            stale = {sid for sid, m in self.local.items() if written.get(sid) != (m.refs, m.pinned)}
            self._write(cur, sorted(stale | {sid for sid in written if sid not in self.local}), args)
            cur.execute(q["restore_jobs"], args)
        for name in ("busy_all", "idle_all", "expire"):
            cur.execute(q[name], args)
        return {str(r[0]): (None if r[1] is None else float(r[1]), int(r[2]), bool(r[3]))
                for r in cur.execute(q["list"]).fetchall()}

    def _leave(self, cur: psycopg.Cursor[Any]) -> None:
        args = self._args(now=None)
        cur.execute(self.queries["lock"], args)
        cur.execute(self.queries["leave"], args)  # the next sweep (any node's) starts idle clocks

    def _transaction(self, what: str, work: Callable[[psycopg.Cursor[Any]], Any]) -> Any:
        try:
            with self._lock, deadline(control_deadline_s(self.tick_s)):
                if self._conn is None or self._conn.closed:
                    self._conn = control_connection(
                        self.dsn, f"trade_canvas.feeds:{self.node.name}", self.tick_s,
                        self.connect_timeout_s)
                self._written = set()
                with self._conn.transaction(), self._conn.cursor() as cur:
                    result = work(cur)
                self.dirty -= self._written  # those counts went out with the commit
                self.counters["transactions"] += 1
                return result
        except psycopg.Error as exc:
            self.counters["errors"] += 1
            conn, self._conn = self._conn, None
            close_quietly(conn)
            detail = " ".join(str(exc).split())
            raise Unavailable(f"cluster feed jobs at {self._where}: {what} failed: {detail}") from None


def _row(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    assert row is not None  # aggregates and EXISTS pairs always return a row
    return row
