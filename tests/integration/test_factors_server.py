"""End to end: factors over real BTCUSDT candles, pushed over WebSocket, rebuilt on restart.

Runs on both stores: SQLite, and Postgres in a throwaway schema dropped afterwards.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import pytest
import websocket

from tests.fakes.postgres import drop_schema, new_schema_name, reachable_dsn
from tests.unit.test_factor_engine import load_recording

pytestmark = pytest.mark.integration

S = "binance:spot:BTC/USDT:1m"
CANDLES = load_recording()
LAST = CANDLES[-1].candle_time


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
        return
    dsn, schema = reachable_dsn(), new_schema_name()
    yield {"TRADE_CANVAS_ENABLE_PG_STORE": "1", "TRADE_CANVAS_POSTGRES_DSN": dsn,
           "TRADE_CANVAS_POSTGRES_SCHEMA": schema}
    drop_schema(dsn, schema)


def subscribe(server, since: int | None = None) -> websocket.WebSocket:
    ws = websocket.create_connection(server.ws_url, timeout=10)
    ws.send(json.dumps({"type": "subscribe", "series_id": S, "since": since, "supports_batch": True,
                        "draw": True}))
    return ws


def receive_until(
    ws: websocket.WebSocket, done: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Return every message up to and including the first one ``done`` accepts."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages.append(json.loads(ws.recv()))
        if done(messages[-1]):
            return messages
    raise AssertionError(f"no matching message in {timeout}s; got {[m['type'] for m in messages]}")


def wait_green(server, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.get(f"/api/factor/health?series_id={S}")
        assert status == 200
        if body["status"] == "green":
            return body
        time.sleep(0.1)
    raise AssertionError(f"factor ledger not level in {timeout}s: {body}")


def candle_times(server) -> list[int]:
    status, body = server.get(f"/api/market/candles?series_id={S}&since=0&limit=5000")
    assert status == 200
    return [c["candle_time"] for c in body["candles"]]


def check_factor_output(server) -> None:
    status, delta = server.get(f"/api/draw/delta?series_id={S}")
    assert status == 200 and delta["to_candle_time"] == LAST
    kinds = {row["instruction_id"].split(":")[0] for row in delta["instruction_catalog_patch"]}
    assert {"pivot.major", "pivot.minor", "pen.confirmed"} <= kinds
    assert delta["active_ids"]
    status, body = server.get(f"/api/factor/slices?series_id={S}&at_time={LAST}")
    assert status == 200 and body["candle_id"] == f"{S}:{LAST}"
    assert {"pivot", "pen", "zhongshu"} <= set(body["factors"])


def test_factors_computed_pushed_and_rebuilt_once(start_server, store_env) -> None:
    server = start_server(**store_env)
    ws = subscribe(server)
    status, _ = server.post("/api/market/ingest/candles_closed_batch",
                            {"series_id": S, "candles": [c.to_dict() for c in CANDLES]})
    assert status == 200
    pushed = receive_until(ws, lambda m: m["type"] == "draw_delta" and m["to_candle_time"] == LAST)
    assert all(m["type"] != "system" for m in pushed)  # a first computation is no rebuild
    assert any(m["instruction_catalog_patch"] for m in pushed if m["type"] == "draw_delta")
    wait_green(server)
    check_factor_output(server)
    before = candle_times(server)
    assert len(before) == len(CANDLES)
    ws.close()
    server.stop()

    server = start_server(TRADE_CANVAS_FACTOR_LOGIC_VERSION="2", **store_env)
    ws = subscribe(server, since=LAST)  # starts the series: its factor actor finds the mismatch
    [rebuild] = [m for m in receive_until(ws, lambda m: m["type"] == "system") if m["type"] == "system"]
    assert rebuild["event"] == "factor.rebuild" and rebuild["series_id"] == S
    assert rebuild["data"]["candles"] == 2000 and rebuild["data"]["series_id"] == S
    ws.settimeout(1.0)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            assert json.loads(ws.recv())["type"] != "system"
    ws.close()
    health = wait_green(server)
    assert health["factor_actor"]["rebuilds"] == 1
    check_factor_output(server)
    assert candle_times(server) == before  # a rebuild never deletes candles
    assert server.log().count("factor rebuild of") == 2  # started + done, exactly once


def test_unpublished_batch_gets_factors_and_draw_only_goes_to_draw_clients(start_server) -> None:
    server = start_server()
    plain = websocket.create_connection(server.ws_url, timeout=10)
    plain.send(json.dumps({"type": "subscribe", "series_id": S, "since": 0}))
    drawing = subscribe(server)
    half = CANDLES[:2000]
    status, _ = server.post("/api/market/ingest/candles_closed_batch", {
        "series_id": S, "candles": [c.to_dict() for c in half], "publish_ws": False,
    })
    assert status == 200
    wait_green(server)  # the factor ledger follows candles that were not published
    at = half[-1].candle_time
    status, body = server.get(f"/api/factor/slices?series_id={S}&at_time={at}")
    assert status == 200 and body["candle_id"] == f"{S}:{at}"
    assert {"pivot", "pen"} <= set(body["factors"])
    # then live candles: the draw client gets small deltas, the plain one candles only
    for candle in CANDLES[2000:2040]:
        status, _ = server.post("/api/market/ingest/candle_closed",
                                {"series_id": S, "candle": candle.to_dict()})
        assert status == 200
    last = CANDLES[2039].candle_time
    pushed = receive_until(drawing, lambda m: m["type"] == "draw_delta" and m["to_candle_time"] == last)
    deltas = [m for m in pushed if m["type"] == "draw_delta"]
    assert deltas and all("removed_ids" in m and "active_ids" not in m for m in deltas)
    got = receive_until(plain, lambda m: m["type"] == "candle_closed" and m["candle"]["candle_time"] == last)
    plain.settimeout(1.0)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            got.append(json.loads(plain.recv()))
    assert all(m["type"] != "draw_delta" for m in got)
    assert len([m for m in got if m["type"] == "candle_closed"]) == 40
