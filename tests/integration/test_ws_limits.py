"""Per-connection limits of /ws/market on the real server (issue 13: bytes, dropped sessions,
subscribe floods).

``server_rss_kib`` reads the gevent worker's VmRSS from /proc; the figures are printed (run with
``-s`` to see them) and bounded loosely, as other tests share the machine.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest
import websocket

from tests.integration.conftest import aligned_past, candle
from tests.integration.test_server import connect, subscribe

pytestmark = pytest.mark.integration

S = "binance:futures:BTC/USDT:1m"
OTHER = "binance:futures:ETH/USDT:1m"
BATCH = "/api/market/ingest/candles_closed_batch"


def worker_pid(server) -> int:
    """The gunicorn worker (the only child of the server process)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server.proc.pid:
                return int(entry.name)
    raise AssertionError("no worker process")


def server_rss_kib(server) -> int:
    for line in Path(f"/proc/{worker_pid(server)}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def status(server) -> dict:
    code, body = server.get("/api/runtime/actors")
    assert code == 200
    return body


def wait_connections(server, expected: int, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while (count := status(server)["websocket_connections"]) != expected:
        assert time.monotonic() - started < timeout, f"{count} connections, expected {expected}"
        time.sleep(0.1)
    return time.monotonic() - started


def store_candles(server, series: str, base: int, count: int, publish: bool = False) -> None:
    for start in range(0, count, 5000):
        batch = [candle(base + 60 * i) for i in range(start, min(count, start + 5000))]
        code, _ = server.post(BATCH, {"series_id": series, "candles": batch, "publish_ws": publish})
        assert code == 200


def non_reader(server) -> websocket.WebSocket:
    """A client that never reads, with a tiny receive buffer."""
    return connect(server, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))


def read_until_closed(ws: websocket.WebSocket, timeout: float = 10.0) -> list[dict]:
    """Read every server message until the socket closes."""
    ws.settimeout(timeout)
    messages = []
    try:
        while True:
            data = ws.recv()
            if not data:
                return messages
            messages.append(json.loads(data))
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return messages


def test_dropped_slow_consumers_end_their_sessions(start_server) -> None:
    """Before: every slow_consumer drop left a session behind (websocket_connections drifted)."""
    server = start_server(TRADE_CANVAS_WS_SEND_QUEUE_MAX="5", TRADE_CANVAS_WS_WRITE_TIMEOUT_S="3")
    base = aligned_past(50_000)
    watcher = connect(server)
    subscribe(watcher, batch=True)
    slow = [non_reader(server) for _ in range(3)]
    for ws in slow:
        subscribe(ws, batch=True)
    assert wait_connections(server, 4) < 10
    for n in range(40):  # ~120 KB per publish per client: the kernel buffers fill, then the queue
        batch = [candle(base + 60 * (n * 1000 + i)) for i in range(1000)]
        code, _ = server.post(BATCH, {"series_id": S, "candles": batch})
        assert code == 200
        watcher.recv()
    took = wait_connections(server, 1)
    print(f"\nslow consumers' sessions ended {took:.2f} s after the last publish")
    # The server closed the socket; the error frame itself only arrives if the client's
    # buffers had room for it within the goodbye deadline.
    got = read_until_closed(slow[0])
    assert not [m for m in got if m["type"] == "error" and m["code"] != "slow_consumer"]
    assert server.log().count("dropped slow consumer") == 3
    hub = next(a for a in status(server)["actors"] if a["kind"] == "hub")
    assert hub["subscribers"] == 1


def test_pending_bytes_are_bounded_and_freed(start_server) -> None:
    """Before: three clients that stopped reading held ~876 MB, and kept it after leaving."""
    server = start_server(TRADE_CANVAS_WS_SEND_BUFFER_MB="2", TRADE_CANVAS_WS_WRITE_TIMEOUT_S="3")
    base = aligned_past(100_000)
    store_candles(server, S, base, 5000)
    time.sleep(1.0)
    before = server_rss_kib(server)
    watcher = connect(server)
    subscribe(watcher, since=base + 60 * 4999, batch=True)
    slow = [non_reader(server) for _ in range(3)]
    for ws in slow:
        subscribe(ws, since=0, batch=True)  # a 5000-candle catch-up each (~600 KB)
    wait_connections(server, 4)
    peak = before
    for n in range(30):  # 1000 candles per publish: far fewer messages than the queue limit
        t0 = base + 60 * (5000 + n * 1000)
        batch = [candle(t0 + 60 * i) for i in range(1000)]
        code, _ = server.post(BATCH, {"series_id": S, "candles": batch})
        assert code == 200
        watcher.recv()
        peak = max(peak, server_rss_kib(server))
    took = wait_connections(server, 1, timeout=15)
    for ws in slow:
        ws.close()
    time.sleep(1.0)
    after = server_rss_kib(server)
    print(f"\nRSS before {before} KiB, peak {peak} KiB, after {after} KiB; "
          f"dropped {took:.2f} s after the last publish")
    assert peak - before < 100_000  # three clients x 2 MB, plus the batches being encoded
    assert "slow consumer" in server.log() or "dropped" in server.log()


def test_subscribe_floods_are_rationed_and_ingest_keeps_its_pace(start_server) -> None:
    """Before: 10k subscribes to a 5000-candle series made ingest of other series take ~1 s."""
    server = start_server(TRADE_CANVAS_WS_MAX_SUBSCRIPTIONS="50", TRADE_CANVAS_MAX_SERIES="0",
                          TRADE_CANVAS_WS_SUBSCRIBES_PER_S="10")
    base = aligned_past(60_000)
    store_candles(server, S, base, 5000)
    flood = connect(server)
    errors: list[dict] = []
    received = [0]

    def read() -> None:
        try:
            while True:
                message = json.loads(flood.recv())
                received[0] += 1
                if message["type"] == "error":
                    errors.append(message)
        except Exception:
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    latencies: list[float] = []
    stop = threading.Event()

    def ingest() -> None:
        t = aligned_past(50_000)
        while not stop.is_set():
            started = time.monotonic()
            code, _ = server.post("/api/market/ingest/candle_closed",
                                  {"series_id": OTHER, "candle": candle(t)})
            latencies.append(time.monotonic() - started)
            assert code == 200
            t += 60
            time.sleep(0.02)

    writer = threading.Thread(target=ingest, daemon=True)
    writer.start()
    frame = json.dumps({"type": "subscribe", "series_id": S, "since": 0, "supports_batch": True})
    flood.send(frame)
    for k in range(60):  # distinct series: 11 past the per-connection cap
        flood.send(json.dumps({"type": "subscribe", "series_id": f"bench:spot:F{k}/USDT:1m"}))
    for _ in range(3000):  # the burst is spent: rationed to 10 per second
        flood.send(frame)
    time.sleep(3.0)
    stop.set()
    writer.join()
    codes = {e["code"] for e in errors}
    print(f"\ningest during the flood: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} writes; "
          f"{sum(e['code'] == 'rate_limited' for e in errors)} rate_limited, "
          f"{sum(e['code'] == 'capacity' for e in errors)} capacity")
    assert {"rate_limited", "capacity"} <= codes, codes
    assert max(latencies) < 1.0 and statistics.median(latencies) < 0.2  # before: 2.5 s median
    time.sleep(0.5)
    flood.send(json.dumps({"type": "subscribe", "series_id": S, "since": base + 60 * 4990}))
    deadline = time.monotonic() + 5
    while not (errors and received[0] and status(server)["websocket_connections"] == 1):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert flood.connected  # the socket stayed open
    flood.close()
