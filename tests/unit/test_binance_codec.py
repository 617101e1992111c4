"""The Binance wire codec against recorded frames and bodies (tests/fakes/recordings)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from trade_canvas.candles import Candle
from trade_canvas.errors import InvalidInput, UpstreamError
from trade_canvas.exchanges import binance
from trade_canvas.exchanges.binance import (
    ErrorFrame,
    KlineUpdate,
    MalformedFrame,
    SubscriptionAck,
    UnknownFrame,
)
from trade_canvas.replay.faults import GARBAGE_FRAMES
from trade_canvas.series import parse_series_id, parse_timeframe

RECORDINGS = Path(__file__).resolve().parents[1] / "fakes" / "recordings"
SESSIONS = ("spot_combined_stream_2021-10-12.jsonl", "usdm_combined_stream_2021-07-22.klines.jsonl")


def session_messages(name: str) -> list[dict[str, Any]]:
    lines = (RECORDINGS / name).read_text().splitlines()
    return [json.loads(line)["msg"] for line in lines[1:]]


def kline_messages(name: str) -> list[dict[str, Any]]:
    return [m for m in session_messages(name) if m["data"].get("e") == "kline"]


# --- symbols, intervals, streams -------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [("BTC/USDT", "BTCUSDT"), ("BTC/USDT:USDT", "BTCUSDT"), (" eth/btc ", "ETHBTC"),
     ("1000SHIB/USDT", "1000SHIBUSDT"), ("BTC-X/USDT", "BTCXUSDT")],
)
def test_to_binance_symbol(symbol: str, expected: str) -> None:
    assert binance.to_binance_symbol(symbol) == expected


@pytest.mark.parametrize("symbol", ["BTCUSDT", "", "/USDT", "BTC/", "A/B/C", ":USDT"])
def test_to_binance_symbol_rejects(symbol: str) -> None:
    with pytest.raises(InvalidInput, match="BASE/QUOTE"):
        binance.to_binance_symbol(symbol)


def test_series_symbol() -> None:
    assert binance.series_symbol("btc", "usdt") == "BTC/USDT"


@pytest.mark.parametrize("interval", binance.KLINE_INTERVALS)
def test_every_binance_interval_passes(interval: str) -> None:
    assert binance.check_interval(interval) == interval


def test_interval_accepts_timeframe() -> None:
    assert binance.check_interval(parse_timeframe("4h")) == "4h"


@pytest.mark.parametrize("text", ["2m", "10h", "2d", "45m", "1s", "1W", ""])
def test_interval_rejects_what_binance_lacks(text: str) -> None:
    with pytest.raises(InvalidInput, match="not offered by Binance"):
        binance.check_interval(text)


def test_stream_names_and_urls() -> None:
    assert binance.stream_name("BTCUSDT", "1m") == "btcusdt@kline_1m"
    series = parse_series_id("binance:futures:BTC/USDT:USDT:1h")
    assert binance.series_stream(series) == "btcusdt@kline_1h"
    assert binance.stream_url("spot", ["btcusdt@kline_1m"]) == (
        "wss://stream.binance.com:9443/ws/btcusdt@kline_1m"
    )
    assert binance.stream_url("futures", ["a@kline_1m", "b@kline_1m"], "ws://h:1/futures/") == (
        "ws://h:1/futures/stream?streams=a@kline_1m/b@kline_1m"
    )


@pytest.mark.parametrize(
    "series_id", ["okx:spot:BTC/USDT:1m", "binance:margin:BTC/USDT:1m", "binance:spot:BTC/USDT:2m"]
)
def test_series_stream_rejects(series_id: str) -> None:
    with pytest.raises(InvalidInput):
        binance.series_stream(parse_series_id(series_id))


def test_limits() -> None:
    assert binance.limits_for("spot").streams_per_connection == 1024
    assert binance.limits_for("futures").streams_per_connection == 200
    assert binance.SPOT_LIMITS.incoming_messages_per_second == 5
    assert binance.FUTURES_LIMITS.incoming_messages_per_second == 10
    assert (binance.SPOT_LIMITS.klines_max_limit, binance.FUTURES_LIMITS.klines_max_limit) == (1000, 1500)
    with pytest.raises(InvalidInput):
        binance.limits_for("options")


# --- recorded combined-stream sessions -------------------------------------------------------


@pytest.mark.parametrize("name", SESSIONS)
def test_every_recorded_kline_frame_decodes(name: str) -> None:
    messages = kline_messages(name)
    assert messages
    for message in messages:
        event = binance.decode_frame(json.dumps(message))
        kline = message["data"]["k"]
        assert isinstance(event, KlineUpdate), event
        assert event.stream == message["stream"]
        assert (event.symbol, event.interval) == (message["data"]["s"], "1m")
        assert event.closed is kline["x"]
        assert event.event_time_ms == message["data"]["E"]
        assert event.close_time_ms == kline["T"]
        assert event.candle == Candle(
            kline["t"] // 1000, float(kline["o"]), float(kline["h"]), float(kline["l"]),
            float(kline["c"]), float(kline["v"]),
        )


@pytest.mark.parametrize("name", SESSIONS)
def test_other_recorded_frames_are_unknown_not_malformed(name: str) -> None:
    others = [m for m in session_messages(name) if m["data"].get("e") != "kline"]
    assert others
    for message in others:
        event = binance.decode_frame(json.dumps(message).encode())
        assert isinstance(event, UnknownFrame)
        assert event.stream == message["stream"]
        # spot bookTicker frames carry no "e" field
        assert event.event_type == message["data"].get("e")
        assert event.event_type in ("aggTrade", "depthUpdate", "bookTicker", None)


@pytest.mark.parametrize("name", SESSIONS)
def test_recordings_have_exactly_one_closed_frame_per_finished_candle(name: str) -> None:
    frames: dict[tuple[str, int], list[KlineUpdate]] = defaultdict(list)
    for message in kline_messages(name):
        event = binance.decode_frame(json.dumps(message))
        assert isinstance(event, KlineUpdate)
        frames[(event.symbol, event.candle.candle_time)].append(event)
    finished = 0
    for (symbol, candle_time), updates in frames.items():
        closed = [u for u in updates if u.closed]
        assert len(closed) <= 1
        if any(s == symbol and t > candle_time for s, t in frames):
            finished += 1
            assert len(closed) == 1, (symbol, candle_time)
            assert updates[-1].closed  # nothing for a candle after its closed frame
    if "usdm" in name:
        assert finished == 4


def test_raw_stream_frame_has_no_stream() -> None:
    data = kline_messages(SESSIONS[1])[0]["data"]
    event = binance.decode_frame(json.dumps(data))
    assert isinstance(event, KlineUpdate)
    assert event.stream is None


# --- replies and garbage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"result":null,"id":1}', SubscriptionAck(1, None)),
        ('{"result":["btcusdt@kline_1m"],"id":3}', SubscriptionAck(3, ("btcusdt@kline_1m",))),
        ('{"error":{"code":2,"msg":"Invalid request"},"id":7}', ErrorFrame(2, "Invalid request", 7)),
        ('{"error":{"code":3,"msg":"Invalid JSON"},"id":null}', ErrorFrame(3, "Invalid JSON", None)),
        ('{"code":1,"msg":"Invalid value type: expected Boolean"}',
         ErrorFrame(1, "Invalid value type: expected Boolean", None)),
        ('{"e":"aggTrade","s":"BTCUSDT"}', UnknownFrame("aggTrade", None)),
        ("{}", UnknownFrame(None, None)),
    ],
)
def test_replies(frame: str, expected: object) -> None:
    assert binance.decode_frame(frame) == expected


KLINE = {"t": 1, "T": 2, "s": "X", "i": "1m", "o": "1", "h": "1", "l": "1", "c": "1", "v": "1",
         "x": False}


def kline_frame(**changes: Any) -> str:
    return json.dumps({"e": "kline", "E": 5, "s": "X", "k": {**KLINE, **changes}})


@pytest.mark.parametrize(
    "raw",
    [b"", "", "not json", b"\xff\xfe", "[1,2]", "null", "42", '{"stream":1,"data":{}}',
     '{"stream":"a","data":[]}', '{"e":"kline","E":1}', '{"e":"kline","E":1,"k":[]}',
     '{"result":5,"id":1}', '{"error":"x","id":1}', '{"result":[1],"id":1}',
     kline_frame(t=0), kline_frame(t="1"), kline_frame(x="maybe"), kline_frame(o="abc"),
     kline_frame(o="NaN"), kline_frame(h=None), kline_frame(v=True), kline_frame(s=""),
     kline_frame(T=None), json.dumps({"e": "kline", "s": "X", "k": KLINE}), *GARBAGE_FRAMES],
)
def test_garbage_is_malformed_and_never_raises(raw: str | bytes) -> None:
    event = binance.decode_frame(raw)
    assert isinstance(event, MalformedFrame), event
    assert event.reason


# --- method frames ---------------------------------------------------------------------------


def test_method_frames() -> None:
    assert binance.subscribe_frame(["btcusdt@kline_1m"], 1) == (
        '{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}'
    )
    assert binance.unsubscribe_frame(["a@kline_1m", "b@kline_1m"], 2) == (
        '{"method":"UNSUBSCRIBE","params":["a@kline_1m","b@kline_1m"],"id":2}'
    )
    assert binance.list_subscriptions_frame(3) == '{"method":"LIST_SUBSCRIPTIONS","id":3}'


@pytest.mark.parametrize(("streams", "request_id"), [([], 1), ([""], 1), (["a@kline_1m"], -1),
                                                     (["a@kline_1m"], True)])
def test_method_frames_reject(streams: list[str], request_id: int) -> None:
    with pytest.raises(InvalidInput):
        binance.subscribe_frame(streams, request_id)


# --- REST ------------------------------------------------------------------------------------


def test_klines_requests() -> None:
    spot = binance.klines_request("spot", "btcusdt", "1m", 1_000, 2_000, 1000)
    assert spot.path == "/api/v3/klines"
    assert spot.params == (("symbol", "BTCUSDT"), ("interval", "1m"), ("startTime", "1000"),
                           ("endTime", "2000"), ("limit", "1000"))
    assert spot.path_with_query == (
        "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1000&endTime=2000&limit=1000"
    )
    assert spot.weight == 2
    futures = binance.klines_request("futures", "BTCUSDT", "1h", limit=1500)
    assert futures.path_with_query == "/fapi/v1/klines?symbol=BTCUSDT&interval=1h&limit=1500"
    assert futures.weight == 10
    assert binance.klines_request("spot", "BTCUSDT", "1d").params[-1] == ("limit", "500")


@pytest.mark.parametrize(
    ("market", "kwargs"),
    [("spot", {"limit": 1001}), ("futures", {"limit": 1501}), ("spot", {"limit": 0}),
     ("spot", {"start_ms": 5, "end_ms": 4}), ("spot", {"start_ms": -1}), ("options", {})],
)
def test_klines_request_rejects(market: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidInput):
        binance.klines_request(market, "BTCUSDT", "1m", **kwargs)


def test_klines_request_rejects_interval() -> None:
    with pytest.raises(InvalidInput, match="not offered"):
        binance.klines_request("spot", "BTCUSDT", "2m")


@pytest.mark.parametrize(
    ("market", "limit", "weight"),
    [("spot", 1, 2), ("spot", 1000, 2), ("futures", 99, 1), ("futures", 100, 2),
     ("futures", 499, 2), ("futures", 500, 5), ("futures", 1000, 5), ("futures", 1001, 10)],
)
def test_klines_weight(market: str, limit: int, weight: int) -> None:
    assert binance.klines_weight(market, limit) == weight


def test_other_request_weights() -> None:
    assert binance.exchange_info_request("spot") == binance.RestRequest("/api/v3/exchangeInfo", (), 20)
    assert binance.exchange_info_request("futures").weight == 1
    assert binance.ticker_24hr_request("spot").weight == 80
    assert binance.ticker_24hr_request("spot", "btcusdt").path_with_query == (
        "/api/v3/ticker/24hr?symbol=BTCUSDT"
    )
    assert binance.ticker_24hr_request("spot", "BTCUSDT").weight == 2
    assert binance.ticker_24hr_request("futures").weight == 40
    assert binance.ticker_24hr_request("futures", "BTCUSDT").path == "/fapi/v1/ticker/24hr"


def test_recorded_klines_body_parses_like_the_csv() -> None:
    candles = binance.parse_klines((RECORDINGS / "spot_klines_BTCUSDT_1m_2021-10-22.json").read_bytes())
    with open(RECORDINGS / "spot_BTCUSDT_1m_2021-10-22_rest_sample.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [c.candle_time for c in candles] == [int(r["open_time_ms"]) // 1000 for r in rows]
    assert [c.close for c in candles] == [float(r["close"]) for r in rows]
    assert candles[0] == Candle(1634943780, 60685.22, 60729.84, 60670.90, 60719.27, 21.63272)


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"code":-1121,"msg":"Invalid symbol."}', b"[[1]]", b'[[1,"a","1","1","1","1"]]',
     b'[["x","1","1","1","1","1"]]', b'[[-1,"1","1","1","1","1"]]', b"[5]"],
)
def test_bad_klines_bodies_raise(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        binance.parse_klines(body)


def test_klines_error_body_is_named() -> None:
    with pytest.raises(UpstreamError, match="-1121 Invalid symbol"):
        binance.parse_klines('{"code":-1121,"msg":"Invalid symbol."}')


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"code":-1121,"msg":"Invalid symbol."}', binance.BinanceError(-1121, "Invalid symbol.")),
     ('{"code":-1120,"msg":"Invalid interval."}', binance.BinanceError(-1120, "Invalid interval.")),
     ({"code": -1003, "msg": "Too many requests"}, binance.BinanceError(-1003, "Too many requests")),
     (b"<html>502</html>", None), (b"[]", None), (b'{"code":"x","msg":"y"}', None)],
)
def test_parse_error_body(body: object, expected: object) -> None:
    assert binance.parse_error_body(body) == expected
