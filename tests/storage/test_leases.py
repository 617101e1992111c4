"""Series leases on the test Postgres: claim, fair share, renew, release, reap, epochs."""

from __future__ import annotations

import os
import threading
import time
from typing import Iterator

import psycopg
import pytest

from tests.fakes.postgres import drop_schema, new_schema_name, reachable_dsn
from trade_canvas.candles import Candle
from trade_canvas.storage.leases import Node, PostgresLeases
from trade_canvas.storage.postgres import PostgresCandleStore

pytestmark = pytest.mark.postgres

TICK, TTL = 0.2, 1.0
SERIES = [f"binance:spot:S{i}/USDT:1m" for i in range(6)]


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    dsn = reachable_dsn()
    name = new_schema_name()
    store = PostgresCandleStore(dsn, schema=name, pool_min_size=0, pool_max_size=2)
    store.close()  # migrated
    yield dsn, name
    drop_schema(dsn, name)


def node(schema: tuple[str, str], name: str) -> PostgresLeases:
    dsn, schema_name = schema
    return PostgresLeases(dsn, schema_name, Node(f"{name}-{os.getpid()}", name, os.getpid()),
                          tick_s=TICK, ttl_s=TTL)


def test_claims_spread_by_fair_share_and_epochs_grow(schema) -> None:
    a, b = node(schema, "a"), node(schema, "b")
    first = a.tick(SERIES)
    assert set(first.owned) == set(SERIES) and first.alive == 1  # alone: everything
    assert set(first.owned.values()) == {1}
    assert b.tick(SERIES).owned == {}  # nothing free
    released = a.tick(SERIES[:3])  # a wants less: the rest is free at once
    assert set(released.released) == set(SERIES[3:]) and set(released.owned) == set(SERIES[:3])
    taken = b.tick(SERIES)
    assert set(taken.owned) == set(SERIES[3:]) and set(taken.owned.values()) == {2}
    assert a.tick(SERIES).owned.keys() == set(SERIES[:3])  # renewed, nothing stolen
    view = a.view()
    assert {n["name"] for n in view["nodes"] if n["alive"]} == {"a", "b"}
    owners = {s["series_id"]: s["owner"] for s in view["series"]}
    assert owners[SERIES[0]] == a.node.node_id and owners[SERIES[5]] == b.node.node_id
    a.close(), b.close()


def test_killed_node_is_reaped_fast_and_a_frozen_one_after_ttl(schema) -> None:
    a, b = node(schema, "a"), node(schema, "b")
    a.tick(SERIES)
    b.tick(SERIES)
    a.close()  # like kill -9: its control session is gone from pg_stat_activity
    time.sleep(TICK * 2.5)  # reaped once two ticks passed without a heartbeat
    start = time.monotonic()
    while not b.tick(SERIES).owned:
        assert time.monotonic() - start < TTL / 2, "not reaped before the TTL"
        time.sleep(TICK)
    assert set(b.tick(SERIES).owned) == set(SERIES)
    assert set(b.tick(SERIES).owned.values()) == {2}
    # A node that stops ticking but keeps its session (frozen): its leases expire at the TTL.
    c = node(schema, "c")
    b.leave()
    c.tick(SERIES)
    frozen = c._connection()  # session alive, no more ticks
    start = time.monotonic()
    while not b.tick(SERIES).owned:
        time.sleep(TICK / 2)
    waited = time.monotonic() - start
    assert TTL * 0.8 <= waited <= TTL + 3 * TICK, waited
    assert not frozen.closed
    b.close(), c.close()


def test_renew_after_expiry_keeps_the_epoch_when_nobody_claimed(schema) -> None:
    a = node(schema, "a")
    assert a.tick(SERIES[:1]).owned == {SERIES[0]: 1}
    time.sleep(TTL + 0.1)
    assert a.tick(SERIES[:1]).owned == {SERIES[0]: 1}
    a.close()


def test_sequenced_writes_number_each_commit(schema) -> None:
    dsn, name = schema
    store = PostgresCandleStore(dsn, schema=name, pool_min_size=0, pool_max_size=2,
                                sequenced=True)
    sid = SERIES[0]
    assert store.upsert_candles(sid, [Candle(60, 1, 2, 0.5, 1.5, 3)]) == 1
    rows = [Candle(60 * i, 1, 2, 0.5, 1.5, 3) for i in range(2, 400)]
    assert store.upsert_candles(sid, rows) == 2  # the COPY path too
    assert store.read_heads([sid, SERIES[1]]) == {sid: (2, 60 * 399)}
    assert store.upsert_candles(sid, rows[:3]) == 3  # an overwrite is a write
    assert store.read_heads([sid]) == {sid: (3, 60 * 399)}  # the head time never goes back
    assert store.count(sid) == 399
    store.close()
    plain = PostgresCandleStore(dsn, schema=name, pool_min_size=0, pool_max_size=2)
    assert plain.upsert_candles(sid, rows[:1]) is None
    plain.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f"SELECT seq FROM {name}.series_heads").fetchone()[0] == 3


def test_factor_batches_are_fenced_by_the_lease_epoch(schema) -> None:
    from trade_canvas.errors import Fenced
    from trade_canvas.storage import FactorSnapshot

    dsn, name = schema
    store = PostgresCandleStore(dsn, schema=name, pool_min_size=0, pool_max_size=3)
    a, b = node(schema, "a"), node(schema, "b")
    sid = SERIES[0]
    epoch = a.tick([sid]).owned[sid]
    mine = (a.node.node_id, epoch)
    store.save_factor_batch(sid, [], FactorSnapshot(60, "fp", "{}"), [], fence=mine)
    assert store.read_factor_snapshot(sid).head_time == 60
    # While an owner's batch is in flight its lease row cannot be claimed, even once expired.
    with psycopg.connect(dsn, autocommit=True) as held:
        with held.transaction():
            held.execute(store._factor.fence, (sid, *mine)).fetchone()
            time.sleep(TTL + 0.1)
            assert b.tick([sid]).owned == {}
        taken = b.tick([sid]).owned  # committed: now the expired lease moves
    assert taken == {sid: epoch + 1}
    with pytest.raises(Fenced):
        store.save_factor_batch(sid, [], FactorSnapshot(120, "fp", "{}"), [], fence=mine)
    assert store.read_factor_snapshot(sid).head_time == 60  # nothing of the refused batch
    store.save_factor_batch(sid, [], FactorSnapshot(120, "fp", "{}"), [],
                            fence=(b.node.node_id, epoch + 1))
    assert store.read_factor_snapshot(sid).head_time == 120
    a.close(), b.close(), store.close()


def test_a_node_below_its_share_is_handed_series_by_an_owner_above_it(schema) -> None:
    """The first node to boot claimed everything; later ones got nothing until a kill."""
    a, b, c = node(schema, "a"), node(schema, "b"), node(schema, "c")
    handing: dict[str, tuple[str, ...]] = {"a": (), "b": (), "c": ()}

    def round_(*nodes: PostgresLeases) -> dict[str, dict[str, int]]:
        owned = {}
        for n in nodes:  # as the lease actor does: asked now, handed over at the next tick
            result = n.tick(SERIES, hand_over=handing[n.node.name])
            handing[n.node.name] = result.asked
            owned[n.node.name] = {s: e for s, e in result.owned.items() if s not in result.asked}
        return owned

    assert len(round_(a)["a"]) == 6  # alone
    b.tick(SERIES)
    first = a.tick(SERIES)
    assert len(first.owned) == 6 and len(first.asked) == 3  # asked: stop those feeds first
    assert b.tick(SERIES).owned == {}  # not freed before the owner handed them over
    handing["a"] = first.asked
    for _ in range(8):  # c joins too; a few rounds converge
        owned = round_(a, b, c)
        held = [s for mine in owned.values() for s in mine]
        assert len(held) == len(set(held))  # never two owners
    assert sorted(len(m) for m in owned.values()) == [2, 2, 2]
    for _ in range(3):  # balanced: nothing moves any more
        assert round_(a, b, c) == owned
    # An asker that dies before the handoff is handed nothing.
    d = node(schema, "d")
    b.leave(), c.leave()
    for _ in range(2):
        round_(a)
    assert len(round_(a)["a"]) == 6
    d.tick(SERIES)  # asks for its share
    d.close()  # and dies
    time.sleep(TICK * 2.5)
    a.tick(SERIES)  # reaps d
    assert a.tick(SERIES).asked == () and len(a.tick(SERIES, hand_over=SERIES).owned) == 6
    a.close(), b.close(), c.close()


def test_boot_warns_when_the_cluster_may_exceed_max_connections(schema, caplog) -> None:
    from trade_canvas.config import load_settings
    from trade_canvas.runtime.cluster import warn_connection_budget

    dsn, name = schema
    leases = node(schema, "a")
    base = {"TRADE_CANVAS_ENABLE_PG_STORE": "1", "TRADE_CANVAS_POSTGRES_DSN": dsn,
            "TRADE_CANVAS_POSTGRES_SCHEMA": name}
    with psycopg.connect(dsn) as conn:
        room = conn.execute("SELECT current_setting('max_connections')::int - "
                            "current_setting('superuser_reserved_connections')::int").fetchone()[0]
    small = load_settings({**base, "TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE": "2"})
    assert warn_connection_budget(small, leases) is None
    pool = room // 2  # two processes of this size cannot fit
    big = load_settings({**base, "TRADE_CANVAS_WORKERS": "2",
                         "TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE": str(pool)})
    assert warn_connection_budget(big, leases) == 2 * (pool + 3)
    assert "max_connections" in caplog.text and "TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE" in caplog.text
    leases.close()


def test_sequenced_writers_of_one_series_commit_in_seq_order(schema) -> None:
    """Three stores (as three processes) write one series at once, live candles and COPY
    batches: the numbers are 1..n, and every snapshot that shows seq k shows exactly the candles
    of the writes numbered <= k (a write and its number commit together, in number order)."""
    dsn, name = schema
    sid = SERIES[0]
    written: list[tuple[int, list[int]]] = []
    snapshots: list[tuple[int, set[int]]] = []
    done = threading.Event()

    def write(k: int) -> None:
        store = PostgresCandleStore(dsn, schema=name, pool_min_size=0, pool_max_size=1,
                                    sequenced=True)
        for i in range(40):
            base = (k * 100 + i) * 60 * 1000
            times = [base + 60 * j for j in range(300 if i % 8 == 0 else 1 + i % 3)]
            seq = store.upsert_candles(sid, [Candle(t, 1, 2, 0.5, 1.5, 3) for t in times])
            assert seq is not None
            written.append((seq, times))
        store.close()

    def read() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            while not done.is_set():
                with conn.transaction():
                    row = conn.execute(f"SELECT seq FROM {name}.series_heads "
                                       "WHERE series_id = %s", (sid,)).fetchone()
                    times = {r[0] for r in conn.execute(
                        f"SELECT candle_time FROM {name}.candles WHERE series_id = %s", (sid,))}
                snapshots.append((row[0] if row else 0, times))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert sorted(seq for seq, _ in written) == list(range(1, 121))
    assert len({seq for seq, _ in snapshots}) > 10  # the reader saw the writes interleave
    for seen, times in snapshots:
        assert times == {t for seq, ts in written if seq <= seen for t in ts}, seen

def test_a_lost_control_connection_is_told_apart_from_a_failed_statement(schema) -> None:
    from trade_canvas.errors import Unavailable

    a = node(schema, "a")
    a.tick(SERIES)
    assert not a.connection_lost
    with psycopg.connect(schema[0], autocommit=True) as admin:  # the session dies under it
        admin.execute("SELECT pg_terminate_backend(%s)", (a._connection().info.backend_pid,))
    with pytest.raises(Unavailable):
        a.tick(SERIES)
    assert a.connection_lost  # the others may reap it two ticks after its last heartbeat
    a.tick(SERIES)
    assert not a.connection_lost
    with pytest.raises(Unavailable):  # a statement that fails on a healthy connection
        a._transaction("bad", lambda cur: cur.execute("SELECT 1/0"))
    assert not a.connection_lost
    a.close()


def test_an_owner_frozen_inside_a_fenced_batch_does_not_hold_its_lease_row(schema) -> None:
    """A fenced factor batch locks its lease row FOR SHARE (claims skip locked rows). A process
    frozen inside one (SIGSTOP, a VM pause) kept any other node from claiming the series for as
    long as it stayed frozen; the server now ends that transaction after a second idle."""
    from trade_canvas.errors import Unavailable
    from trade_canvas.storage.postgres import FENCE_IDLE_TIMEOUT_MS

    dsn, name = schema
    store = PostgresCandleStore(dsn, schema=name, pool_min_size=0, pool_max_size=2)
    a, b = node(schema, "a"), node(schema, "b")
    sid = SERIES[0]
    epoch = a.tick([sid]).owned[sid]
    frozen = psycopg.connect(dsn)  # a's batch: the fence, then nothing more
    try:
        store.hold_fence(frozen.cursor(), sid, (a.node.node_id, epoch))
        a.close()  # a ticks no more either
        start = time.monotonic()
        while True:
            try:  # reaping a's rows waits on the lock: b's whole tick fails meanwhile
                if b.tick([sid]).owned.get(sid) == epoch + 1:
                    break
            except Unavailable:
                pass
            assert time.monotonic() - start < TTL + FENCE_IDLE_TIMEOUT_MS / 1000 + 1.0, \
                "the frozen batch still holds the lease row"
            time.sleep(TICK)
    finally:
        frozen.close()  # already ended by the server
    b.close(), store.close()


DEADLINE_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import sys, time
import psycopg
from tests.fakes.tcp_relay import TcpRelay
from trade_canvas.storage.postgres import DeadlineExceeded, deadline
host, port = sys.argv[1], int(sys.argv[2])
relay = TcpRelay(host, port)
conn = psycopg.connect(sys.argv[3].replace(f":{port}/", f":{relay.port}/"), autocommit=True)
conn.execute("SELECT 1")
relay.blackhole()  # nothing closed, nothing answered: no TCP timeout can fire
started = time.monotonic()
try:
    with deadline(0.5), conn.transaction():
        conn.execute("SELECT 2")
except DeadlineExceeded:
    print(f"cut after {time.monotonic() - started:.2f}")
"""


def test_a_control_transaction_behind_a_blackhole_is_cut_by_its_deadline() -> None:
    """Under gevent a query on a connection that nobody answers waited forever."""
    import subprocess
    import sys

    from psycopg.conninfo import conninfo_to_dict

    from tests.fakes.replay import ROOT

    dsn = reachable_dsn()
    target = conninfo_to_dict(dsn)
    host, port = str(target.get("host", "127.0.0.1")), str(target.get("port", 5432))
    if f":{port}/" not in dsn:
        pytest.fail(f"this test expects a URL DSN with an explicit port, got {dsn!r}")
    out = subprocess.run([sys.executable, "-c", DEADLINE_SCRIPT, host, port, dsn], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("cut after 0."), out.stdout + out.stderr
