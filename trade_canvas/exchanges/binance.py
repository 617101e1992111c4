"""Binance spot and USD-M futures wire codec (pure: no I/O, no clock reads).

Covers what the backend needs from Binance's public market data: symbol and stream naming,
kline intervals, WebSocket frame decoding (raw and combined streams), SUBSCRIBE/UNSUBSCRIBE
method frames, REST kline requests and responses, error bodies, request weights and connection
limits. The top-markets list built from exchangeInfo + ticker/24hr bodies is in
``binance_markets.py``.

Decoding frames never raises: the feed must survive whatever arrives on the socket, so garbage
becomes a ``MalformedFrame`` event. Parsing REST bodies raises ``UpstreamError``, because a bad
body is a failed request the caller retries or reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence
from urllib.parse import urlencode

import orjson

from trade_canvas.candles import Candle
from trade_canvas.errors import InvalidInput, UpstreamError
from trade_canvas.series import SeriesId, Timeframe

Market = Literal["spot", "futures"]
MARKETS: tuple[Market, ...] = ("spot", "futures")

#: Every kline interval Binance offers, in its own spelling (``1M`` is a calendar month).
KLINE_INTERVALS: tuple[str, ...] = (
    "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
)

#: Fixed interval widths in milliseconds; ``1M`` has none (months differ in length).
INTERVAL_MS: dict[str, int] = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000,
}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Binance's documented limits for one market's public REST and WebSocket endpoints."""

    rest_base_url: str
    ws_base_url: str
    klines_path: str
    exchange_info_path: str
    ticker_24hr_path: str
    klines_max_limit: int
    klines_default_limit: int
    request_weight_per_minute: int
    streams_per_connection: int
    incoming_messages_per_second: int
    connections_per_5_minutes_per_ip: int
    connection_lifetime_s: int
    server_ping_interval_s: int
    pong_timeout_s: int


SPOT_LIMITS = ConnectionLimits(
    rest_base_url="https://api.binance.com",
    ws_base_url="wss://stream.binance.com:9443",
    klines_path="/api/v3/klines",
    exchange_info_path="/api/v3/exchangeInfo",
    ticker_24hr_path="/api/v3/ticker/24hr",
    klines_max_limit=1000,
    klines_default_limit=500,
    request_weight_per_minute=6000,
    streams_per_connection=1024,
    incoming_messages_per_second=5,
    connections_per_5_minutes_per_ip=300,
    connection_lifetime_s=24 * 3600,
    server_ping_interval_s=20,
    pong_timeout_s=60,
)

FUTURES_LIMITS = ConnectionLimits(
    rest_base_url="https://fapi.binance.com",
    ws_base_url="wss://fstream.binance.com",
    klines_path="/fapi/v1/klines",
    exchange_info_path="/fapi/v1/exchangeInfo",
    ticker_24hr_path="/fapi/v1/ticker/24hr",
    klines_max_limit=1500,
    klines_default_limit=500,
    request_weight_per_minute=2400,
    streams_per_connection=200,
    incoming_messages_per_second=10,
    connections_per_5_minutes_per_ip=300,
    connection_lifetime_s=24 * 3600,
    server_ping_interval_s=180,
    pong_timeout_s=600,
)


def limits_for(market: str) -> ConnectionLimits:
    """Return the limits of ``market`` (``spot`` or ``futures``).

    Raises:
        InvalidInput: for any other market.
    """
    if market == "spot":
        return SPOT_LIMITS
    if market == "futures":
        return FUTURES_LIMITS
    raise InvalidInput(f"unsupported binance market: {market!r} (expected spot or futures)")


# --- symbols, intervals, streams -------------------------------------------------------------


def to_binance_symbol(symbol: str) -> str:
    """Map ``BTC/USDT`` or ``BTC/USDT:USDT`` (futures settle suffix) to ``BTCUSDT``.

    Raises:
        InvalidInput: when the symbol is not ``BASE/QUOTE[:SETTLE]``.
    """
    head = symbol.strip().split(":", 1)[0] if isinstance(symbol, str) else ""
    base, slash, quote = head.partition("/")
    base, quote = base.replace("-", "").strip(), quote.replace("-", "").strip()
    if not slash or not base or not quote or "/" in quote:
        raise InvalidInput(f"invalid symbol {symbol!r}: expected BASE/QUOTE, e.g. BTC/USDT")
    return f"{base}{quote}".upper()


def series_symbol(base_asset: str, quote_asset: str) -> str:
    """Return our series symbol (``BASE/QUOTE``) for Binance's base and quote assets."""
    return f"{base_asset.upper()}/{quote_asset.upper()}"


def check_interval(timeframe: Timeframe | str) -> str:
    """Return ``timeframe`` as a Binance kline interval.

    Raises:
        InvalidInput: when Binance offers no such interval (``2m``, ``10h``, ``2d``).
    """
    text = timeframe.text if isinstance(timeframe, Timeframe) else str(timeframe).strip()
    if text not in KLINE_INTERVALS:
        raise InvalidInput(
            f"timeframe {text!r} is not offered by Binance; "
            f"kline intervals are {', '.join(KLINE_INTERVALS)}"
        )
    return text


def stream_name(binance_symbol: str, interval: str) -> str:
    """Return the kline stream name, e.g. ``btcusdt@kline_1m``.

    Raises:
        InvalidInput: for an interval Binance does not offer or an empty symbol.
    """
    if not binance_symbol.strip():
        raise InvalidInput("binance symbol must not be empty")
    return f"{binance_symbol.strip().lower()}@kline_{check_interval(interval)}"


def series_stream(series: SeriesId) -> str:
    """Return the kline stream name for a ``binance:spot|futures:...`` series.

    Raises:
        InvalidInput: for another exchange or market, a bad symbol or a non-Binance interval.
    """
    if series.exchange != "binance":
        raise InvalidInput(f"not a binance series: {series.text}")
    limits_for(series.market)
    return stream_name(to_binance_symbol(series.symbol), series.timeframe.text)


def stream_url(market: str, streams: Sequence[str], ws_base_url: str | None = None) -> str:
    """Return the URL of a raw (one stream) or combined (several) stream connection.

    Args:
        market: ``spot`` or ``futures``.
        streams: stream names; one gives ``/ws/<name>``, more give ``/stream?streams=a/b``.
        ws_base_url: overrides Binance's host (the replay exchange, a proxy).
    """
    base = (ws_base_url or limits_for(market).ws_base_url).rstrip("/")
    if len(streams) == 1:
        return f"{base}/ws/{streams[0]}"
    return f"{base}/stream?streams={'/'.join(streams)}"


# --- WebSocket events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KlineUpdate:
    """One kline frame: the candle so far (``closed`` False) or final (``closed`` True).

    ``stream`` is the combined-stream name, None on a raw stream.
    """

    symbol: str
    interval: str
    candle: Candle
    closed: bool
    event_time_ms: int
    close_time_ms: int
    stream: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionAck:
    """A reply to a method frame: ``result`` is None, or the list for LIST_SUBSCRIPTIONS."""

    request_id: int | None
    result: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """An error reply, ``{"error":{"code":2,"msg":"..."},"id":1}`` or the flat form."""

    code: int | None
    msg: str
    request_id: int | None


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """Well-formed JSON that is not a kline or a reply (aggTrade, depthUpdate, bookTicker...)."""

    event_type: str | None
    stream: str | None


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    """Garbage: invalid JSON, or a kline or reply with missing or mistyped fields."""

    reason: str
    raw: str


Event = KlineUpdate | SubscriptionAck | ErrorFrame | UnknownFrame | MalformedFrame


class _Bad(Exception):
    pass


def _text(raw: str | bytes | bytearray) -> str:
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw[:200]).decode("utf-8", "replace")
    return raw[:200]


def decode_frame(raw: str | bytes | bytearray) -> Event:
    """Decode one WebSocket text frame from a raw or combined stream; never raises.

    Sample (combined; a raw stream sends only the ``data`` object)::

        {"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1638747660000,"s":"BTCUSDT",
         "k":{"t":1638747600000,"T":1638747659999,"s":"BTCUSDT","i":"1m","o":"49100.1",
              "c":"49120.0","h":"49130.5","l":"49090.0","v":"12.5","x":false,...}}}
    """
    try:
        message = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return MalformedFrame("invalid JSON", _text(raw))
    try:
        return _decode_message(message)
    except _Bad as exc:
        return MalformedFrame(str(exc), _text(raw))


def _decode_message(message: Any) -> Event:
    if not isinstance(message, dict):
        raise _Bad("frame is not a JSON object")
    if "stream" in message or "data" in message:
        stream, data = message.get("stream"), message.get("data")
        if not isinstance(stream, str) or not isinstance(data, dict):
            raise _Bad("combined frame needs a string 'stream' and an object 'data'")
        return _decode_event(data, stream)
    if "id" in message and ("result" in message or "error" in message):
        return _decode_reply(message)
    if "code" in message and "msg" in message:
        return ErrorFrame(_int_or_none(message["code"]), str(message["msg"]), _request_id(message))
    return _decode_event(message, None)


def _decode_event(data: dict[str, Any], stream: str | None) -> Event:
    event_type = data.get("e")
    if event_type != "kline":
        return UnknownFrame(event_type if isinstance(event_type, str) else None, stream)
    kline = data.get("k")
    if not isinstance(kline, dict):
        raise _Bad("kline frame without a 'k' object")
    open_ms = _field_int(kline, "t")
    if open_ms <= 0:
        raise _Bad("kline open time 'k.t' must be > 0")
    closed = kline.get("x")
    if not isinstance(closed, bool):
        raise _Bad("kline 'k.x' must be a boolean")
    candle = Candle(open_ms // 1000, *(_field_float(kline, name) for name in "ohlcv"))
    return KlineUpdate(
        symbol=_field_str(kline, "s"),
        interval=_field_str(kline, "i"),
        candle=candle,
        closed=closed,
        event_time_ms=_field_int(data, "E"),
        close_time_ms=_field_int(kline, "T"),
        stream=stream,
    )


def _decode_reply(message: dict[str, Any]) -> Event:
    request_id = _request_id(message)
    error = message.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise _Bad("reply 'error' must be an object")
        return ErrorFrame(_int_or_none(error.get("code")), str(error.get("msg", "")), request_id)
    result = message.get("result")
    if result is None:
        return SubscriptionAck(request_id, None)
    if isinstance(result, list) and all(isinstance(item, str) for item in result):
        return SubscriptionAck(request_id, tuple(result))
    raise _Bad("reply 'result' must be null or a list of stream names")


def _request_id(message: Mapping[str, Any]) -> int | None:
    return _int_or_none(message.get("id"))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _field_int(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(f"field {name!r} must be an integer")
    return value


def _field_str(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _Bad(f"field {name!r} must be a non-empty string")
    return value


def _field_float(data: Mapping[str, Any], name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"field {name!r} must be a decimal string")
    try:
        number = float(value)
    except ValueError:
        raise _Bad(f"field {name!r} must be a decimal string") from None
    if not math.isfinite(number):
        raise _Bad(f"field {name!r} must be finite")
    return number


# --- method frames ---------------------------------------------------------------------------


def _method_frame(method: str, params: Sequence[str] | None, request_id: int) -> str:
    if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id < 0:
        raise InvalidInput("request id must be an unsigned integer")
    body: dict[str, Any] = {"method": method}
    if params is not None:
        if not params or not all(isinstance(p, str) and p for p in params):
            raise InvalidInput(f"{method} needs at least one stream name")
        body["params"] = list(params)
    body["id"] = request_id
    return orjson.dumps(body).decode()


def subscribe_frame(streams: Sequence[str], request_id: int) -> str:
    """Build ``{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}``.

    Raises:
        InvalidInput: no streams, or a request id that is not an unsigned integer.
    """
    return _method_frame("SUBSCRIBE", streams, request_id)


def unsubscribe_frame(streams: Sequence[str], request_id: int) -> str:
    """Build ``{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m"],"id":2}``.

    Raises:
        InvalidInput: no streams, or a request id that is not an unsigned integer.
    """
    return _method_frame("UNSUBSCRIBE", streams, request_id)


def list_subscriptions_frame(request_id: int) -> str:
    """Build ``{"method":"LIST_SUBSCRIPTIONS","id":3}``."""
    return _method_frame("LIST_SUBSCRIPTIONS", None, request_id)


# --- REST ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestRequest:
    """A GET request relative to the market's REST base URL, with its request weight."""

    path: str
    params: tuple[tuple[str, str], ...]
    weight: int

    @property
    def path_with_query(self) -> str:
        """Return ``path?query`` (just the path when there are no parameters)."""
        return f"{self.path}?{urlencode(self.params)}" if self.params else self.path


@dataclass(frozen=True, slots=True)
class BinanceError:
    """A Binance REST error body ``{"code":-1121,"msg":"Invalid symbol."}``."""

    code: int
    msg: str


def klines_weight(market: str, limit: int) -> int:
    """Return the request weight of a klines call (spot: 2; futures: 1/2/5/10 by ``limit``)."""
    if limits_for(market) is SPOT_LIMITS:
        return 2
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    return 5 if limit <= 1000 else 10


def klines_request(
    market: str,
    binance_symbol: str,
    interval: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
    limit: int | None = None,
) -> RestRequest:
    """Build ``GET /api/v3/klines`` (spot) or ``/fapi/v1/klines`` (futures).

    ``start_ms``/``end_ms`` are inclusive candle open times; ``limit`` defaults to 500.

    Raises:
        InvalidInput: unknown market or interval, empty symbol, limit outside 1..max
            (1000 spot, 1500 futures), negative times or start after end.
    """
    limits = limits_for(market)
    limit = limits.klines_default_limit if limit is None else limit
    if not 1 <= limit <= limits.klines_max_limit:
        raise InvalidInput(f"klines limit must be 1..{limits.klines_max_limit}, got {limit}")
    if not binance_symbol.strip():
        raise InvalidInput("binance symbol must not be empty")
    if any(t is not None and t < 0 for t in (start_ms, end_ms)):
        raise InvalidInput("klines startTime/endTime must be >= 0")
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise InvalidInput("klines startTime must not be after endTime")
    params = [("symbol", binance_symbol.strip().upper()), ("interval", check_interval(interval))]
    params += [(name, str(t)) for name, t in (("startTime", start_ms), ("endTime", end_ms)) if t is not None]
    params.append(("limit", str(limit)))
    return RestRequest(limits.klines_path, tuple(params), klines_weight(market, limit))


def exchange_info_request(market: str) -> RestRequest:
    """Build ``GET exchangeInfo`` (weight 20 spot, 1 futures)."""
    limits = limits_for(market)
    return RestRequest(limits.exchange_info_path, (), 20 if limits is SPOT_LIMITS else 1)


def ticker_24hr_request(market: str, binance_symbol: str | None = None) -> RestRequest:
    """Build ``GET ticker/24hr`` for one symbol or all (weight 2/80 spot, 1/40 futures)."""
    limits = limits_for(market)
    spot = limits is SPOT_LIMITS
    if binance_symbol is None:
        return RestRequest(limits.ticker_24hr_path, (), 80 if spot else 40)
    params = (("symbol", binance_symbol.strip().upper()),)
    return RestRequest(limits.ticker_24hr_path, params, 2 if spot else 1)


def parse_kline_row(row: object) -> Candle:
    """Parse one REST kline row ``[open_ms,"o","h","l","c","v",close_ms,"q",n,"V","Q","0"]``.

    Raises:
        UpstreamError: when the row is not such an array.
    """
    if not isinstance(row, list) or len(row) < 6:
        raise UpstreamError("binance kline row must be an array of at least 6 items")
    try:
        fields = dict(zip("tohlcv", row[:6]))
        open_ms = _field_int(fields, "t")
        if open_ms < 0:
            raise _Bad("kline open time must be >= 0")
        return Candle(open_ms // 1000, *(_field_float(fields, name) for name in "ohlcv"))
    except _Bad as exc:
        raise UpstreamError(f"bad binance kline row: {exc}") from None


def parse_klines(body: bytes | str | object) -> list[Candle]:
    """Parse a klines response body (bytes, text or decoded JSON) into candles, in order.

    Sample: ``[[1634943780000,"60685.22","60729.84","60670.90","60719.27","21.63",
    1634943839999,"1313200.01",617,"12.28","745719.41","0"], ...]``

    Raises:
        UpstreamError: invalid JSON, an error body, or a malformed row.
    """
    data = decode_json_body(body)
    if not isinstance(data, list):
        error = parse_error_body(data)
        detail = f"{error.code} {error.msg}" if error else "not an array"
        raise UpstreamError(f"binance klines response: {detail}")
    return [parse_kline_row(row) for row in data]


def parse_error_body(body: bytes | str | object) -> BinanceError | None:
    """Return the error of a body like ``{"code":-1121,"msg":"Invalid symbol."}``, else None."""
    try:
        data = decode_json_body(body)
    except UpstreamError:
        return None
    if not isinstance(data, dict):
        return None
    code, msg = _int_or_none(data.get("code")), data.get("msg")
    if code is None or not isinstance(msg, str):
        return None
    return BinanceError(code, msg)


def decode_json_body(body: bytes | str | object) -> object:
    """Return ``body`` decoded when it is JSON bytes or text, else ``body`` itself.

    Raises:
        UpstreamError: bytes or text that are not valid JSON.
    """
    if not isinstance(body, (bytes, bytearray, str)):
        return body
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("binance response is not valid JSON") from None


def followable(series: SeriesId) -> bool:
    """Whether a live feed exists for the series (only Binance spot and USD-M futures).

    Raises:
        InvalidInput: a Binance series whose market or timeframe Binance does not offer.
    """
    if series.exchange != "binance":
        return False
    limits_for(series.market)
    check_interval(series.timeframe)
    to_binance_symbol(series.symbol)
    return True
