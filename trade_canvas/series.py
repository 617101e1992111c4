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
# Calendar months: Binance offers only ``1M`` (opening on the 1st, 00:00 UTC), and so do we.
MONTH_TEXT = "1M"
# A month's nominal width, the longest month: only for estimates (time windows to read, lags),
# never for alignment or stepping, which go through the calendar.
MONTH_NOMINAL_SECONDS = 31 * 86400


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A candle width such as ``1m``, ``4h``, ``1w`` or ``1M``.

    Fixed timeframes (``months == 0``) open at ``offset + k * seconds`` (``offset`` is 0 except
    for weeks, which open on Monday). Calendar months (``months > 0``) open on the 1st at 00:00
    UTC; their ``seconds`` is MONTH_NOMINAL_SECONDS, a width for estimates only. Every step from
    one candle to the next goes through ``next_open``, ``previous_open`` or ``shift``.
    """

    text: str
    seconds: int
    offset: int = 0
    months: int = 0

    def align(self, t: int) -> int:
        """Return the open time of the candle that contains ``t``."""
        if self.months:
            return _month_open(_month_index(t) // self.months * self.months)
        return t - (t - self.offset) % self.seconds

    def is_aligned(self, t: int) -> bool:
        """Whether ``t`` is a candle open time of this timeframe."""
        if self.months:
            return self.align(t) == t
        return (t - self.offset) % self.seconds == 0

    def ceil(self, t: int) -> int:
        """Return the first candle open time at or after ``t``."""
        opens = self.align(t)
        return opens if opens == t else self.next_open(t)

    def shift(self, t: int, candles: int) -> int:
        """Return the open time ``candles`` candles after (negative: before) the one of ``t``."""
        if self.months:
            return _month_open(_month_index(t) // self.months * self.months + candles * self.months)
        return t - (t - self.offset) % self.seconds + candles * self.seconds

    def next_open(self, t: int) -> int:
        """Return the open time of the candle after the one containing ``t``."""
        return self.shift(t, 1)

    def previous_open(self, t: int) -> int:
        """Return the open time of the candle before the one containing ``t``."""
        return self.shift(t, -1)

    def window_start(self, t: int, candles: int) -> int:
        """Return where a read window of ``candles`` timeframes ending at ``t`` starts.

        Fixed timeframes: ``t - candles * seconds``. Months: the first open at or after the
        point ``candles`` calendar months before ``t``, so ``[window_start(t, n), t]`` holds the
        same number of candles for both kinds (``n + 1`` when ``t`` is an open time, else ``n``).
        """
        if self.months:
            return self.shift(t, -candles if self.is_aligned(t) else 1 - candles)
        return t - candles * self.seconds

    def steps_between(self, start: int, end: int) -> int:
        """Return how many candles the one containing ``end`` opens after the one of ``start``.

        Negative when ``end`` lies in an earlier candle; 1 for neighbours, so a hole between
        stored candles at ``start`` and ``end`` holds ``steps_between(start, end) - 1``.
        """
        if self.months:
            return _month_index(end) // self.months - _month_index(start) // self.months
        return (self.align(end) - self.align(start)) // self.seconds

    def open_times(self, start: int, end: int) -> list[int]:
        """Return every candle open time in ``[start, end]``, oldest first."""
        if self.months:
            times, t = [], self.ceil(start)
            while t <= end:
                times.append(t)
                t = self.next_open(t)
            return times
        return list(range(self.ceil(start), end + 1, self.seconds))

    def __str__(self) -> str:
        return self.text


# Months count from 1970-01 (index 0), so month ``k`` opens at ``_month_open(k)``. Converting
# between days and civil dates is Howard Hinnant's proleptic Gregorian algorithm: plain integer
# arithmetic (``datetime`` would stop at the year 9999, which MAX_EPOCH_SECONDS reaches).
def _month_index(t: int) -> int:
    year, month = _civil_from_days(t // 86400)
    return (year - 1970) * 12 + month - 1


def _month_open(index: int) -> int:
    year, month0 = divmod(index, 12)
    return _days_from_civil(1970 + year, month0 + 1) * 86400


def _civil_from_days(days: int) -> tuple[int, int]:
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month


def _days_from_civil(year: int, month: int) -> int:
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


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
    """Parse ``<positive int><m|h|d|w>`` or ``1M`` (a calendar month) into a Timeframe.

    Raises:
        InvalidInput: for anything else (``2M``, ``30s``, ``0m``, ``""``).
    """
    if isinstance(text, str) and text.strip() == MONTH_TEXT:
        return Timeframe(text=MONTH_TEXT, seconds=MONTH_NOMINAL_SECONDS, months=1)
    match = _TIMEFRAME_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(
            f"invalid timeframe: {text!r} (expected <n>m, <n>h, <n>d, <n>w or 1M)"
        )
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
    return timeframe.align(t)


def expected_latest_closed_time(now: int, timeframe: Timeframe) -> int:
    """Return the open time of the newest fully closed candle at ``now`` (0 if none)."""
    return max(0, timeframe.previous_open(now))
