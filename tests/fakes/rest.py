"""A fake of BinanceRest's klines over a fixed list of open times, recording each request."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from trade_canvas.binance_rest import BinanceRest
from trade_canvas.candles import Candle
from trade_canvas.exchanges import binance


def flat(t: int) -> Candle:
    """Return a valid candle opening at ``t``."""
    return Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0)


class KlinesRest(BinanceRest):
    """Klines from ``start_ms`` on, at most ``limit`` rows, up to ``end_ms`` (Binance's paging).

    The real client's paging and retries (``klines_range``) run over this ``klines``.
    """

    def __init__(self, times: list[int], interval: str) -> None:
        super().__init__({})
        self.times = times
        self.interval = interval
        self.calls: list[tuple[int, int]] = []  # (start, end) in seconds

    def klines(self, market: str, symbol: str, interval: str, start_ms: int | None = None,
               end_ms: int | None = None, limit: int | None = None) -> list[Candle]:
        assert start_ms is not None and end_ms is not None and limit is not None
        assert interval == self.interval
        self.calls.append((start_ms // 1000, end_ms // 1000))
        return [flat(t) for t in self.times if start_ms <= t * 1000 <= end_ms][:limit]


def small_pages(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Make every market's klines page ``size`` rows long for one test."""
    real = binance.limits_for

    def limits(market: Any) -> binance.ConnectionLimits:
        return dataclasses.replace(real(market), klines_max_limit=size)

    monkeypatch.setattr(binance, "limits_for", limits)
