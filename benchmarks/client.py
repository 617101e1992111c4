"""Lean loopback clients: keep-alive HTTP and a raw WebSocket reader for thousands of sockets.

The server has one worker on a small machine, so the clients must cost little CPU: HTTP uses one
``http.client`` connection per thread for the whole run, and WebSocket subscribers are plain
sockets read by one selector loop per process with a minimal RFC 6455 frame parser (text, ping,
close; server frames are never masked). Every receipt is stamped with ``time.monotonic()``, which
is one clock for all processes on the machine, so the driver can compare it with its own stamps.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import struct
import time
from typing import Any, Iterator

import orjson

CANDLE = {"open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 3.0}


def candle(t: int, close: float = 100.5) -> dict[str, Any]:
    """Return a valid candle opening at ``t``."""
    return {"candle_time": t, **CANDLE, "close": close}


def aligned_past(step_s: int, steps_ago: int) -> int:
    """Return an open time ``steps_ago`` candles of ``step_s`` before the current one."""
    now = int(time.time())
    return now - now % step_s - step_s * steps_ago


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of an ascending list (0.0 for an empty list)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values))) - 1))
    return sorted_values[index]


class Http:
    """One keep-alive HTTP/1.1 connection to the server."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request and return status and body."""
        headers = {"content-type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def post(self, path: str, payload: Any) -> Any:
        """POST JSON and return the decoded answer (raises on a non-200 status)."""
        status, data = self.request("POST", path, orjson.dumps(payload))
        if status != 200:
            raise RuntimeError(f"POST {path} -> {status}: {data[:300]!r}")
        return orjson.loads(data)

    def get(self, path: str) -> Any:
        """GET JSON (raises on a non-200 status)."""
        status, data = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {data[:300]!r}")
        return orjson.loads(data)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def ingest_batches(port: int, series_id: str, candles: list[dict[str, Any]],
                   publish: bool = False, size: int = 5000) -> None:
    """Store candles through the batch endpoint, ``size`` per request."""
    client = Http(port)
    try:
        for start in range(0, len(candles), size):
            client.post("/api/market/ingest/candles_closed_batch", {
                "series_id": series_id, "candles": candles[start:start + size],
                "publish_ws": publish})
    finally:
        client.close()


# --- WebSocket ---------------------------------------------------------------------------------


def ws_connect(port: int, timeout: float = 30.0) -> socket.socket:
    """Open ``/ws/market`` and finish the upgrade; returns the blocking socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET /ws/market HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
         ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the socket during the upgrade")
        head += chunk
        if len(head) > 65536:
            raise ConnectionError("oversized upgrade answer")
    status_line = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status_line:
        raise ConnectionError(f"upgrade refused: {status_line!r}")
    rest = head.split(b"\r\n\r\n", 1)[1]
    if rest:
        raise ConnectionError("unexpected bytes after the upgrade")
    return sock


def encode_client_frame(text: str, opcode: int = 0x1) -> bytes:
    """Return one masked client frame."""
    payload = text.encode() if isinstance(text, str) else text
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def subscribe_frame(series_id: str, supports_batch: bool = True, draw: bool = False,
                    since: int | None = None) -> bytes:
    """Return the client frame subscribing to a series.

    Without ``since`` the server catches the socket up with the series' stored tail; a chart
    that already loaded its history passes the newest time it holds and gets only what follows.
    ``draw`` asks for the factor overlay's ``draw_delta`` messages as well.
    """
    message: dict[str, Any] = {"type": "subscribe", "series_id": series_id,
                               "supports_batch": supports_batch}
    if draw:
        message["draw"] = True
    if since is not None:
        message["since"] = since
    return encode_client_frame(orjson.dumps(message).decode())


class FrameReader:
    """Incremental parser of server frames: ``feed(bytes)`` yields (opcode, payload)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.fragments: list[bytes] = []

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Append bytes and yield every complete message."""
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, offset = struct.unpack_from("!H", buf, 2)[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, offset = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < offset + length:
                break
            payload = bytes(buf[offset:offset + length])
            del buf[:offset + length]
            opcode = first & 0x0F
            if opcode == 0x0:
                self.fragments.append(payload)
                if first & 0x80:
                    yield 0x1, b"".join(self.fragments)
                    self.fragments = []
                continue
            if not first & 0x80:  # first fragment of a message
                self.fragments = [payload]
                continue
            yield opcode, payload
