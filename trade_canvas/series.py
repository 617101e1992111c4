"""Series ids and timeframes: parsing and bucket alignment (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

from trade_canvas.errors import InvalidInput

EpochSeconds = NewType("EpochSeconds", int)

# The largest time any request may name: 9999-12-31T23:59:59Z. Far beyond any candle, within
# every store's 64-bit integers and exactly representable as a JSON double.
MAX_EPOCH_SECONDS = 253_402_300_799
MAX_SERIES_ID_LENGTH = 128
# Components are printable ASCII without blanks: no control characters reach a log line, a
# Postgres text column (which refuses NUL) or an exchange request.
_COMPONENT_RE = re.compile(r"[!-~]+")

_TIMEFRAME_RE = re.compile(r"^([1-9][0-9]{0,4})([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
# Weeks open on Monday 00:00 UTC (as Binance's 1w klines do); the unix epoch was a Thursday.
_UNIT_OFFSET = {"w": 4 * 86400}


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A candle width such as ``1m``, ``4h`` or ``1w``; ``seconds`` is its length.

    Candles open at ``offset + k * seconds`` (``offset`` is 0 except for weeks, which open on
    Monday).
    """

    text: str
    seconds: int
    offset: int = 0

    def is_aligned(self, t: int) -> bool:
        """Whether ``t`` is a candle open time of this timeframe."""
        return (t - self.offset) % self.seconds == 0

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
    """Parse ``<positive int><m|h|d|w>`` into a Timeframe.

    Raises:
        InvalidInput: for anything else (``1M``, ``30s``, ``0m``, ``""``).
    """
    match = _TIMEFRAME_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(f"invalid timeframe: {text!r} (expected <n>m, <n>h, <n>d or <n>w)")
    count, unit = int(match.group(1)), match.group(2)
    return Timeframe(
        text=f"{count}{unit}", seconds=count * _UNIT_SECONDS[unit], offset=_UNIT_OFFSET.get(unit, 0)
    )


def parse_series_id(text: object) -> SeriesId:
    """Parse a series id; the symbol is everything between market and timeframe.

    Symbols may contain ``:`` (``binance:futures:BTC/USDT:USDT:1h``). Components are stripped
    of surrounding blanks and must then be printable ASCII without blanks; the whole id is at
    most MAX_SERIES_ID_LENGTH characters.

    Raises:
        InvalidInput: on fewer than four parts, an empty component, a control, blank or
            non-ASCII character, an id that is too long, or a bad timeframe.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("invalid series_id: must be a non-empty string")
    if len(text) > MAX_SERIES_ID_LENGTH:
        raise InvalidInput(f"invalid series_id: longer than {MAX_SERIES_ID_LENGTH} characters")
    parts = [part.strip() for part in text.split(":")]
    if len(parts) < 4:
        raise InvalidInput("invalid series_id: must be '{exchange}:{market}:{symbol}:{timeframe}'")
    if any(not part for part in parts):
        raise InvalidInput("invalid series_id (empty component)")
    if any(_COMPONENT_RE.fullmatch(part) is None for part in parts):
        raise InvalidInput(
            "invalid series_id: only printable ASCII without blanks or control characters"
        )
    return SeriesId(
        exchange=parts[0],
        market=parts[1],
        symbol=":".join(parts[2:-1]),
        timeframe=parse_timeframe(parts[-1]),
    )


def align_time(t: int, timeframe: Timeframe) -> int:
    """Return the open time of the bucket that contains ``t``."""
    return t - (t - timeframe.offset) % timeframe.seconds


def expected_latest_closed_time(now: int, timeframe: Timeframe) -> int:
    """Return the open time of the newest fully closed candle at ``now`` (0 if none)."""
    aligned = align_time(now, timeframe)
    return aligned - timeframe.seconds if aligned >= timeframe.seconds else 0
