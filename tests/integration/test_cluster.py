"""Cluster mode end to end: several servers on one Postgres schema share their series.

Each server is its own process (``TRADE_CANVAS_CLUSTER=1``), as on several hosts. Writes made
on one server reach WebSocket subscribers of every other one once and in order; a whitelist
series is fed by exactly one server, and another one takes it over when that one is killed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Iterator

import pytest

from tests.fakes.postgres import drop_schema, new_schema_name, reachable_dsn
from tests.integration.conftest import aligned_past, candle
from tests.integration.test_feed import Watcher, feed_env
from tests.integration.test_server import connect, receive_times, subscribe

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

CLOSED = "/api/market/ingest/candle_closed"
BATCH = "/api/market/ingest/candles_closed_batch"


@pytest.fixture
def cluster_env(tmp_path) -> Iterator[dict[str, str]]:
    dsn = reachable_dsn()
    schema = new_schema_name()
    yield {
        "TRADE_CANVAS_ENABLE_PG_STORE": "1", "TRADE_CANVAS_POSTGRES_DSN": dsn,
        "TRADE_CANVAS_POSTGRES_SCHEMA": schema, "TRADE_CANVAS_CLUSTER": "1",
        "TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE": "4", "TRADE_CANVAS_CLUSTER_RESYNC_S": "1",
    }
    drop_schema(dsn, schema)


def wait_for(check, timeout: float = 15.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)


def test_writes_on_one_server_reach_subscribers_of_the_others(start_server, cluster_env) -> None:
    servers = [start_server(**cluster_env) for _ in range(3)]
    view = wait_for(lambda: (lambda v: v if sum(n["alive"] for n in v["nodes"]) == 3 else None)(
        servers[0].get("/api/runtime/cluster")[1]))
    assert len({n["node_id"] for n in view["nodes"]}) == 3
    series = "binance:spot:CLU/USDT:1m"
    base = aligned_past(400)
    writer, readers = servers[0], servers[1:]
    sockets = []
    for server in readers:
        ws = connect(server)
        subscribe(ws, series=series, batch=True)
        sockets.append(ws)
    time.sleep(1.0)  # the subscriptions are registered before the first write
    for i in range(30):
        status, _ = writer.post(CLOSED, {"series_id": series, "candle": candle(base + 60 * i)})
        assert status == 200
    status, _ = writer.post(BATCH, {"series_id": series,
                                    "candles": [candle(base + 60 * i) for i in range(30, 330)]})
    assert status == 200
    expected = [base + 60 * i for i in range(330)]
    for ws in sockets:
        assert receive_times(ws, 330, timeout=20) == expected
        ws.settimeout(1.5)  # nothing more: no candle twice
        with pytest.raises(Exception):
            while True:
                msg = json.loads(ws.recv())
                assert msg["type"] not in ("candle_closed", "candles_batch"), msg
        ws.close()
    for server in readers:  # the read cache of the other processes is not stale
        body = server.get(f"/api/market/candles?series_id={series}&limit=5")[1]
        assert body["candles"][-1]["candle_time"] == expected[-1]
    # The writer took its own writes as delivered at commit, without their hints coming back,
    # and read nothing back from the store (not even the 300-candle batch, too big to inline).
    fanout = next(a for a in writer.get("/api/runtime/actors")[1]["actors"]
                  if a["kind"] == "fanout")
    # (A position check falling between a commit and its tell may resync once instead.)
    assert fanout["written_here"] >= 30 and fanout["resyncs"] <= 1, fanout
    assert fanout["duplicates"] == 0, fanout
    heads = {s["series_id"]: s for s in servers[2].get("/api/runtime/cluster")[1]["series"]}
    assert heads.get(series) is None or heads[series]["seq"] >= 31  # owner rows: fed series only
    assert servers[1].get("/api/ready")[0] == 200
    local = servers[1].get("/api/runtime/actors")[1]["cluster"]  # this process's side
    assert local["node_id"] == servers[1].get("/api/runtime/cluster")[1]["this_node"]["node_id"]
    assert local["fenced"] is False and local["listener"]["connected"] is True
    assert local["listener"]["notifications"] > 0 and local["notifier"]["errors"] == 0


def test_one_feed_per_series_and_takeover_after_kill_9(
    start_server, start_replay, cluster_env, tmp_path
) -> None:
    exchange = start_replay("--speed", "120")
    btc = "binance:spot:BTC/USDT:1m"
    whitelist = tmp_path / "pinned.json"
    whitelist.write_text(json.dumps({"series_ids": [btc]}))
    env = {**feed_env(exchange), **cluster_env, "TRADE_CANVAS_ENABLE_WHITELIST_INGEST": "1",
           "TRADE_CANVAS_WHITELIST_PATH": str(whitelist)}
    servers = [start_server(**env) for _ in range(2)]

    def owner(server=servers[0]) -> tuple[str, int] | None:
        for s in server.get("/api/runtime/cluster")[1]["series"]:
            if s["series_id"] == btc and s["owner"] and s["expires_in_s"] > 0:
                return s["owner"], s["epoch"]
        return None

    def feeds(server) -> list[str]:
        actors = server.get("/api/runtime/actors")[1]["actors"]
        return [a["series_id"] for a in actors if a["kind"] == "feed"]

    node, epoch = wait_for(owner)
    owners = [s for s in servers if s.get("/api/runtime/cluster")[1]["this_node"]["node_id"] == node]
    assert len(owners) == 1
    first = owners[0]
    other = next(s for s in servers if s is not first)
    assert feeds(first) == [btc] and feeds(other) == []  # one upstream subscription
    watcher = Watcher(other, btc)
    watcher.wait_live(300 + 4, timeout=40)  # the owner's tail fill, then live candles
    os.killpg(first.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    first.proc.wait()
    new_node, new_epoch = wait_for(lambda: (lambda o: o if o and o[0] != node else None)(owner(other)),
                                   timeout=10, step=0.05)
    took = time.monotonic() - killed_at
    assert new_epoch == epoch + 1 and took < 4.0, took
    assert wait_for(lambda: feeds(other) == [btc], timeout=5)
    watcher.wait_live(6, timeout=30)  # the REST tail fill covers the minutes nobody fed
    times = list(watcher.times)
    assert times == sorted(set(times)), "a candle twice or out of order"
    assert times == list(range(times[0], times[-1] + 60, 60)), "a hole"
    watcher.close()


def test_factor_ledger_of_ingest_spread_over_processes_is_one_fold(start_server, cluster_env) -> None:
    """Issue 16: each process folded the writes it received, forking the shared factor ledger.

    The series' lease owner alone runs its factor actor; writes made on other processes reach
    it through the hints (inline candles, or a read of the store when they do not fit).
    """
    from tests.unit.test_factor_engine import load_recording
    from trade_canvas.factors import engine
    from trade_canvas.factors.engine import FactorParams
    from trade_canvas.storage.postgres import PostgresCandleStore

    servers = [start_server(**cluster_env) for _ in range(2)]
    series = "binance:spot:FAC/USDT:1m"
    rows = [{"candle_time": c.candle_time, "open": c.open, "high": c.high, "low": c.low,
             "close": c.close, "volume": c.volume} for c in load_recording(600)]
    for k, start in enumerate(range(0, 300, 30)):  # batches, alternating processes
        status, _ = servers[k % 2].post(BATCH, {"series_id": series, "candles": rows[start:start + 30]})
        assert status == 200
    for i in range(300, 600):  # then single candles, alternating
        status, _ = servers[i % 2].post(CLOSED, {"series_id": series, "candle": rows[i]})
        assert status == 200
    last = rows[-1]["candle_time"]
    wait_for(lambda: servers[1].get(f"/api/factor/health?series_id={series}")[1][
        "factor_head_time"] == last, timeout=30)

    def factor_actors(server) -> int:
        actors = server.get("/api/runtime/actors")[1]["actors"]
        return sum(1 for a in actors if a["kind"] == "factor" and a["series_id"] == series)

    assert sorted(factor_actors(s) for s in servers) == [0, 1]  # the owner's only
    store = PostgresCandleStore(cluster_env["TRADE_CANVAS_POSTGRES_DSN"],
                                schema=cluster_env["TRADE_CANVAS_POSTGRES_SCHEMA"],
                                pool_min_size=0, pool_max_size=1)
    try:
        candles = store.read_range(series, 0, last)
        assert len(candles) == 600
        _, expected = engine.run(engine.initial_state(FactorParams()), candles, FactorParams())
        stored = store.read_factor_events(series, 0, last)
        assert expected and [(e.factor_name, e.event_key) for e in stored] == [
            (e.factor_name, e.event_key) for e in expected]
    finally:
        store.close()


def test_listen_dsn_carries_the_session_connections_only(start_server, cluster_env) -> None:
    """POSTGRES_LISTEN_DSN (a direct DSN next to a pooled POSTGRES_DSN): the listener and the
    lease control connection use it, the store's pool does not. Cutting it fences the process
    (ready 503) while reads through the pool go on; restoring it lifts the fence."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from tests.fakes.tcp_relay import TcpRelay

    dsn = cluster_env["TRADE_CANVAS_POSTGRES_DSN"]
    target = conninfo_to_dict(dsn)
    relay = TcpRelay(str(target.get("host", "127.0.0.1")), int(target.get("port", 5432)))
    env = {**cluster_env, "TRADE_CANVAS_POSTGRES_LISTEN_DSN": make_conninfo(
        dsn, host="127.0.0.1", port=relay.port), "TRADE_CANVAS_CLUSTER_TICK_S": "0.2",
        "TRADE_CANVAS_CLUSTER_LEASE_TTL_S": "1", "TRADE_CANVAS_CLUSTER_RESYNC_S": "0.5"}
    server = start_server(**env)
    series = "binance:spot:LDS/USDT:1m"
    base = aligned_past(10)
    assert server.post(CLOSED, {"series_id": series, "candle": candle(base)})[0] == 200
    wait_for(lambda: server.get("/api/ready")[0] == 200)
    relay.cut()
    assert wait_for(lambda: server.get("/api/ready")[0] == 503, timeout=10)
    wait_for(lambda: (lambda c: c["fenced"] and not c["listener"]["connected"])(
        server.get("/api/runtime/actors")[1]["cluster"]), timeout=10)
    status, body = server.get(f"/api/market/candles?series_id={series}&limit=5")
    assert status == 200 and body["candles"][-1]["candle_time"] == base  # the pool is direct
    assert server.post(CLOSED, {"series_id": series, "candle": candle(base + 60)})[0] == 200
    relay.restore()
    assert wait_for(lambda: server.get("/api/ready")[0] == 200, timeout=15)
    assert server.get("/api/runtime/actors")[1]["cluster"]["fenced"] is False
