"""Cluster mode end to end: what crosses processes besides closed candles.

Two servers on one Postgres schema (``TRADE_CANVAS_CLUSTER=1``). A series written on server A
has drawing subscribers on A and on B: B's gets the forming candles posted to A, and both get
the same draw deltas (chained: each one's ``from_version_id`` is the previous one's
``next_cursor``) and ``factor.rebuild`` message, from the factor actor of the series' lease
owner, whichever of the two that is (rebalancing may move it). A forming candle posted to B for
a series that runs only on A reaches A's subscriber.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import psycopg
import pytest
import websocket
from psycopg import sql

from tests.integration.test_cluster import cluster_env, wait_for  # noqa: F401 (fixture)
from tests.unit.test_factor_engine import load_recording

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

S = "binance:spot:BTC/USDT:1m"
OTHER = "binance:spot:ETH/USDT:1m"
CANDLES = load_recording()[:1200]
LIVE = 30  # candles written one by one once B subscribes


def subscribe(server, series: str, since: int | None) -> websocket.WebSocket:
    ws = websocket.create_connection(server.ws_url, timeout=10)
    ws.send(json.dumps({"type": "subscribe", "series_id": series, "since": since,
                        "supports_batch": True, "draw": True}))
    return ws


def receive_until(
    ws: websocket.WebSocket, done: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Return every message up to and including the first one ``done`` accepts."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            messages.append(json.loads(ws.recv()))
        except websocket.WebSocketTimeoutException:
            break
        if done(messages[-1]):
            return messages
    raise AssertionError(f"no matching message in {timeout}s; got {messages}"[:3000])


def last_candle(message: dict[str, Any]) -> int | None:
    """Return the time of the newest closed candle in a message (None: not a candle message)."""
    if message["type"] == "candles_batch":
        return int(message["candles"][-1]["candle_time"])
    if message["type"] == "candle_closed":
        return int(message["candle"]["candle_time"])
    return None


def live_done(last: int, final_version: int) -> Callable[[dict[str, Any]], bool]:
    """Accept the message after which both the candle ``last`` and the delta ending at
    ``final_version`` have arrived (a resync may deliver candles after the delta)."""
    seen = {"candle": False, "delta": False}

    def done(message: dict[str, Any]) -> bool:
        seen["candle"] |= last_candle(message) == last
        seen["delta"] |= (message["type"] == "draw_delta"
                          and message["next_cursor"]["version_id"] == final_version)
        return seen["candle"] and seen["delta"]

    return done


def forming(t: int, close: float) -> dict[str, Any]:
    return {"candle_time": t, "open": 1.0, "high": 9.0, "low": 0.5, "close": close, "volume": 1.0}


def test_forming_draw_deltas_and_system_messages_reach_other_processes(
    start_server, cluster_env  # noqa: F811
) -> None:
    env = {**cluster_env, "TRADE_CANVAS_ENABLE_DEBUG_API": "1",
           "TRADE_CANVAS_FACTOR_REBUILD_KEEP_CANDLES": "300"}
    a, b = start_server(**env), start_server(**env)
    wait_for(lambda: sum(n["alive"] for n in a.get("/api/runtime/cluster")[1]["nodes"]) == 2)
    status, _ = a.post("/api/market/ingest/candles_closed_batch",
                       {"series_id": S, "candles": [c.to_dict() for c in CANDLES[:-LIVE]]})
    assert status == 200
    head = CANDLES[-LIVE - 1].candle_time
    wait_for(lambda: a.get(f"/api/factor/health?series_id={S}")[1]["factor_head_time"] == head)

    # B: a drawing subscriber; its cursor comes from B's read of the shared store
    ws = subscribe(b, S, since=head)
    local = subscribe(a, S, since=head)  # what A's own subscriber gets, for comparison
    other = subscribe(a, OTHER, since=None)  # ETH runs on A only
    time.sleep(1.0)  # the subscriptions are registered
    status, snapshot = b.get(f"/api/draw/delta?series_id={S}&cursor_version_id=0")
    assert status == 200 and snapshot["to_candle_time"] == head
    cursor = snapshot["next_cursor"]["version_id"]

    for c in CANDLES[-LIVE:]:
        status, _ = a.post("/api/market/ingest/candle_closed",
                           {"series_id": S, "candle": c.to_dict()})
        assert status == 200
    last = CANDLES[-1].candle_time
    wait_for(lambda: a.get(f"/api/factor/health?series_id={S}")[1]["factor_head_time"] == last)
    final = b.get(f"/api/draw/delta?series_id={S}&cursor_version_id=0")[1]["next_cursor"]
    got = receive_until(ws, live_done(last, final["version_id"]))
    closed = [c["candle_time"] for m in got if m["type"] in ("candle_closed", "candles_batch")
              for c in (m["candles"] if m["type"] == "candles_batch" else [m["candle"]])]
    assert closed == [c.candle_time for c in CANDLES[-LIVE:]]
    deltas = [m for m in got if m["type"] == "draw_delta"]
    assert deltas and any(m["instruction_catalog_patch"] for m in deltas)
    mine = receive_until(local, live_done(last, final["version_id"]))
    assert [m for m in mine if m["type"] == "draw_delta"] == deltas  # the same, whole messages
    for delta in deltas:  # nothing lost: every delta applies to the cursor the client holds
        assert delta["from_version_id"] == cursor, (cursor, delta)
        cursor = delta["next_cursor"]["version_id"]
    status, after = b.get(f"/api/draw/delta?series_id={S}&cursor_version_id={cursor}")
    assert status == 200 and after["instruction_catalog_patch"] == []  # the cursor is current

    # forming candles: posted to A (where S runs), and to B for ETH, which runs only on A
    for close in (1.25, 1.375, 1.5):  # faster than the interval: the newest one arrives
        assert a.post("/api/market/ingest/candle_forming",
                      {"series_id": S, "candle": forming(last + 60, close)})[0] == 200
    shown = receive_until(ws, lambda m: m["type"] == "candle_forming"
                          and m["candle"]["close"] == 1.5)[-1]
    assert shown["series_id"] == S and shown["candle"]["candle_time"] == last + 60
    assert b.post("/api/market/ingest/candle_forming",
                  {"series_id": OTHER, "candle": forming(last + 60, 7.0)})[0] == 200
    shown = receive_until(other, lambda m: m["type"] == "candle_forming")[-1]
    assert shown["series_id"] == OTHER and shown["candle"]["close"] == 7.0

    # a system message: the owner's factor actor restarts, finds another fingerprint, rebuilds
    with psycopg.connect(cluster_env["TRADE_CANVAS_POSTGRES_DSN"], autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {}.factor_state SET fingerprint = 'older' "
                             "WHERE series_id = %s").format(
            sql.Identifier(cluster_env["TRADE_CANVAS_POSTGRES_SCHEMA"])), (S,))
    # the lease may move meanwhile (rebalancing): crash the factor actor wherever it runs
    wait_for(lambda: any(server.post("/api/runtime/debug/crash",
                                     {"series_id": S, "kind": "factor"})[0] == 202
                         for server in (a, b)))
    for socket in (ws, local):  # on the owner and on the other process
        rebuild = receive_until(socket, lambda m: m["type"] == "system")[-1]
        assert rebuild["event"] == "factor.rebuild" and rebuild["series_id"] == S
        assert rebuild["data"]["candles"] == 300
    relayed = [next(x["relayed"] for x in server.get("/api/runtime/actors")[1]["actors"]
                    if x["kind"] == "fanout") for server in (a, b)]
    assert sum(relayed) >= len(deltas) + 3  # every delta crossed (one way or the other)
    for socket in (ws, local, other):
        socket.close()
