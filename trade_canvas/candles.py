"""Candles: the value type, ingest validation, de-duplication and gap detection (pure).

Prices and volumes are ``float`` everywhere: the wire format (JSON numbers), SQLite ``REAL`` and
Postgres ``DOUBLE PRECISION`` all hold IEEE doubles, so one type avoids silent conversions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from trade_canvas.errors import InvalidInput
from trade_canvas.series import Timeframe

FIELDS = ("candle_time", "open", "high", "low", "close", "volume")
PRICE_FIELDS = ("open", "high", "low", "close")

# Numeric strings are plain decimals in ASCII (Binance sends "36500.12000000"): no blanks, no
# underscores ("1_0" would read as 10), no other scripts' digits, no "nan"/"inf" spellings.
_DECIMAL_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER_RE = re.compile(r"-?[0-9]{1,20}")  # longer ones are beyond any time anyway


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV candle; ``candle_time`` is the open time in unix seconds."""

    candle_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    def to_dict(self) -> dict[str, Any]:
        """Return the wire shape used by HTTP and WebSocket."""
        return {
            "candle_time": self.candle_time,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
        }

    def to_row(self) -> tuple[int, float, float, float, float, float]:
        """Return the storage row (candle_time, open, high, low, close, volume)."""
        return (self.candle_time, self.open, self.high, self.low, self.close, self.volume)


def _number(raw: Mapping[str, Any], name: str) -> float:
    if name not in raw:
        raise InvalidInput(f"candle.{name} is required")
    value = raw[name]
    if isinstance(value, bool):
        raise InvalidInput(f"candle.{name} must be a number")
    if isinstance(value, str):
        if _DECIMAL_RE.fullmatch(value) is None:
            raise InvalidInput(f"candle.{name} must be a number (a plain decimal string)")
        value = float(value)
    if not isinstance(value, (int, float)):
        raise InvalidInput(f"candle.{name} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"candle.{name} must be finite")
    if name in PRICE_FIELDS and number <= 0:
        raise InvalidInput(f"candle.{name} must be > 0")
    return number


def _candle_time(raw: Mapping[str, Any]) -> int:
    if "candle_time" not in raw:
        raise InvalidInput("candle.candle_time is required")
    value = raw["candle_time"]
    if isinstance(value, bool):
        raise InvalidInput("candle.candle_time must be an integer")
    if isinstance(value, str):
        if _INTEGER_RE.fullmatch(value) is None:
            raise InvalidInput("candle.candle_time must be an integer (ASCII digits)")
        value = int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidInput("candle.candle_time must be an integer")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidInput("candle.candle_time must be an integer")
    if value < 0:
        raise InvalidInput("candle.candle_time must be >= 0")
    return value


def parse_candle(raw: object, timeframe: Timeframe, now: int) -> Candle:
    """Validate one wire candle for a series of ``timeframe`` at wall-clock ``now``.

    Raises:
        InvalidInput: missing or non-finite fields, a price <= 0, negative volume, low/high
            not bounding open and close, a time not aligned to the timeframe or more than one
            timeframe in the future.
    """
    # Calendar months have no fixed step for the one-pass check: they take the full checks.
    fast = None if timeframe.months else _parse_plain(raw, timeframe.seconds, timeframe.offset, now)
    if fast is not None:
        return fast
    if not isinstance(raw, Mapping):
        raise InvalidInput("candle must be an object")
    candle_time = _candle_time(raw)
    open_, high, low, close, volume = (_number(raw, name) for name in FIELDS[1:])
    if volume < 0:
        raise InvalidInput("candle.volume must be >= 0")
    if not (low <= open_ <= high and low <= close <= high):
        raise InvalidInput("candle prices must satisfy low <= open, close <= high")
    if not timeframe.is_aligned(candle_time):
        raise InvalidInput(
            f"candle.candle_time {candle_time} is not aligned to timeframe {timeframe.text}"
        )
    # For an aligned time, "> next_open(now)" is "> now + seconds" of a fixed timeframe.
    if candle_time > timeframe.next_open(now):
        raise InvalidInput(
            f"candle.candle_time {candle_time} is more than one timeframe in the future"
        )
    return Candle(candle_time, open_, high, low, close, volume)


_NUMBER_TYPES = (int, float)
_isfinite = math.isfinite


def _parse_plain(raw: object, step: int, offset: int, now: int) -> Candle | None:
    """Accept the common, valid shape in one pass; None sends the caller to the checks that
    explain what is wrong (batch ingest validates thousands of candles per request)."""
    if type(raw) is not dict:
        return None
    try:
        t, o, h, lo, c, v = (raw["candle_time"], raw["open"], raw["high"], raw["low"],
                             raw["close"], raw["volume"])
    except KeyError:
        return None
    if type(t) is not int or not (type(o) in _NUMBER_TYPES and type(h) in _NUMBER_TYPES
                                  and type(lo) in _NUMBER_TYPES and type(c) in _NUMBER_TYPES
                                  and type(v) in _NUMBER_TYPES):
        return None
    o, h, lo, c, v = float(o), float(h), float(lo), float(c), float(v)
    if not (_isfinite(o) and _isfinite(h) and _isfinite(lo) and _isfinite(c) and _isfinite(v)):
        return None
    if t < 0 or v < 0 or lo <= 0 or (t - offset) % step or t > now + step:
        return None
    if not (lo <= o <= h and lo <= c <= h):
        return None
    return Candle(t, o, h, lo, c, v)


def parse_candles(raw: object, timeframe: Timeframe, now: int, max_count: int) -> list[Candle]:
    """Validate a list of wire candles; the error names the index of the first bad one.

    Raises:
        InvalidInput: not a list, empty, longer than ``max_count``, or any bad candle.
    """
    if not isinstance(raw, list):
        raise InvalidInput("candles must be a list")
    if not raw:
        raise InvalidInput("candles must not be empty")
    if len(raw) > max_count:
        raise InvalidInput(f"too many candles: {len(raw)} > {max_count}")
    result = []
    for index, item in enumerate(raw):
        try:
            result.append(parse_candle(item, timeframe, now))
        except InvalidInput as exc:
            raise InvalidInput(f"candles[{index}]: {exc}") from None
    return result


def dedupe_sorted(candles: Iterable[Candle]) -> list[Candle]:
    """Return the candles sorted by time, keeping the last one given for each time."""
    by_time = {candle.candle_time: candle for candle in candles}
    return [by_time[t] for t in sorted(by_time)]


def find_gap(
    previous_time: int | None, candles: Sequence[Candle], timeframe: Timeframe
) -> int | None:
    """Return the expected next time if ``candles[0]`` does not follow ``previous_time``."""
    if previous_time is None or not candles:
        return None
    expected = timeframe.next_open(previous_time)
    return expected if candles[0].candle_time > expected else None
