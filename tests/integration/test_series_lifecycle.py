"""Series actor groups end: idle ones are reaped, live ones are capped (issue 13).

Run with ``-s`` to see the actor counts and RSS figures the churn test measures.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.conftest import aligned_past, candle
from tests.integration.test_server import connect
from tests.integration.test_ws_limits import server_rss_kib, status

pytestmark = pytest.mark.integration


def actor_count(server) -> int:
    return len(status(server)["actors"])


def wait_actors(server, expected: int, timeout: float) -> float:
    started = time.monotonic()
    while (count := actor_count(server)) != expected:
        assert time.monotonic() - started < timeout, f"{count} actors, expected {expected}"
        time.sleep(0.2)
    return time.monotonic() - started


def churn(server, round_: int, sockets: int = 5, per_socket: int = 200) -> int:
    """Subscribe ``sockets x per_socket`` new series, ingest into 100 more, then leave."""
    clients = [connect(server) for _ in range(sockets)]
    for k, ws in enumerate(clients):
        for i in range(per_socket):
            series = f"bench:spot:R{round_}S{k * per_socket + i}/USDT:1m"
            ws.send(json.dumps({"type": "subscribe", "series_id": series}))
    t = aligned_past(10)
    for i in range(100):
        code, _ = server.post("/api/market/ingest/candle_closed",
                              {"series_id": f"bench:spot:R{round_}I{i}/USDT:1m", "candle": candle(t)})
        assert code == 200
    expected = 3 * sockets * per_socket  # the ingested series may be reaped already
    deadline = time.monotonic() + 60
    while (count := actor_count(server)) < expected:
        assert time.monotonic() < deadline, f"only {count} actors"
        time.sleep(0.2)
    for ws in clients:
        ws.close()
    return count


def test_series_churn_returns_to_the_baseline(start_server) -> None:
    """Before: 10k series made 30k actors and RSS 51 -> 513 MB, never freed."""
    server = start_server(TRADE_CANVAS_SERIES_IDLE_TTL_S="1", TRADE_CANVAS_ENABLE_DEBUG_API="1")
    base_actors, cold_rss = actor_count(server), server_rss_kib(server)
    # Warm up: the first series and sockets load code and caches that stay for good.
    churn(server, 0, sockets=1, per_socket=20)
    wait_actors(server, base_actors, timeout=30)
    time.sleep(1.0)
    base_rss = server_rss_kib(server)
    figures = []
    for round_ in range(1, 3):
        peak = churn(server, round_)
        peak_rss = server_rss_kib(server)
        took = wait_actors(server, base_actors, timeout=60)
        time.sleep(1.0)
        figures.append((peak, peak_rss, took, server_rss_kib(server)))
    for n, (peak, peak_rss, took, rss) in enumerate(figures):
        print(f"\nchurn {n + 1}: {peak} actors at the peak, RSS {peak_rss} KiB; back to "
              f"{base_actors} actors {took:.1f} s after the clients left, RSS {rss} KiB "
              f"(baseline {base_rss} KiB after a warm-up, {cold_rss} KiB cold)")
    assert status(server)["series_count"] == 0
    # The second churn reuses what the first freed: no growth from round to round.
    assert figures[1][3] <= figures[0][3] * 1.10
    # Forming updates and debug crashes of a series that is not running start nothing.
    code, _ = server.post("/api/market/ingest/candle_forming",
                          {"series_id": "bench:spot:NEW/USDT:1m", "candle": candle(aligned_past(0))})
    assert code == 200
    code, body = server.post("/api/runtime/debug/crash",
                             {"series_id": "bench:spot:NEW/USDT:1m", "kind": "hub"})
    assert code == 404 and "no running hub" in body["detail"]
    assert actor_count(server) == base_actors


def test_series_past_the_cap_are_refused_with_a_clear_error(start_server) -> None:
    server = start_server(TRADE_CANVAS_MAX_SERIES="3")
    ws = connect(server)
    for i in range(3):  # three series in use (subscribed)
        ws.send(json.dumps({"type": "subscribe", "series_id": f"bench:spot:CAP{i}/USDT:1m"}))
    deadline = time.monotonic() + 10
    while status(server)["series_count"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.3)
    code, body = server.post("/api/market/ingest/candle_closed",
                             {"series_id": "bench:spot:CAP9/USDT:1m", "candle": candle(aligned_past(2))})
    assert code == 429 and body["detail"].startswith("series_capacity"), body
    ws.send(json.dumps({"type": "subscribe", "series_id": "bench:spot:CAP8/USDT:1m"}))
    error = json.loads(ws.recv())
    assert (error["type"], error["code"], error["series_id"]) == (
        "error", "capacity", "bench:spot:CAP8/USDT:1m")
    assert "series_capacity" in error["message"]
    ws.send(json.dumps({"type": "unsubscribe", "series_id": "bench:spot:CAP0/USDT:1m"}))
    time.sleep(0.3)  # CAP0 is idle now: the next new series takes its place
    code, _ = server.post("/api/market/ingest/candle_closed",
                          {"series_id": "bench:spot:CAP9/USDT:1m", "candle": candle(aligned_past(2))})
    assert code == 200
    assert status(server)["series_count"] == 3
    ws.close()
