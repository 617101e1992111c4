"""Top markets on the real server (gunicorn + gevent) against the replay exchange.

The replay clock starts paused, so ticker rows only change when a test advances it; upstream
traffic is counted with the exchange's REST request counters.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlencode

import pytest

pytestmark = pytest.mark.integration

TOP = "/api/market/top_markets"
STREAM = "/api/market/top_markets/stream"
TICKERS = "rest spot /api/v3/ticker/24hr"
INFO = "rest spot /api/v3/exchangeInfo"


class Sse:
    """A minimal SSE reader: one HTTP connection, one parsed block per ``next()``."""

    def __init__(self, server: Any, **query: Any) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
        self.conn.request("GET", f"{STREAM}?{urlencode({'market': 'spot', **query})}")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()

    def next(self) -> tuple[str, Any] | None:
        """Return ("ping", text), (event name, data) or None at the end of the stream."""
        lines: list[str] = []
        while True:
            raw = self.resp.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line:
                lines.append(line)
            elif lines:
                break
        if lines[0].startswith(": ping "):
            return "ping", lines[0]
        fields = dict(line.split(": ", 1) for line in lines)
        data = json.loads(fields["data"])
        if fields["event"] == "top_markets":
            assert fields["id"] == str(data["generated_at_ms"])
        return fields["event"], data

    def next_event(self) -> tuple[str, Any] | None:
        while (block := self.next()) is not None and block[0] == "ping":
            pass
        return block

    def close(self) -> None:
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.resp.close()
        self.conn.close()


def counters(exchange: Any) -> dict[str, int]:
    return exchange.get("/_replay/state")["counters"]


def boot(start_server: Any, start_replay: Any, **env: str) -> tuple[Any, Any]:
    exchange = start_replay("--paused")
    server = start_server(**exchange.env(), TRADE_CANVAS_BINANCE_TICKER_TTL_S="1", **env)
    return server, exchange


def test_list_cache_force_stale_and_errors(start_server, start_replay) -> None:
    server, exchange = boot(start_server, start_replay)
    status, body = server.get(f"{TOP}?market=spot&limit=10")
    assert status == 200 and body["cached"] is False and body["stale"] is False
    volumes = [item["quote_volume"] for item in body["items"]]
    assert len(volumes) == 10 and volumes == sorted(volumes, reverse=True)
    assert all(item["quote_asset"] == "USDT" for item in body["items"])
    assert server.get(f"{TOP}?market=spot&limit=3")[1]["cached"] is True
    assert (counters(exchange)[INFO], counters(exchange)[TICKERS]) == (1, 1)

    assert server.get(f"{TOP}?market=spot&force=1")[1]["cached"] is False
    assert server.get(f"{TOP}?market=spot&force=1") == (429, {"detail": "rate_limited"})
    assert server.get(f"{TOP}?market=spot&exchange=okx") == (400, {"detail": "unsupported exchange"})
    assert server.get(f"{TOP}?limit=5")[0] == 422

    exchange.post("/_replay/faults", {"rest": {"status": 500, "count": 100}})
    status, body = server.get(f"{TOP}?market=futures")
    assert status == 502 and body["detail"].startswith("upstream_error:")
    time.sleep(1.05)  # spot tickers expire
    status, body = server.get(f"{TOP}?market=spot")
    assert status == 200 and body["stale"] is True and body["cached"] is True
    exchange.post("/_replay/faults", {"clear": True})
    time.sleep(1.05)  # past the pause after a failure
    status, body = server.get(f"{TOP}?market=spot")
    assert status == 200 and body["stale"] is False and body["cached"] is False


def test_stream_sends_changes_pings_and_ends_at_max_events(start_server, start_replay) -> None:
    server, exchange = boot(start_server, start_replay)
    stream = Sse(server, interval_s=0.2, max_events=2, limit=50)
    kind, first = stream.next()
    assert kind == "top_markets" and first["market"] == "spot"
    blocks = [stream.next() for _ in range(5)]  # over a second of unchanged data: pings only
    assert all(block is not None and block[0] == "ping" for block in blocks)
    exchange.post("/_replay/clock", {"advance_ms": 15 * 60_000})  # BTCUSDT's ticker moves
    kind, second = stream.next_event()
    assert kind == "top_markets" and second["items"] != first["items"]
    assert stream.next() is None  # max_events reached: the server ends the response
    stream.close()


def test_disconnect_stops_the_poller(start_server, start_replay) -> None:
    server, exchange = boot(start_server, start_replay)
    stream = Sse(server, interval_s=0.2)
    assert stream.next_event()[0] == "top_markets"
    time.sleep(2.2)
    assert counters(exchange)[TICKERS] >= 2  # polling while the client is there (TTL 1 s)
    stream.close()
    time.sleep(1.0)
    settled = counters(exchange)[TICKERS]
    time.sleep(2.5)
    assert counters(exchange)[TICKERS] == settled
    assert "top markets poller spot/USDT/20 stopped" in server.log()


def test_two_hundred_streams_share_one_poll(start_server, start_replay) -> None:
    server, exchange = boot(start_server, start_replay)
    clients = 200
    got: list[list[Any]] = [[] for _ in range(clients)]
    first_seen = threading.Barrier(clients + 1, timeout=30)

    def run(index: int) -> None:
        stream = Sse(server, interval_s=0.5, max_events=2)
        got[index].append(stream.next_event())
        first_seen.wait()
        got[index].append(stream.next_event())
        got[index].append(stream.next_event())
        stream.close()

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    first_seen.wait()
    exchange.post("/_replay/clock", {"advance_ms": 15 * 60_000})
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started
    assert all(events[0][0] == events[1][0] == "top_markets" and events[2] is None for events in got)
    assert all(events[0][1]["items"] != events[1][1]["items"] for events in got)
    # one upstream tickers call per ticker TTL (1 s), whatever the number of streams
    assert counters(exchange)[TICKERS] <= elapsed + 2
    assert counters(exchange)[INFO] == 1
    assert server.get("/api/health")[0] == 200
