"""GET /api/market/top_markets and its SSE stream, on the real runtime against the replay exchange."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import orjson
import pytest

from tests.fakes.replay import ReplayExchange
from trade_canvas.actors.subscriber import MarketStream, StreamEvent
from trade_canvas.http.top_markets import format_event, format_ping, sse_events

TOP = "/api/market/top_markets"
STREAM = "/api/market/top_markets/stream"


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Iterator[ReplayExchange]:
    exchange = ReplayExchange(tmp_path_factory.mktemp("replay") / "replay.log", "--paused")
    yield exchange
    exchange.stop()


@pytest.fixture
def top(replay, make_client):
    replay.post("/_replay/reset", {})

    def make(**env: str):
        return make_client(**replay.env(), **env)

    return make


def upstream(replay: ReplayExchange, market: str = "spot") -> tuple[int, int]:
    counters = replay.get("/_replay/state")["counters"]
    prefix = "/api/v3" if market == "spot" else "/fapi/v1"
    return (counters.get(f"rest {market} {prefix}/exchangeInfo", 0),
            counters.get(f"rest {market} {prefix}/ticker/24hr", 0))


# -- the list


def test_spot_shape_filters_and_order(top) -> None:
    body = top().simulate_get(TOP, params={"market": "spot", "limit": "50"}).json
    assert {k: body[k] for k in ("exchange", "market", "quote_asset", "limit", "cached", "stale")} == {
        "exchange": "binance", "market": "spot", "quote_asset": "USDT", "limit": 50,
        "cached": False, "stale": False}
    assert isinstance(body["generated_at_ms"], int)
    items = body["items"]
    assert items and all(item["quote_asset"] == "USDT" for item in items)
    ids = {item["symbol_id"] for item in items}
    assert "BTCUSDT" in ids and not ids & {"BCCUSDT", "VENUSDT", "PAXUSDT"}  # BREAK symbols
    volumes = [item["quote_volume"] for item in items]
    assert volumes == sorted(volumes, reverse=True)
    first = items[0]
    assert set(first) == {"exchange", "market", "symbol", "symbol_id", "base_asset", "quote_asset",
                          "last_price", "quote_volume", "price_change_percent"}
    assert first["symbol"] == f"{first['base_asset']}/{first['quote_asset']}"
    assert first["symbol_id"] == first["base_asset"] + first["quote_asset"]


def test_futures_perpetuals_only_and_quote_filter(top) -> None:
    client = top()
    usdt = client.simulate_get(TOP, params={"market": "futures", "limit": "200"}).json["items"]
    ids = {item["symbol_id"] for item in usdt}
    assert "XRPUSDT" in ids and not ids & {"BTCUSDT_210924", "ETHUSDT_210924", "BTCSTUSDT"}
    busd = client.simulate_get(TOP, params={"market": "futures", "quote_asset": "busd"}).json
    assert busd["quote_asset"] == "BUSD"
    assert [item["symbol_id"] for item in busd["items"]] == ["BTCBUSD", "ETHBUSD"]
    limited = client.simulate_get(TOP, params={"market": "futures", "limit": "3"}).json["items"]
    assert limited == usdt[:3]


@pytest.mark.parametrize(("params", "status", "detail"), [
    ({}, 422, "market is required: spot or futures"),
    ({"market": "margin"}, 422, "market is required: spot or futures"),
    ({"market": "spot", "limit": "0"}, 422, "limit must be an integer in 1..200"),
    ({"market": "spot", "limit": "201"}, 422, "limit must be an integer in 1..200"),
    ({"market": "spot", "quote_asset": "X" * 13}, 422, "quote_asset must be 1..12 characters"),
    ({"market": "spot", "force": "maybe"}, 422, "force must be a boolean"),
    ({"market": "spot", "exchange": "okx"}, 400, "unsupported exchange"),
    ({"market": "spot", "exchange": "Binance"}, 400, "unsupported exchange"),
])
def test_bad_parameters(top, params, status, detail) -> None:
    result = top().simulate_get(TOP, params=params)
    assert (result.status_code, result.json) == (status, {"detail": detail})


@pytest.mark.parametrize(("params", "detail"), [
    ({"market": "spot", "interval_s": "0.1"}, "interval_s must be a number in 0.2..30"),
    ({"market": "spot", "interval_s": "nan"}, "interval_s must be a number in 0.2..30"),
    ({"market": "spot", "max_events": "1001"}, "max_events must be an integer in 0..1000"),
    ({"market": "futures", "exchange": "okx"}, "unsupported exchange"),
])
def test_bad_stream_parameters(top, params, detail) -> None:
    result = top().simulate_get(STREAM, params=params)
    assert result.json == {"detail": detail}
    assert result.status_code == (400 if detail == "unsupported exchange" else 422)


def test_cache_and_ticker_ttl(top, replay) -> None:
    client = top(TRADE_CANVAS_BINANCE_TICKER_TTL_S="1")
    assert client.simulate_get(TOP, params={"market": "spot"}).json["cached"] is False
    assert client.simulate_get(TOP, params={"market": "spot", "limit": "5"}).json["cached"] is True
    assert upstream(replay) == (1, 1)
    time.sleep(1.05)
    assert client.simulate_get(TOP, params={"market": "spot"}).json["cached"] is False
    assert upstream(replay) == (1, 2)  # exchangeInfo still within its hour


def test_concurrent_cold_requests_share_one_upstream_call(top, replay) -> None:
    client = top()
    results: list[int] = []

    def ask(market: str) -> None:
        results.append(client.simulate_get(TOP, params={"market": market}).status_code)

    threads = [threading.Thread(target=ask, args=("spot" if i % 2 else "futures",)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 40
    assert upstream(replay, "spot") == (1, 1)
    assert upstream(replay, "futures") == (1, 1)


def test_stale_cache_is_served_when_upstream_fails(top, replay) -> None:
    client = top(TRADE_CANVAS_BINANCE_TICKER_TTL_S="1")
    fresh = client.simulate_get(TOP, params={"market": "spot"}).json
    time.sleep(1.05)
    replay.post("/_replay/faults", {"rest": {"status": 503, "count": 10}})
    stale = client.simulate_get(TOP, params={"market": "spot"})
    assert stale.status_code == 200
    assert stale.json["stale"] is True and stale.json["cached"] is True
    assert "HTTP 503" in stale.json["upstream_error"]
    assert stale.json["items"] == fresh["items"]


def test_no_cache_and_upstream_down_is_502(top, replay) -> None:
    replay.post("/_replay/faults", {"rest": {"status": 500, "count": 2}})
    result = top().simulate_get(TOP, params={"market": "futures"})
    assert result.status_code == 502
    assert result.json["detail"].startswith("upstream_error:")
    assert "HTTP 500" in result.json["detail"]


def test_force_bypasses_caches_and_is_rate_limited(top, replay) -> None:
    client = top()
    client.simulate_get(TOP, params={"market": "spot"})
    forced = client.simulate_get(TOP, params={"market": "spot", "force": "1"})
    assert forced.status_code == 200 and forced.json["cached"] is False
    assert upstream(replay) == (2, 2)
    again = client.simulate_get(TOP, params={"market": "spot", "force": "true"})
    assert (again.status_code, again.json) == (429, {"detail": "rate_limited"})
    assert client.simulate_get(TOP, params={"market": "futures", "force": "1"}).status_code == 200
    assert client.simulate_get(TOP, params={"market": "spot"}).json["cached"] is True


# -- the stream


def test_stream_first_event_at_once(top) -> None:
    result = top().simulate_get(STREAM, params={"market": "spot", "limit": "3", "max_events": "1"})
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"
    head, event, data = result.text.strip().split("\n")
    payload = orjson.loads(data.removeprefix("data: "))
    assert event == "event: top_markets" and head == f"id: {payload['generated_at_ms']}"
    assert len(payload["items"]) == 3 and data.removeprefix("data: ") == orjson.dumps(
        payload, option=orjson.OPT_SORT_KEYS).decode()


def test_stream_error_event_without_cache(top, replay) -> None:
    replay.post("/_replay/faults", {"rest": {"status": 502, "count": 2}})
    result = top().simulate_get(STREAM, params={"market": "spot", "max_events": "1"})
    lines = result.text.strip().split("\n")
    assert lines[0] == "event: error"
    error = orjson.loads(lines[1].removeprefix("data: "))
    assert error["type"] == "error" and error["message"].startswith("upstream_error:")
    assert isinstance(error["at_ms"], int)


# -- pure pieces of the SSE body


def test_format_event_and_ping() -> None:
    assert format_event(StreamEvent("top_markets", 7, b'{"a":1}')) == b'id: 7\nevent: top_markets\ndata: {"a":1}\n\n'
    assert format_event(StreamEvent("error", None, b"{}")) == b"event: error\ndata: {}\n\n"
    assert format_ping(1700000000.9) == b": ping 1700000000\n\n"


def test_sse_events_pings_while_idle_and_stops_at_max_events() -> None:
    stream = MarketStream("spot", "USDT", 20, 0.2)
    events = sse_events(stream, 0.01, 2, wall=lambda: 5.0)
    assert next(events) == b": ping 5\n\n"
    stream.offer(StreamEvent("top_markets", 1, b"{}"))
    stream.offer(StreamEvent("top_markets", 2, b"{}"))
    chunks = list(events)
    assert chunks[-1].startswith(b"id: 2\n") and sum(c.startswith(b"id:") for c in chunks) == 2


def test_stream_queue_drops_a_slow_reader() -> None:
    stream = MarketStream("spot", "USDT", 20, 0.2, max_pending=2)
    event = StreamEvent("top_markets", 1, b"{}")
    assert stream.offer(event) and stream.offer(event)
    assert not stream.offer(event) and stream.closed
    assert [stream.take(0), stream.take(0), stream.take(0)] == [event, event, None]
    with pytest.raises(queue.Empty):
        stream.take(0)
