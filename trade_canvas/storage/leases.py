"""Series leases on Postgres (cluster mode): one tick = heartbeat, renew, reap, claim.

Each process is a node with a row in ``cluster_nodes``; each followed series has a row in
``series_owners`` naming its owner, a fencing ``epoch`` (bumped on every claim) and an expiry.
All times are the server's ``now()``, so clocks of different hosts are never compared.

Why rows and not session advisory locks: a lock held behind a half-open connection lingers for
as long as TCP keepalives allow (hours by default), every lock vanishes at once on a server
restart, and a lock carries no epoch. A row expires on the server's clock whatever happens to
its owner's connection.

The tick runs on a dedicated control connection with short server-side timeouts
(``statement_timeout``, ``lock_timeout``, ``idle_in_transaction_session_timeout``) and a kernel
``tcp_user_timeout``, so a frozen or cut-off node cannot hold a lease row locked for long and a
tick never hangs for long: a frozen owner inside its lease transaction would otherwise block
every takeover.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import psycopg
from psycopg import sql

from trade_canvas.cluster import Hint, claim_room, encode_hint
from trade_canvas.errors import Unavailable
from trade_canvas.storage.postgres import DeadlineExceeded, close_quietly, deadline, redact_dsn

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one committed tick found: the series this node owns (with epochs), and peers."""

    owned: dict[str, int]
    alive: int
    released: tuple[str, ...] = ()
    claimed: tuple[str, ...] = ()
    # Owned, but a live node with less than its fair share asked for them: stop their feeds,
    # then pass them to the next tick's ``hand_over`` (still renewed until then).
    asked: tuple[str, ...] = ()


@dataclass
class Node:
    """This process as a cluster node."""

    node_id: str
    name: str
    pid: int


@dataclass
class LeaseQueries:
    """The lease SQL, rendered for one schema."""

    schema: str
    text: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ident = sql.Identifier(self.schema)

        def render(query: str) -> str:
            return sql.SQL(query).format(s=ident).as_string(None)

        self.text = {name: render(query) for name, query in _QUERIES.items()}

    def __getitem__(self, name: str) -> str:
        return self.text[name]


_QUERIES = {
    "heartbeat": (
        "INSERT INTO {s}.cluster_nodes AS n (node_id, name, pid, backend_pid, backend_start, "
        "heartbeat_at, expires_at) SELECT %(node)s, %(name)s, %(pid)s, pg_backend_pid(), "
        "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()), now(), "
        "now() + %(ttl)s * interval '1 second' ON CONFLICT (node_id) DO UPDATE SET "
        "heartbeat_at = now(), expires_at = EXCLUDED.expires_at, "
        "backend_pid = EXCLUDED.backend_pid, backend_start = EXCLUDED.backend_start"
    ),
    # Ours but no longer wanted: free at once (the others claim on the release hint).
    "release": (
        "UPDATE {s}.series_owners SET node_id = NULL, expires_at = now() "
        "WHERE node_id = %(node)s AND NOT (series_id = ANY(%(wanted)s)) RETURNING series_id"
    ),
    # Asked for by a live node and already stopped here (the previous tick reported them as
    # asked): free at once; the asker claims on the release hint.
    "hand_over": (
        "UPDATE {s}.series_owners o SET node_id = NULL, expires_at = now(), taker = NULL "
        "WHERE o.node_id = %(node)s AND o.series_id = ANY(%(hand_over)s) "
        "AND o.taker IS NOT NULL AND EXISTS (SELECT 1 FROM {s}.cluster_nodes n "
        "WHERE n.node_id = o.taker AND n.expires_at > now()) RETURNING o.series_id"
    ),
    # Ours, with a live asker: reported so the feeds stop before the next tick frees them.
    "asked": (
        "SELECT o.series_id FROM {s}.series_owners o JOIN {s}.cluster_nodes n "
        "ON n.node_id = o.taker AND n.expires_at > now() WHERE o.node_id = %(node)s "
        "ORDER BY o.series_id"
    ),
    # Below our fair share of what we want: ask owners holding more than the cluster's
    # average for wanted series, never more of one owner than takes it down to the average
    # (counting what others asked of it already). Rebalances a cluster whose first node
    # claimed everything before the others joined; a few ticks converge.
    "ask": (
        "WITH load AS (SELECT node_id, count(*) AS n, count(taker) AS asked "
        "FROM {s}.series_owners WHERE node_id IS NOT NULL AND expires_at > now() "
        "GROUP BY node_id), "
        "target AS (SELECT ceil(sum(n)::numeric / %(alive)s) AS t FROM load), "
        "cand AS (SELECT o.series_id, l.n - l.asked - target.t AS spare, row_number() OVER "
        "(PARTITION BY o.node_id ORDER BY o.series_id) AS k FROM {s}.series_owners o "
        "JOIN load l ON l.node_id = o.node_id CROSS JOIN target "
        "WHERE o.series_id = ANY(%(wanted)s) AND o.node_id <> %(node)s "
        "AND o.expires_at > now() AND o.taker IS NULL), "
        "pick AS (SELECT series_id FROM {s}.series_owners WHERE series_id IN (SELECT series_id "
        "FROM cand WHERE k <= spare ORDER BY spare DESC, series_id LIMIT %(room)s) "
        "FOR UPDATE SKIP LOCKED) "
        "UPDATE {s}.series_owners o SET taker = %(node)s FROM pick "
        "WHERE o.series_id = pick.series_id RETURNING o.series_id"
    ),
    # Still ours, even past expiry when nobody claimed it meanwhile (a Postgres restart): a
    # claim changes node_id under the row lock, so node_id = me means nobody else has it.
    "renew": (
        "UPDATE {s}.series_owners SET expires_at = now() + %(ttl)s * interval '1 second' "
        "WHERE node_id = %(node)s RETURNING series_id, epoch"
    ),
    # A dead node: its heartbeat expired, or its control session is gone from pg_stat_activity
    # (kill -9: the server sees the socket close at once) and it missed two ticks. Its row
    # expires now, then its leases are cut short; ``expires_at > now()``: never pushed forward.
    # A live node whose connection was closed (a cut, a terminated session) looks the same; it
    # fences at its next tick, which fails at once (``connection_lost``), one tick before this.
    "reap_nodes": (
        "UPDATE {s}.cluster_nodes n SET expires_at = now() WHERE n.node_id <> %(node)s "
        "AND n.expires_at > now() AND n.heartbeat_at < now() - %(grace)s * interval '1 second' "
        "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = n.backend_pid "
        "AND a.backend_start = n.backend_start)"
    ),
    "reap": (
        "UPDATE {s}.series_owners o SET expires_at = now() FROM {s}.cluster_nodes n "
        "WHERE o.node_id = n.node_id AND n.node_id <> %(node)s AND o.expires_at > now() "
        "AND n.expires_at <= now()"
    ),
    "forget_nodes": (
        "DELETE FROM {s}.cluster_nodes WHERE expires_at < now() - interval '10 minutes'"
    ),
    "alive": "SELECT count(*) FROM {s}.cluster_nodes WHERE expires_at > now()",
    "ensure_rows": (
        "INSERT INTO {s}.series_owners (series_id, node_id, epoch, expires_at) "
        "SELECT x, NULL, 0, now() FROM unnest(%(new)s::text[]) x ON CONFLICT DO NOTHING"
    ),
    # Free wanted series, oldest expiry first; rows another node is renewing or claiming right
    # now are skipped, not waited for. Up to ``room`` of them, plus every one free for more
    # than two ticks (a fair-share cap alone could leave a series nobody claims).
    "claim": (
        "WITH free AS (SELECT series_id, expires_at < now() - %(grace)s * interval '1 second' "
        "AS orphan FROM {s}.series_owners WHERE series_id = ANY(%(wanted)s) "
        "AND expires_at <= now() ORDER BY expires_at, series_id FOR UPDATE SKIP LOCKED), "
        "pick AS (SELECT series_id FROM (SELECT series_id, orphan, row_number() OVER () AS k "
        "FROM free) f WHERE orphan OR k <= %(room)s) "
        "UPDATE {s}.series_owners o SET node_id = %(node)s, epoch = o.epoch + 1, taker = NULL, "
        "expires_at = now() + %(ttl)s * interval '1 second' FROM pick "
        "WHERE o.series_id = pick.series_id RETURNING o.series_id, o.epoch"
    ),
    "leave_series": (
        "UPDATE {s}.series_owners SET node_id = NULL, expires_at = now() "
        "WHERE node_id = %(node)s RETURNING series_id"
    ),
    "leave_node": "DELETE FROM {s}.cluster_nodes WHERE node_id = %(node)s",
    "notify": "SELECT pg_notify(%s, x) FROM unnest(%s::text[]) x",
    "nodes": (
        "SELECT node_id, name, pid, extract(epoch FROM now() - heartbeat_at), "
        "expires_at > now(), extract(epoch FROM started_at) FROM {s}.cluster_nodes "
        "ORDER BY started_at, node_id"
    ),
    "owners": (
        "SELECT o.series_id, o.node_id, o.epoch, extract(epoch FROM o.expires_at - now()), "
        "h.seq, h.head_time FROM {s}.series_owners o "
        "LEFT JOIN {s}.series_heads h ON h.series_id = o.series_id ORDER BY o.series_id"
    ),
    "queue_usage": "SELECT pg_notification_queue_usage()",
    "feed_jobs": "SELECT series_id, idle_since FROM {s}.feed_jobs",
    "feed_refs": "SELECT series_id, node_id, refs, pinned FROM {s}.feed_refs ORDER BY node_id",
}


def channel_name(schema: str) -> str:
    """Return the NOTIFY channel of a schema's cluster."""
    return f"tc_{schema}"[:63]


def control_deadline_s(tick_s: float) -> float:
    """Return how long a cluster control transaction may wait for Postgres before it is cut."""
    return max(1.0, 4 * tick_s)


def control_connection(
    dsn: str, application_name: str, tick_s: float, connect_timeout_s: float
) -> psycopg.Connection[Any]:
    """Open an autocommit connection whose statements, lock waits and idle transactions, and
    whose TCP writes, time out after two ticks (a lock wait after one): a cluster control
    transaction never hangs long, nor holds its locks long when its process freezes."""
    timeout_ms = max(100, int(tick_s * 2000))
    return psycopg.connect(
        dsn, autocommit=True,
        connect_timeout=max(1, math.ceil(connect_timeout_s)),
        application_name=application_name[:63],
        options=(f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms // 2} "
                 f"-c idle_in_transaction_session_timeout={timeout_ms}"),
        keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
        tcp_user_timeout=timeout_ms,
    )


class PostgresLeases:
    """The lease table as one node sees it, over its own control connection."""

    def __init__(
        self, dsn: str, schema: str, node: Node, *, tick_s: float, ttl_s: float,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.node = node
        self.tick_s = tick_s
        self.ttl_s = ttl_s
        self.connect_timeout_s = connect_timeout_s
        self.channel = channel_name(schema)
        self.queries = LeaseQueries(schema)
        self._conn: psycopg.Connection[Any] | None = None
        self._known: set[str] = set()  # series whose owner row exists (inserted or seen)
        self._where = redact_dsn(dsn)
        self._lock = threading.Lock()  # one transaction at a time on the connection
        # The last failure lost (or never got) the connection, rather than timing out on it:
        # the others may take this node for dead two ticks after its last heartbeat.
        self.connection_lost = False

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = control_connection(self.dsn, f"trade_canvas.leases:{self.node.name}",
                                            self.tick_s, self.connect_timeout_s)
        return self._conn

    def _transaction(self, what: str, work: Any) -> Any:
        try:
            with self._lock, deadline(control_deadline_s(self.tick_s)):
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    result = work(cur)
                self.connection_lost = False
                return result
        except psycopg.Error as exc:
            last = self._conn
            self.connection_lost = (isinstance(exc, DeadlineExceeded) or last is None
                                    or last.closed or last.broken)
            self.close()
            detail = " ".join(str(exc).split())
            raise Unavailable(f"cluster leases at {self._where}: {what} failed: {detail}") from None

    def tick(self, wanted: Sequence[str], hand_over: Sequence[str] = ()) -> TickResult:
        """Heartbeat, release, hand over, renew, reap the dead, claim, ask; one transaction.

        ``hand_over``: series the previous tick reported as ``asked`` whose feeds have been
        stopped since; they are freed for their asker.

        Raises:
            Unavailable: the transaction did not commit (nothing about ownership is known).
        """
        want = sorted(set(wanted))
        args = {"node": self.node.node_id, "name": self.node.name, "pid": self.node.pid,
                "ttl": self.ttl_s, "tick": self.tick_s, "grace": 2 * self.tick_s,
                "wanted": want, "new": [s for s in want if s not in self._known],
                "hand_over": sorted(set(hand_over))}

        def work(cur: psycopg.Cursor[Any]) -> TickResult:
            q = self.queries
            cur.execute(q["heartbeat"], args)
            released = tuple(row[0] for row in cur.execute(q["release"], args).fetchall())
            released += tuple(row[0] for row in cur.execute(q["hand_over"], args).fetchall())
            owned = {row[0]: int(row[1]) for row in cur.execute(q["renew"], args).fetchall()}
            cur.execute(q["reap_nodes"], args)
            cur.execute(q["reap"], args)
            cur.execute(q["forget_nodes"])
            alive = int(_one(cur.execute(q["alive"]).fetchone()))
            if args["new"]:
                cur.execute(q["ensure_rows"], args)
            room = claim_room(len(want), alive, len(owned))
            rows = cur.execute(q["claim"], {**args, "room": room}).fetchall()
            claimed = {row[0]: int(row[1]) for row in rows}
            short = claim_room(len(want), alive, len(owned) + len(claimed))
            if short and alive > 1:
                cur.execute(q["ask"], {**args, "room": short, "alive": alive})
            asked = tuple(row[0] for row in cur.execute(q["asked"], args).fetchall())
            if released:
                self._notify(cur, [encode_hint(Hint("r", sid, node=self.node.node_id))
                                   for sid in released])
            return TickResult({**owned, **claimed}, alive, released, tuple(sorted(claimed)),
                              asked)

        result: TickResult = self._transaction("tick", work)
        self._known.update(want)
        return result

    def _notify(self, cur: psycopg.Cursor[Any], payloads: list[str]) -> None:
        cur.execute(self.queries["notify"], (self.channel, payloads))

    def leave(self) -> tuple[str, ...]:
        """Give every lease up at once and remove this node (graceful stop); returns them."""

        def work(cur: psycopg.Cursor[Any]) -> tuple[str, ...]:
            args = {"node": self.node.node_id}
            released = tuple(r[0] for r in cur.execute(self.queries["leave_series"], args))
            cur.execute(self.queries["leave_node"], args)
            if released:
                self._notify(cur, [encode_hint(Hint("r", sid, node=self.node.node_id))
                                   for sid in released])
            return released

        return self._transaction("leave", work)  # type: ignore[no-any-return]

    def connection_room(self) -> tuple[int, int]:
        """Return (connections ordinary sessions may open on the server, live nodes)."""

        def work(cur: psycopg.Cursor[Any]) -> tuple[int, int]:
            row = cur.execute(
                "SELECT current_setting('max_connections')::int - "
                "current_setting('superuser_reserved_connections')::int").fetchone()
            return int(_one(row)), int(_one(cur.execute(self.queries["alive"]).fetchone()))

        return self._transaction("connection check", work)  # type: ignore[no-any-return]

    def view(self) -> dict[str, Any]:
        """Return the cluster as the tables show it (GET /api/runtime/cluster)."""

        def work(cur: psycopg.Cursor[Any]) -> dict[str, Any]:
            q = self.queries
            nodes = [{"node_id": r[0], "name": r[1], "pid": r[2],
                      "heartbeat_age_s": round(float(r[3]), 3), "alive": bool(r[4]),
                      "started_at": round(float(r[5]), 3)}
                     for r in cur.execute(q["nodes"]).fetchall()]
            series = [{"series_id": r[0], "owner": r[1], "epoch": int(r[2]),
                       "expires_in_s": round(float(r[3]), 3),
                       "seq": None if r[4] is None else int(r[4]), "head_time": r[5]}
                      for r in cur.execute(q["owners"]).fetchall()]
            jobs = {r[0]: r[1] for r in cur.execute(q["feed_jobs"]).fetchall()}
            refs = cur.execute(q["feed_refs"]).fetchall()
            usage = float(_one(cur.execute(q["queue_usage"]).fetchone()))
            return {"nodes": nodes, "series": _with_demand(series, jobs, refs),
                    "notification_queue_usage": usage}

        return self._transaction("view", work)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the control connection (the next call reconnects)."""
        conn, self._conn = self._conn, None
        close_quietly(conn)


def _with_demand(
    series: list[dict[str, Any]], jobs: dict[str, float | None], refs: list[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Add who pins, who subscribes and since when nobody does to the lease rows.

    A series with subscribers or a job but no lease row yet is listed without an owner.
    """
    by_id = {entry["series_id"]: entry for entry in series}
    for sid in sorted({*jobs, *(r[0] for r in refs)} - set(by_id)):
        by_id[sid] = {"series_id": sid, "owner": None, "epoch": 0, "expires_in_s": 0.0,
                      "seq": None, "head_time": None}
    for entry in by_id.values():
        entry.update(pinned=False, refcount=0, refcount_by_node={}, ondemand=False,
                     idle_since=None)
    for series_id, node_id, count, pinned in refs:
        entry = by_id[series_id]
        entry["pinned"] = entry["pinned"] or bool(pinned)
        entry["refcount"] += int(count)
        entry["refcount_by_node"][node_id] = int(count)
    for series_id, idle_since in jobs.items():
        entry = by_id[series_id]
        entry["ondemand"] = not entry["pinned"]
        entry["idle_since"] = None if idle_since is None else round(float(idle_since), 3)
    return [by_id[sid] for sid in sorted(by_id)]


def _one(row: tuple[Any, ...] | None) -> Any:
    """Return the value of a one-column aggregate row (which always has a row)."""
    assert row is not None
    return row[0]
