"""The WebSocket socket layer: bounded writes, nothing after a close frame, subscribe budget.

Plain socket pairs stand in for the client; the gevent path runs in the integration tests.
"""

from __future__ import annotations

import socket
import time

import pytest

from trade_canvas.http.ws import SubscribeBudget, _has_close_frame, _WholeFrameSocket

CLOSE_1008 = b"\x88\x02\x03\xf0"
PING = b"\x89\x00"


def test_a_write_to_a_client_that_does_not_read_ends_at_its_deadline() -> None:
    server, client = socket.socketpair()
    sock = _WholeFrameSocket(server, timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            sock.write(b"x" * (64 << 20))
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # the lock was released: the next write is bounded too
            sock.send(PING * 100_000)
        assert time.monotonic() - started < 2.0
    finally:
        server.close()
        client.close()


def test_nothing_is_written_after_a_close_frame() -> None:
    server, client = socket.socketpair()
    sock = _WholeFrameSocket(server, timeout_s=1.0)
    try:
        sock.send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")  # 'H' is 0x48: not a frame yet
        sock.upgraded = True
        sock.write(b"\x81\x02hi")
        sock.send(CLOSE_1008)
        with pytest.raises(BrokenPipeError):
            sock.send(PING)  # the library's ping thread, a moment too late
        with pytest.raises(BrokenPipeError):
            sock.write(b"\x81\x02hi")
        assert sock.send_now(b"\x81\x02hi") == 0
        client.settimeout(1.0)
        received = client.recv(1000)
        assert received.endswith(CLOSE_1008) and received.count(b"\x88") == 1
    finally:
        server.close()
        client.close()


@pytest.mark.parametrize("data, closes", [
    (CLOSE_1008, True),
    (PING, False),
    (b"\x8a\x00" + CLOSE_1008, True),  # a pong and a close in one write
    (b"\x81\x7e\x00\x88" + b"\x88" * 136, False),  # 0x88 bytes inside a text payload
])
def test_close_frames_are_found_in_server_writes(data: bytes, closes: bool) -> None:
    assert _has_close_frame(data) is closes


def test_subscribe_budget_bursts_then_rations() -> None:
    now = [0.0]
    budget = SubscribeBudget(max_series=3, per_second=2.0, clock=lambda: now[0])
    held: set[str] = set()
    for name in ("a", "b", "c"):
        assert budget.spend(name, held) is None
        held.add(name)
    code, message = budget.spend("d", held) or ("", "")
    assert code == "capacity" and "too_many_subscriptions" in message
    assert budget.spend("a", held)[0] == "rate_limited"  # type: ignore[index]
    now[0] += 0.5  # one token back
    assert budget.spend("a", held) is None
    assert budget.spend("a", held)[0] == "rate_limited"  # type: ignore[index]
