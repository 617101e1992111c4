"""Series ids and timeframes: parsing and bucket alignment (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

from trade_canvas.errors import InvalidInput

EpochSeconds = NewType("EpochSeconds", int)

_TIMEFRAME_RE = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A candle width such as ``1m`` or ``4h``; ``seconds`` is its length."""

    text: str
    seconds: int

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class SeriesId:
    """A parsed ``exchange:market:symbol:timeframe`` id; ``text`` is the canonical string."""

    exchange: str
    market: str
    symbol: str
    timeframe: Timeframe

    @property
    def text(self) -> str:
        return f"{self.exchange}:{self.market}:{self.symbol}:{self.timeframe.text}"

    def __str__(self) -> str:
        return self.text


def parse_timeframe(text: str) -> Timeframe:
    """Parse ``<positive int><m|h|d>`` into a Timeframe.

    Raises:
        InvalidInput: for anything else (``1w``, ``30s``, ``0m``, ``""``).
    """
    match = _TIMEFRAME_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(f"invalid timeframe: {text!r} (expected <n>m, <n>h or <n>d)")
    count, unit = int(match.group(1)), match.group(2)
    return Timeframe(text=f"{count}{unit}", seconds=count * _UNIT_SECONDS[unit])


def parse_series_id(text: object) -> SeriesId:
    """Parse a series id; the symbol is everything between market and timeframe.

    Symbols may contain ``:`` (``binance:futures:BTC/USDT:USDT:1h``). Components are stripped.

    Raises:
        InvalidInput: on fewer than four parts, an empty component or a bad timeframe.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("invalid series_id: must be a non-empty string")
    parts = [part.strip() for part in text.split(":")]
    if len(parts) < 4:
        raise InvalidInput("invalid series_id: must be '{exchange}:{market}:{symbol}:{timeframe}'")
    if any(not part for part in parts):
        raise InvalidInput("invalid series_id (empty component)")
    return SeriesId(
        exchange=parts[0],
        market=parts[1],
        symbol=":".join(parts[2:-1]),
        timeframe=parse_timeframe(parts[-1]),
    )


def align_time(t: int, timeframe: Timeframe) -> int:
    """Return the open time of the bucket that contains ``t``."""
    return t - t % timeframe.seconds


def expected_latest_closed_time(now: int, timeframe: Timeframe) -> int:
    """Return the open time of the newest fully closed candle at ``now`` (0 if none)."""
    aligned = align_time(now, timeframe)
    return aligned - timeframe.seconds if aligned >= timeframe.seconds else 0
