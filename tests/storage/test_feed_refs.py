"""Cluster-wide on-demand feeds on the test Postgres: the pure model's decisions, for many nodes.

The property test runs random pin/acquire/release/expire sequences through the pure
``FeedDemand`` and the Postgres-backed ``ClusterFeedDemand`` of one node side by side: every
decision (start, evict, refuse, expire) and every job's state must be the same. The other tests
use two nodes on one schema.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from tests.fakes.postgres import drop_schema, new_schema_name, reachable_dsn
from trade_canvas.errors import CapacityExceeded
from trade_canvas.feed_demand import FeedDemand
from trade_canvas.storage.feed_refs import ClusterFeedDemand, jobs_lock_key
from trade_canvas.storage.leases import Node, PostgresLeases
from trade_canvas.storage.postgres import PostgresCandleStore

pytestmark = pytest.mark.postgres

SERIES = ["a", "b", "c", "d"]
_nodes = itertools.count(1)


@pytest.fixture(scope="module")
def schema() -> Iterator[tuple[str, str]]:
    dsn = reachable_dsn()
    name = new_schema_name()
    PostgresCandleStore(dsn, schema=name, pool_min_size=0, pool_max_size=2).close()  # migrated
    yield dsn, name
    drop_schema(dsn, name)


def empty(schema: tuple[str, str]) -> None:
    dsn, name = schema
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}, {}, {}").format(
            sql.Identifier(name, "feed_jobs"), sql.Identifier(name, "feed_refs"),
            sql.Identifier(name, "cluster_nodes")))


def cluster_node(schema: tuple[str, str], max_jobs: int, name: str = "n") -> ClusterFeedDemand:
    dsn, schema_name = schema
    node = Node(f"{name}-{os.getpid()}-{next(_nodes)}", name, os.getpid())
    return ClusterFeedDemand(dsn, schema_name, node, max_jobs, tick_s=0.5, grace_s=0.0,
                             server_clock=False)


def heartbeat(schema: tuple[str, str], demand: ClusterFeedDemand) -> PostgresLeases:
    """Make ``demand``'s node a live cluster node (a lease tick writes its heartbeat)."""
    leases = PostgresLeases(schema[0], schema[1], demand.node, tick_s=0.5, ttl_s=30)
    leases.tick([])
    return leases


def jobs_of(demand: FeedDemand | ClusterFeedDemand) -> dict[str, tuple[bool, int, float | None]]:
    return {sid: (j.pinned, j.refcount, j.idle_since) for sid, j in demand.jobs.items()}


# Weighted so that caps fill up and several jobs sit idle at once (evictions happen).
operation = st.tuples(
    st.sampled_from(["acquire"] * 4 + ["release"] * 3 + ["pin", "expire"]),
    st.sampled_from(SERIES))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_jobs=st.sampled_from([1, 2, 3, 0]), ttl=st.sampled_from([2.0, 5.0, 20.0]),
       steps=st.lists(st.tuples(operation, st.sampled_from([0.25, 0.5, 1.0, 3.0])),
                      min_size=10, max_size=40))
@example(max_jobs=2, ttl=20.0, steps=[  # two idle jobs at the cap: the longer idle one goes
    (("acquire", "a"), 1.0), (("acquire", "b"), 1.0), (("release", "a"), 1.0),
    (("release", "b"), 1.0), (("acquire", "c"), 1.0), (("acquire", "d"), 1.0),
    (("acquire", "a"), 1.0)])
def test_postgres_demand_decides_like_the_pure_model(schema, max_jobs, ttl, steps) -> None:
    empty(schema)
    pure, cluster = FeedDemand(max_jobs), cluster_node(schema, max_jobs)
    now = 1000.0
    try:
        for (op, sid), dt in steps:
            now += dt  # strictly increasing: no two jobs go idle at the same time
            if op == "pin":
                assert cluster.pin(sid) == pure.pin(sid)
            elif op == "acquire":
                try:
                    expected = pure.acquire(sid, now)
                except CapacityExceeded:
                    event("refused")
                    with pytest.raises(CapacityExceeded):
                        cluster.acquire(sid, now)
                else:
                    assert cluster.acquire(sid, now) == expected
                    if expected.evict:
                        event("evicted")
            elif op == "release":
                pure.release(sid, now)
                cluster.release(sid, now)
            else:
                gone = pure.expired(now, ttl)
                assert sorted(cluster.expired(now, ttl)) == sorted(gone)
                if gone:
                    event("expired")
            assert jobs_of(cluster) == jobs_of(pure), (op, sid)
        assert sorted(cluster.expired(now, ttl)) == sorted(pure.expired(now, ttl))
        assert jobs_of(cluster) == jobs_of(pure)
    finally:
        cluster.close()


def test_refcount_and_idle_clock_are_the_clusters(schema) -> None:
    empty(schema)
    p1, p2 = cluster_node(schema, 8, "p1"), cluster_node(schema, 8, "p2")
    leases = [heartbeat(schema, p1), heartbeat(schema, p2)]
    assert p1.acquire("x", 10).start is True
    assert p2.expired(11, 5) == [] and "x" in p2.jobs  # every node mirrors (and wants) the job
    p1.release("x", 12)
    assert p1.jobs["x"].idle_since == 12
    assert p2.acquire("x", 14) == p2.acquire("x", 14.5)  # a job already: nothing starts
    assert p2.expired(30, 5) == [] and p1.expired(30, 5) == []  # held on p2: never idle
    assert p1.jobs["x"].refcount == 2 and p1.jobs["x"].idle_since is None
    p2.release("x", 31)
    assert p2.jobs["x"].idle_since is None  # p2 still holds one
    p2.release("x", 32)
    assert p2.jobs["x"].idle_since == 32
    assert p1.expired(36.9, 5) == [] and p1.expired(37, 5) == ["x"]  # idle since the last one
    assert p2.expired(37, 5) == ["x"] and not p2.jobs
    for demand in (p1, p2):
        demand.close()
    for lease in leases:
        lease.close()


def test_max_jobs_counts_every_node_and_evicts_the_longest_idle(schema) -> None:
    empty(schema)
    p1, p2 = cluster_node(schema, 2, "p1"), cluster_node(schema, 2, "p2")
    leases = [heartbeat(schema, p1), heartbeat(schema, p2)]
    assert p1.pin("w") is True  # pinned series never count
    assert p1.acquire("w", 1).start is False
    assert p1.acquire("x", 1).start is True
    assert p2.acquire("y", 2).start is True
    with pytest.raises(CapacityExceeded, match="ondemand_ingest_capacity"):
        p1.acquire("z", 3)  # two jobs in the cluster, nobody idle
    assert "z" not in p1.local
    p2.release("y", 4)
    p1.release("x", 5)
    got = p1.acquire("z", 6)  # y went idle first: evicted, though p2 asked for it
    assert got.start is True and got.evict == ("y",)
    assert p2.expired(7, 60) == ["y"]  # p2 (maybe y's owner) stops its feed on the sweep
    assert set(p2.jobs) == {"x", "z"}
    view = leases[0].view()
    by_id = {s["series_id"]: s for s in view["series"]}
    assert by_id["w"]["pinned"] is True and by_id["w"]["refcount"] == 1
    assert by_id["z"]["refcount_by_node"] == {p1.node.node_id: 1} and by_id["z"]["ondemand"]
    assert by_id["x"]["idle_since"] == 5 and by_id["x"]["refcount"] == 0
    assert "y" not in by_id
    for demand in (p1, p2):
        demand.close()
    for lease in leases:
        lease.close()


def test_dead_nodes_counts_disappear_and_come_back_with_it(schema) -> None:
    empty(schema)
    p1, p2 = cluster_node(schema, 8, "p1"), cluster_node(schema, 8, "p2")
    leases = [heartbeat(schema, p1), heartbeat(schema, p2)]
    p1.acquire("x", 1)
    p1.acquire("x", 1)
    p1.expired(2, 5), p2.expired(2, 5)  # (the first sweeps check everything anyway)
    dsn, name = schema
    with psycopg.connect(dsn, autocommit=True) as conn:  # p1 missed its heartbeats
        conn.execute(sql.SQL("UPDATE {} SET expires_at = now() - interval '1 s' WHERE node_id = %s")
                     .format(sql.Identifier(name, "cluster_nodes")), (p1.node.node_id,))
    assert p2.expired(3, 5) == [] and p2.jobs["x"].idle_since == 3 and p2.jobs["x"].refcount == 0
    leases[0].tick([])  # p1 is back before the TTL: its own counts are written again
    assert p1.expired(4, 5) == [] and p1.jobs["x"].refcount == 2
    assert p2.expired(9, 5) == [] and p2.jobs["x"].idle_since is None
    p1.close()  # a graceful stop takes its counts out at once
    assert p2.expired(10, 5) == [] and p2.jobs["x"].idle_since == 10
    assert p2.expired(15, 5) == ["x"]
    p2.close()
    for lease in leases:
        lease.close()


def test_a_sweep_never_waits_for_the_lock(schema) -> None:
    empty(schema)
    p1 = cluster_node(schema, 8, "p1")
    p1.pin("w")
    with psycopg.connect(schema[0]) as other, other.transaction():  # another node's transaction
        other.execute("SELECT pg_advisory_xact_lock(%s)", (jobs_lock_key(schema[1]),))
        assert p1.expired(1, 5) == [] and p1.counters["sweeps_skipped"] == 1
    assert p1.dirty == {"w"}  # still to be written
    assert p1.expired(2, 5) == [] and p1.dirty == set()
    p1.close()
