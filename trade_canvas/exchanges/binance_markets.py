"""Binance's top-markets list: tradable symbols from exchangeInfo ranked by 24h ticker volume.

Pure like ``binance.py``, whose body decoding and market limits it uses: exchangeInfo and
``ticker/24hr`` bodies in, ``TopMarket`` items (the ``GET /api/market/top_markets`` shape) out.
Parsing raises ``UpstreamError``, because a bad body is a failed request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from trade_canvas.errors import UpstreamError
from trade_canvas.exchanges.binance import (
    FUTURES_LIMITS,
    decode_json_body,
    limits_for,
    series_symbol,
)


@dataclass(frozen=True, slots=True)
class MarketInfo:
    """A tradable symbol from exchangeInfo."""

    symbol_id: str
    base_asset: str
    quote_asset: str


@dataclass(frozen=True, slots=True)
class TopMarket:
    """One item of ``GET /api/market/top_markets``."""

    exchange: str
    market: str
    symbol: str
    symbol_id: str
    base_asset: str
    quote_asset: str
    last_price: float | None
    quote_volume: float
    price_change_percent: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return the API item shape, keys as in the original."""
        return {
            "exchange": self.exchange,
            "market": self.market,
            "symbol": self.symbol,
            "symbol_id": self.symbol_id,
            "base_asset": self.base_asset,
            "quote_asset": self.quote_asset,
            "last_price": self.last_price,
            "quote_volume": self.quote_volume,
            "price_change_percent": self.price_change_percent,
        }


def parse_exchange_info(body: bytes | str | object, market: str) -> dict[str, MarketInfo]:
    """Return the tradable symbols: status TRADING, and for futures perpetual (or no type).

    Sample: ``{"symbols":[{"symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC",
    "quoteAsset":"USDT","contractType":"PERPETUAL",...}]}``

    Raises:
        UpstreamError: invalid JSON or no ``symbols`` list.
    """
    futures = limits_for(market) is FUTURES_LIMITS
    data = decode_json_body(body)
    symbols = data.get("symbols") if isinstance(data, dict) else None
    if not isinstance(symbols, list):
        raise UpstreamError("binance exchangeInfo has no 'symbols' list")
    result: dict[str, MarketInfo] = {}
    for item in symbols:
        info = _tradable(item, futures)
        if info is not None:
            result[info.symbol_id] = info
    return result


def _tradable(item: object, futures: bool) -> MarketInfo | None:
    if not isinstance(item, dict) or item.get("status") != "TRADING":
        return None
    if futures and item.get("contractType") not in (None, "", "PERPETUAL"):
        return None
    names = [item.get(key) for key in ("symbol", "baseAsset", "quoteAsset")]
    if not all(isinstance(name, str) and name for name in names):
        return None
    symbol_id, base, quote = (str(name) for name in names)
    return MarketInfo(symbol_id, base, quote)


def _float_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def build_top_markets(
    exchange_info: bytes | str | object,
    tickers: bytes | str | object,
    market: str,
    quote_asset: str = "USDT",
    limit: int = 20,
) -> list[TopMarket]:
    """Rank tradable symbols quoted in ``quote_asset`` by 24h quote volume, largest first.

    Tickers without a parsable ``quoteVolume`` are left out; unparsable ``lastPrice`` or
    ``priceChangePercent`` become None. Returns at most ``max(1, limit)`` items.

    Raises:
        UpstreamError: invalid JSON, no symbols list, or tickers that are not a list.
    """
    infos = parse_exchange_info(exchange_info, market)
    return rank_top_markets(infos, parse_ticker_rows(tickers), market, quote_asset, limit)


def parse_ticker_rows(body: bytes | str | object) -> list[object]:
    """Return the rows of a ``GET ticker/24hr`` (all symbols) body, undecoded beyond JSON.

    Sample: ``[{"symbol":"BTCUSDT","lastPrice":"60719.27","priceChangePercent":"1.23",
    "quoteVolume":"1313200001.5",...}, ...]``

    Raises:
        UpstreamError: invalid JSON, or a body that is not an array.
    """
    rows = decode_json_body(body)
    if not isinstance(rows, list):
        raise UpstreamError("binance ticker/24hr response is not an array")
    return rows


def rank_top_markets(
    infos: Mapping[str, MarketInfo],
    rows: Sequence[object],
    market: str,
    quote_asset: str = "USDT",
    limit: int = 20,
) -> list[TopMarket]:
    """Rank already parsed symbols and ticker rows (see ``build_top_markets``)."""
    quote = (quote_asset or "").strip().upper() or "USDT"
    items = [item for row in rows if (item := _top_market(row, infos, market, quote))]
    items.sort(key=lambda item: item.quote_volume, reverse=True)
    return items[: max(1, limit)]


def _top_market(
    row: object, infos: Mapping[str, MarketInfo], market: str, quote: str
) -> TopMarket | None:
    if not isinstance(row, dict):
        return None
    symbol_id = row.get("symbol")
    info = infos.get(symbol_id) if isinstance(symbol_id, str) else None
    if info is None or info.quote_asset.upper() != quote:
        return None
    quote_volume = _float_or_none(row.get("quoteVolume"))
    if quote_volume is None:
        return None
    return TopMarket(
        exchange="binance",
        market=market,
        symbol=series_symbol(info.base_asset, info.quote_asset),
        symbol_id=info.symbol_id,
        base_asset=info.base_asset,
        quote_asset=info.quote_asset,
        last_price=_float_or_none(row.get("lastPrice")),
        quote_volume=quote_volume,
        price_change_percent=_float_or_none(row.get("priceChangePercent")),
    )
