"""End to end: the real gunicorn + gevent server, real SQLite, real WebSocket clients."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import websocket

from tests.integration.conftest import aligned_past, candle

pytestmark = pytest.mark.integration

S = "binance:futures:BTC/USDT:1m"


def connect(server, **kw) -> websocket.WebSocket:
    return websocket.create_connection(server.ws_url, timeout=10, **kw)


def subscribe(ws, series: str = S, since=None, batch: bool = False) -> None:
    ws.send(json.dumps({"type": "subscribe", "series_id": series, "since": since, "supports_batch": batch}))


def receive_times(ws, expected: int, timeout: float = 30.0) -> list[int]:
    """Read candle messages until ``expected`` candle times arrived."""
    times: list[int] = []
    deadline = time.monotonic() + timeout
    while len(times) < expected and time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg["type"] == "candle_closed":
            times.append(msg["candle"]["candle_time"])
        elif msg["type"] == "candles_batch":
            times.extend(c["candle_time"] for c in msg["candles"])
    return times


def test_ingest_then_read_over_http(start_server) -> None:
    server = start_server()
    base = aligned_past(100)
    for i in range(5):
        status, body = server.post("/api/market/ingest/candle_closed", {"series_id": S, "candle": candle(base + 60 * i)})
        assert status == 200 and body == {"ok": True, "series_id": S, "candle_time": base + 60 * i}
    status, body = server.get(f"/api/market/candles?series_id={S}&since={base + 60}&limit=2")
    assert status == 200
    assert [c["candle_time"] for c in body["candles"]] == [base + 120, base + 180]
    assert body["server_head_time"] == base + 240


def test_catch_up_then_live_has_no_hole_and_no_duplicate(start_server) -> None:
    server = start_server()
    base = aligned_past(1000)
    total = 400
    subscribed = threading.Event()

    def writer() -> None:
        for i in range(total):
            if i == 150:
                subscribed.wait(10)
            server.post("/api/market/ingest/candle_closed", {"series_id": S, "candle": candle(base + 60 * i)})

    thread = threading.Thread(target=writer)
    thread.start()
    while True:
        status, body = server.get(f"/api/market/candles?series_id={S}&limit=1")
        if body["server_head_time"] is not None and body["server_head_time"] >= base + 60 * 100:
            break
        time.sleep(0.01)
    ws = connect(server)
    subscribe(ws, since=base + 60 * 9)  # already has up to candle 9
    subscribed.set()
    times = receive_times(ws, total - 10)
    thread.join()
    assert times == [base + 60 * i for i in range(10, total)]
    ws.close()


def test_fifty_clients_receive_everything_in_order(start_server) -> None:
    server = start_server()
    base = aligned_past(500)
    clients = [connect(server) for _ in range(50)]
    for i, ws in enumerate(clients):
        subscribe(ws, batch=bool(i % 2))
    time.sleep(0.5)  # subscriptions are processed by the hub before the first write
    for i in range(100):
        server.post("/api/market/ingest/candle_closed", {"series_id": S, "candle": candle(base + 60 * i)})
    server.post("/api/market/ingest/candles_closed_batch",
                {"series_id": S, "candles": [candle(base + 60 * i) for i in range(100, 150)]})
    expected = [base + 60 * i for i in range(150)]
    for ws in clients:
        assert receive_times(ws, 150) == expected
        ws.close()


def test_slow_client_is_dropped_while_others_keep_up(start_server) -> None:
    server = start_server(TRADE_CANVAS_WS_SEND_QUEUE_MAX="10")
    base = aligned_past(80_000)
    slow = connect(server, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    fast = connect(server)
    subscribe(slow)
    subscribe(fast, batch=True)
    time.sleep(0.3)
    received: list[int] = []
    reader = threading.Thread(target=lambda: received.extend(receive_times(fast, 60 * 1000, timeout=120)))
    reader.start()
    for n in range(60):
        batch = [candle(base + 60 * (n * 1000 + i)) for i in range(1000)]
        status, _ = server.post("/api/market/ingest/candles_closed_batch", {"series_id": S, "candles": batch})
        assert status == 200
    reader.join()
    assert received == [base + 60 * i for i in range(60_000)]
    status, body = server.get("/api/runtime/actors")
    hub = next(a for a in body["actors"] if a["kind"] == "hub")
    assert hub["subscribers"] == 1
    last = None
    try:
        while True:
            message = slow.recv()
            if not message:
                break
            last = json.loads(message)
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        pass
    assert last is not None and last["type"] == "error" and last["code"] == "slow_consumer"
    assert "slow consumer" in server.log()


def test_bad_websocket_messages_keep_the_socket_open(start_server) -> None:
    server = start_server()
    ws = connect(server)
    for frame, message in [
        ("not json", "invalid json"),
        ("[]", "invalid message envelope"),
        ('{"type":"nope"}', "unknown message type: nope"),
        ('{"type":"subscribe","series_id":"bad"}', "invalid series_id"),
    ]:
        ws.send(frame)
        reply = json.loads(ws.recv())
        assert reply["type"] == "error" and reply["code"] == "bad_request" and message in reply["message"]
    base = aligned_past(10)
    server.post("/api/market/ingest/candle_closed", {"series_id": S, "candle": candle(base)})
    subscribe(ws)
    assert receive_times(ws, 1) == [base]
    ws.close()


def test_bad_inputs_leave_the_store_unchanged(start_server) -> None:
    server = start_server()
    base = aligned_past(10)
    server.post("/api/market/ingest/candle_closed", {"series_id": S, "candle": candle(base)})
    for body in (
        {"series_id": S, "candle": {**candle(base), "close": 100}},
        {"series_id": S, "candle": candle(base + 7)},
        {"series_id": S, "candles": [candle(base - 60), {"bad": 1}]},
    ):
        path = "/api/market/ingest/candles_closed_batch" if "candles" in body else "/api/market/ingest/candle_closed"
        status, reply = server.post(path, body)
        assert status == 422 and isinstance(reply["detail"], str)
    status, body = server.get(f"/api/market/candles?series_id={S}")
    assert body["candles"] == [candle(base)]


def test_restart_keeps_data_and_sigterm_is_prompt(start_server) -> None:
    server = start_server()
    base = aligned_past(50)
    server.post("/api/market/ingest/candles_closed_batch",
                {"series_id": S, "candles": [candle(base + 60 * i) for i in range(20)]})
    ws = connect(server)
    subscribe(ws)
    assert len(receive_times(ws, 20)) == 20
    took = server.stop()
    assert took < 10, f"SIGTERM took {took:.1f}s"
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        while True:
            if not ws.recv():
                raise ConnectionError("closed")
    again = start_server()
    status, body = again.get(f"/api/market/candles?series_id={S}&limit=100")
    assert [c["candle_time"] for c in body["candles"]] == [base + 60 * i for i in range(20)]


def test_kill_9_loses_no_acknowledged_write(start_server) -> None:
    server = start_server()
    base = aligned_past(5000)
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            t = base + 60 * i
            try:
                status, _ = server.post("/api/market/ingest/candle_closed", {"series_id": S, "candle": candle(t)})
            except Exception:
                return
            if status == 200:
                acked.append(t)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    while len(acked) < 200:
        time.sleep(0.01)
    server.kill()
    stop.set()
    thread.join()
    again = start_server()
    status, body = again.get(f"/api/market/candles?series_id={S}&limit=5000")
    stored = {c["candle_time"] for c in body["candles"]}
    assert set(acked) <= stored, f"lost {sorted(set(acked) - stored)[:5]}"


def test_crash_of_one_series_spares_the_others(start_server) -> None:
    server = start_server(TRADE_CANVAS_ENABLE_DEBUG_API="1")
    other = "binance:spot:ETH/USDT:1m"
    base = aligned_past(30)
    server.post("/api/market/ingest/candle_closed", {"series_id": S, "candle": candle(base)})
    server.post("/api/market/ingest/candle_closed", {"series_id": other, "candle": candle(base)})
    ws = connect(server)
    subscribe(ws, series=other)
    assert receive_times(ws, 1) == [base]
    status, _ = server.post("/api/runtime/debug/crash", {"series_id": S, "kind": "hub"})
    assert status == 202
    server.post("/api/market/ingest/candle_closed", {"series_id": other, "candle": candle(base + 60)})
    assert receive_times(ws, 1) == [base + 60]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        actors = server.get("/api/runtime/actors")[1]["actors"]
        hub = next(a for a in actors if a["kind"] == "hub" and a["series_id"] == S)
        if hub["restarts"] == 1 and hub["state"] == "running":
            break
        time.sleep(0.1)
    assert hub["restarts"] == 1 and hub["state"] == "running"
    assert "crash requested" in hub["last_error"]
    assert "restarting" in server.log() and "restarted" in server.log()
    status, body = server.get(f"/api/market/candles?series_id={S}")
    assert [c["candle_time"] for c in body["candles"]] == [base]


def test_monthly_series_over_http_and_websocket(start_server) -> None:
    """Calendar months: Feb -> Mar 2020 (29 days) is no gap, a missing April is one."""
    server = start_server()
    monthly = "binance:futures:BTC/USDT:1M"
    jan, feb, mar, apr, may, jun = (1_577_836_800, 1_580_515_200, 1_583_020_800, 1_585_699_200,
                                    1_588_291_200, 1_590_969_600)
    batch = {"series_id": monthly, "candles": [candle(t) for t in (jan, feb, mar)]}
    status, body = server.post("/api/market/ingest/candles_closed_batch", batch)
    assert status == 200, body
    status, body = server.post("/api/market/ingest/candle_closed",
                               {"series_id": monthly, "candle": candle(mar + 30 * 86400)})
    assert status == 422 and "not aligned" in body["detail"]  # March 31
    ws = connect(server)
    subscribe(ws, series=monthly, since=jan)
    seen = [json.loads(ws.recv()) for _ in range(2)]
    assert [(m["type"], m["candle"]["candle_time"]) for m in seen] == [
        ("candle_closed", feb), ("candle_closed", mar)]
    for t in (may, jun):
        status, body = server.post("/api/market/ingest/candle_closed",
                                   {"series_id": monthly, "candle": candle(t)})
        assert status == 200, body
    live = [json.loads(ws.recv()) for _ in range(3)]
    assert live[0] == {"type": "gap", "series_id": monthly, "expected_next_time": apr,
                       "actual_time": may}
    assert [m["candle"]["candle_time"] for m in live[1:]] == [may, jun]
    ws.close()
