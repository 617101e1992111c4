"""The real server under hostile clients: half-sent requests, short and chunked bodies, protocol
errors gunicorn answers itself, oversized WebSocket messages, and who may bind and write."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import time

import pytest
import websocket

from tests.fakes.replay import ROOT, free_port
from tests.integration.conftest import aligned_past, candle

pytestmark = pytest.mark.integration

S = "binance:spot:BTC/USDT:1m"
TOKEN = "integration-token-0123456789"
CLOSED = "/api/market/ingest/candle_closed"


def exchange(port: int, data: bytes, *, half_close: bool = False, wait: float = 5.0,
             source: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read until the server closes (or ``wait`` passes), return the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=wait, source_address=(source, 0))
    try:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return answer
            if not chunk:
                return answer
            answer += chunk
    finally:
        sock.close()


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post_head(length: int | None, extra: bytes = b"") -> bytes:
    size = b"Content-Length: %d\r\n" % length if length is not None else b""
    return (b"POST " + CLOSED.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\n" + size + extra + b"\r\n")


def health_from(port: int, source: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status
    finally:
        conn.close()


def first_answers(socks: list[socket.socket], since: float, timeout: float) -> list[tuple[bytes, float]]:
    """Return each socket's first answer bytes (status line start) and its delay from ``since``."""
    answers: dict[socket.socket, tuple[bytes, float]] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while len(answers) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b"<reset>"
                answers[key.fileobj] = (data[:12], time.monotonic() - since)  # type: ignore[index]
                selector.unregister(key.fileobj)
    return [answers.get(sock, (b"<none>", timeout)) for sock in socks]


def test_half_sent_requests_from_one_client_cannot_starve_the_server(start_server) -> None:
    server = start_server(TRADE_CANVAS_MAX_CONNECTIONS_PER_PEER="50",
                          TRADE_CANVAS_HTTP_READ_TIMEOUT_S="2")
    hogs = []
    started = time.monotonic()
    try:
        for _ in range(600):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: local")  # and never the rest
            hogs.append(sock)
        asked = time.monotonic()
        assert health_from(server.port, "127.0.0.2") == 200  # another client is served at once
        assert time.monotonic() - asked < 1.0
        answers = first_answers(hogs, started, timeout=8.0)
        refused = [delay for head, delay in answers if head == b"HTTP/1.1 429"]
        timed_out = [delay for head, delay in answers if head == b"HTTP/1.1 408"]
        assert len(refused) == 550 and max(refused) < 1.9, answers
        assert len(timed_out) == 50 and 1.9 < min(timed_out) < max(timed_out) < 5.0, timed_out
        assert health_from(server.port, "127.0.0.1") == 200  # the client's slots are free again
    finally:
        for sock in hogs:
            sock.close()


def test_a_stalled_body_times_out_and_a_short_body_is_refused(start_server) -> None:
    server = start_server(TRADE_CANVAS_HTTP_READ_TIMEOUT_S="1")
    body = json.dumps({"series_id": S, "candle": candle(aligned_past(5))}).encode()
    started = time.monotonic()
    stalled = exchange(server.port, post_head(len(body)) + body[:20], wait=5)
    assert status_and_body(stalled)[0] == 408 and time.monotonic() - started < 4
    short = exchange(server.port, post_head(len(body) + 10) + body, half_close=True)
    status, detail = status_and_body(short)
    assert status == 400 and "Content-Length" in detail["detail"]
    assert b"Connection: close" in short
    assert server.get(f"/api/market/candles?series_id={S}")[1]["candles"] == []


def test_chunked_bodies_are_read_and_bounded(start_server) -> None:
    server = start_server()
    body = json.dumps({"series_id": S, "candle": candle(aligned_past(5))}).encode()
    small = exchange(server.port, post_head(None, b"Transfer-Encoding: chunked\r\n")
                     + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert status_and_body(small) == (200, {"ok": True, "series_id": S,
                                            "candle_time": aligned_past(5)})
    piece = b"x" * 65536
    big = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(32)) + b"0\r\n\r\n"
    status, detail = status_and_body(exchange(
        server.port, post_head(None, b"Transfer-Encoding: chunked\r\n") + big))
    assert status == 413 and "larger than" in detail["detail"]


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
    (b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n"
     + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)) + b"\r\n", 431),
    (b"GET /api/market/candles?series_id=" + S.encode() + b"&since=9223372036854775808 HTTP/1.1"
     b"\r\nHost: localhost\r\nConnection: close\r\n\r\n", 422),
    (b"GET /api/draw/delta?series_id=" + S.encode() + b"&cursor_version_id=" + str(2**70).encode()
     + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 422),
])
def test_protocol_errors_are_json(start_server, request_bytes: bytes, status: int) -> None:
    server = start_server()
    answer = exchange(server.port, request_bytes)
    got, body = status_and_body(answer)
    assert got == status and isinstance(body["detail"], str)
    assert b"content-type: application/json" in answer.lower()


def test_websocket_limits_answer_on_the_socket(start_server) -> None:
    server = start_server()
    ws = websocket.create_connection(server.ws_url, timeout=10)
    ws.send(json.dumps({"type": "subscribe", "series_id": S, "since": 2**63}))
    error = json.loads(ws.recv())
    assert (error["type"], error["code"]) == ("error", "bad_request") and "since" in error["message"]
    ws.send(json.dumps({"type": "subscribe", "series_id": "binance:spot:BTC\u0000/USDT:1m"}))
    assert json.loads(ws.recv())["code"] == "bad_request"
    assert server.post(CLOSED, {"series_id": S, "candle": candle(aligned_past(2))})[0] == 200
    ws.send(json.dumps({"type": "subscribe", "series_id": S}))  # the socket is still open
    assert json.loads(ws.recv())["type"] == "candle_closed"
    # over 64 KiB: the server sends a close frame with 1009 (message too big), as the README says
    ws.send(json.dumps({"type": "subscribe", "series_id": S, "pad": "x" * (70 * 1024)}))
    ws.sock.settimeout(5)
    received = b""
    while len(received) < 4:
        try:
            chunk = ws.sock.recv(4096)
        except ConnectionResetError:
            break  # the close frame came first; what follows it does not matter here
        if not chunk:
            break
        received += chunk
    assert received[:1] == b"\x88" and int.from_bytes(received[2:4], "big") == 1009, received
    ws.sock.close()
    assert server.get("/api/health")[0] == 200


def test_token_host_and_origin_over_the_wire(start_server) -> None:
    server = start_server(TRADE_CANVAS_API_TOKEN=TOKEN)
    write = {"series_id": S, "candle": candle(aligned_past(3))}
    assert server.post(CLOSED, write)[0] == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.ws_url, timeout=5)
    assert refused.value.status_code == 401
    ws = websocket.create_connection(f"{server.ws_url}?token={TOKEN}", timeout=5)
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as foreign:
        websocket.create_connection(f"{server.ws_url}?token={TOKEN}", timeout=5,
                                    origin="http://evil.example")
    assert foreign.value.status_code == 403
    rebound = exchange(server.port, b"GET /api/health HTTP/1.1\r\nHost: rebind.evil.example:80"
                                    b"\r\nConnection: close\r\n\r\n")
    assert status_and_body(rebound)[0] == 421
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", CLOSED, body=json.dumps(write),
                 headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    assert conn.getresponse().status == 200
    conn.close()


def test_serving_beyond_loopback_without_a_token_is_refused_at_boot(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_CANVAS_")}
    env.update(TRADE_CANVAS_DB_PATH=str(tmp_path / "m.db"),
               TRADE_CANVAS_WHITELIST_PATH=str(tmp_path / "w.json"))
    done = subprocess.run(
        [sys.executable, "-m", "trade_canvas", "serve", "--host", "0.0.0.0", "--port",
         str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without TRADE_CANVAS_API_TOKEN" in done.stderr
    assert not (tmp_path / "m.db").exists()  # nothing started


def test_an_answer_leaves_in_one_write_and_empty_answers_are_not_held(start_server) -> None:
    """The worker holds an answer's head for its body (one system call per answer)."""
    import socket as socket_module

    server = start_server()
    with socket_module.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for _ in range(3):  # keep-alive: each answer complete before the next request
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200") and body.startswith(b"{")
        # an answer without a body (a preflight) is sent when the request is done
        sock.sendall(b"OPTIONS /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Origin: http://localhost:5173\r\nAccess-Control-Request-Method: GET\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 ")
