"""Top-markets list from recorded exchangeInfo and ticker/24hr bodies (pure)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from trade_canvas.errors import UpstreamError
from trade_canvas.exchanges import binance, binance_markets

RECORDINGS = Path(__file__).resolve().parents[1] / "fakes" / "recordings"


def exchange_info(market: str) -> bytes:
    name = ("spot_exchangeInfo_2021-10-12" if market == "spot" else "usdm_exchangeInfo_2021-07-21")
    return (RECORDINGS / f"{name}.trimmed.json").read_bytes()


def tickers_for(body: bytes) -> list[dict[str, Any]]:
    sample = json.loads((RECORDINGS / "spot_ticker_24hr_BTCUSDT_2021-10-22.json").read_text())
    symbols = json.loads(body)["symbols"]
    return [{**sample, "symbol": s["symbol"], "quoteVolume": str(1000.0 + i)} for i, s in enumerate(symbols)]


def test_exchange_info_filters() -> None:
    spot = binance_markets.parse_exchange_info(exchange_info("spot"), "spot")
    raw = json.loads(exchange_info("spot"))["symbols"]
    assert set(spot) == {s["symbol"] for s in raw if s["status"] == "TRADING"}
    assert any(s["status"] == "BREAK" for s in raw)
    futures = binance_markets.parse_exchange_info(exchange_info("futures"), "futures")
    assert "BTCUSDT_210924" not in futures and "BTCSTUSDT" not in futures
    assert futures["BTCUSDT"] == binance_markets.MarketInfo("BTCUSDT", "BTC", "USDT")


@pytest.mark.parametrize("market", binance.MARKETS)
def test_top_markets_from_recorded_bodies(market: str) -> None:
    info = exchange_info(market)
    items = binance_markets.build_top_markets(info, json.dumps(tickers_for(info)), market, "usdt", 200)
    tradable = binance_markets.parse_exchange_info(info, market)
    assert items and all(item.symbol_id in tradable for item in items)
    assert all(item.quote_asset == "USDT" for item in items)
    volumes = [item.quote_volume for item in items]
    assert volumes == sorted(volumes, reverse=True)
    first = items[0].to_dict()
    assert list(first) == ["exchange", "market", "symbol", "symbol_id", "base_asset", "quote_asset",
                           "last_price", "quote_volume", "price_change_percent"]
    assert first["exchange"] == "binance" and first["market"] == market
    assert first["symbol"] == f"{first['base_asset']}/{first['quote_asset']}"
    assert first["last_price"] == 60755.18 and first["price_change_percent"] == -3.003


def test_top_markets_row_rules() -> None:
    info = {"symbols": [
        {"symbol": s, "status": "TRADING", "baseAsset": s[:-4], "quoteAsset": "USDT"}
        for s in ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
    ]}
    tickers = [
        {"symbol": "AAAUSDT", "quoteVolume": "10", "lastPrice": "x", "priceChangePercent": None},
        {"symbol": "BBBUSDT", "quoteVolume": "NaN", "lastPrice": "1"},
        {"symbol": "CCCUSDT", "quoteVolume": "30", "lastPrice": "2", "priceChangePercent": "1.5"},
        {"symbol": "DDDUSDT", "quoteVolume": "oops"},
        {"symbol": ["odd"], "quoteVolume": "50"}, "junk",
        {"symbol": "ZZZUSDT", "quoteVolume": "99"},
    ]
    items = binance_markets.build_top_markets(info, tickers, "spot", "", limit=0)
    assert [i.symbol_id for i in items] == ["CCCUSDT"]
    items = binance_markets.build_top_markets(info, tickers, "spot", "USDT", limit=5)
    assert [(i.symbol_id, i.last_price, i.price_change_percent) for i in items] == [
        ("CCCUSDT", 2.0, 1.5), ("AAAUSDT", None, None)]
    assert not math.isnan(items[0].quote_volume)
    assert binance_markets.build_top_markets(info, tickers, "spot", "BTC") == []


@pytest.mark.parametrize(("info", "tickers"), [(b"{}", b"[]"), (b"nope", b"[]"), (b'{"symbols":[]}', b"{}")])
def test_top_markets_bad_bodies(info: bytes, tickers: bytes) -> None:
    with pytest.raises(UpstreamError):
        binance_markets.build_top_markets(info, tickers, "spot")
