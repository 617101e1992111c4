"""On-demand feeds across a cluster: refcounts, the idle TTL and ONDEMAND_MAX_JOBS are the cluster's.

Two server processes on one Postgres schema, the replay exchange as Binance, on-demand ingest on
(a WebSocket subscribe of a Binance series starts its feed), a 2 s idle TTL and 2 on-demand jobs
at most, for the whole cluster.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.test_cluster import cluster_env, wait_for  # noqa: F401  (fixture)
from tests.integration.test_feed import Watcher, feed_env

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

BTC = "binance:spot:BTC/USDT:1m"
BTC5 = "binance:spot:BTC/USDT:5m"
XRP = "binance:spot:XRP/ETH:5m"
TTL_S = 2


def series_view(server, series_id: str) -> dict | None:
    for entry in server.get("/api/runtime/cluster")[1]["series"]:
        if entry["series_id"] == series_id:
            return entry
    return None


def feeds(server) -> dict[str, dict]:
    actors = server.get("/api/runtime/actors")[1]["actors"]
    return {a["series_id"]: a for a in actors if a["kind"] == "feed"}


def node_id(server) -> str:
    return server.get("/api/runtime/cluster")[1]["this_node"]["node_id"]


def test_ondemand_jobs_refcounts_ttl_and_cap_hold_for_the_cluster(
    start_server, start_replay, cluster_env  # noqa: F811
) -> None:
    exchange = start_replay("--speed", "120")
    env = {**feed_env(exchange, TRADE_CANVAS_ONDEMAND_IDLE_TTL_S=str(TTL_S),
                      TRADE_CANVAS_ONDEMAND_MAX_JOBS="2",
                      TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES="20"), **cluster_env}
    p1, p2 = start_server(**env), start_server(**env)
    ids = {node_id(p1): p1, node_id(p2): p2}
    wait_for(lambda: sum(n["alive"] for n in p1.get("/api/runtime/cluster")[1]["nodes"]) == 2)

    # Subscribed on P1, unsubscribed, subscribed again on P2 within the TTL: no feed restart.
    first = Watcher(p1, BTC)
    entry = wait_for(lambda: (lambda e: e if e and e["owner"] in ids else None)(series_view(p1, BTC)))
    owner, epoch = ids[entry["owner"]], entry["epoch"]
    started = wait_for(lambda: feeds(owner).get(BTC, {}).get("started_at"))
    first.wait_live(1)
    first.close()
    wait_for(lambda: (series_view(p2, BTC) or {}).get("idle_since"), step=0.05)
    second = Watcher(p2, BTC)
    second.wait_live(1)
    time.sleep(TTL_S + 1.5)  # past the TTL counted from the unsubscribe on P1
    entry = series_view(p1, BTC)
    assert (ids[entry["owner"]], entry["epoch"]) == (owner, epoch)
    assert entry["refcount"] == 1 and entry["refcount_by_node"] == {node_id(p2): 1}
    assert entry["idle_since"] is None and entry["ondemand"] and not entry["pinned"]
    assert feeds(owner)[BTC]["started_at"] == started  # the same feed, never restarted
    assert BTC not in feeds(p1 if owner is p2 else p2)  # and only there
    assert not second.errors

    # Two jobs at most in the cluster: BTC (held on P2) and BTC5 (held on P1).
    held = Watcher(p1, BTC5)
    held.wait_live(1, timeout=40)
    refused = Watcher(p2, XRP)  # nobody idle anywhere: refused, though P2 runs one job only
    wait_for(lambda: refused.errors, step=0.05)
    assert refused.errors[0]["code"] == "capacity" and refused.errors[0]["series_id"] == XRP
    assert series_view(p1, XRP) is None or series_view(p1, XRP)["refcount"] == 0
    held.close()  # BTC5 goes idle on P1...
    wait_for(lambda: (series_view(p2, BTC5) or {}).get("idle_since"), step=0.05)
    taken = Watcher(p2, XRP)  # ...and the third series on P2 evicts it
    taken.wait_live(1, timeout=40)
    assert not taken.errors
    wait_for(lambda: all(BTC5 not in feeds(s) for s in (p1, p2)), timeout=5)
    entry = series_view(p1, BTC5)
    assert entry is None or not entry["ondemand"]  # (its lease may stay for its factor actor)
    jobs = {e["series_id"] for e in p2.get("/api/runtime/cluster")[1]["series"] if e["ondemand"]}
    assert jobs == {BTC, XRP}
    for watcher in (second, refused, taken):
        watcher.close()
