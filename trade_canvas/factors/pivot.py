"""Pivot factor: major and minor swing highs/lows, confirmed without repaint (pure).

A **major** pivot is judged once per tick for the candle ``w_major`` candles back (the centre):

* resistance: the ``w`` highs on the left are strictly below the centre high and the ``w`` highs
  on the right are at most the centre high (so the earliest candle of a plateau wins);
* support: the mirror rule on lows. One outside bar can be both; resistance is reported first.

It becomes visible at the tick of the ``w``-th candle to its right and is never revised.

A **minor** pivot (window ``w_minor``) needs an earlier major pivot and a window that does not
start before the latest major pivot's time; its tests are non-strict against the whole window
(centre high >= max high, centre low <= min low), so plateaus give several minor pivots.

Differences from the earlier backend (factors.md §6.3):

* Windows count candles of the stream, not seconds: a gap in the candle data no longer silently
  skips the pivots around it. The windows are filled from the engine's own buffer, so an ingest
  split into any batches gives the same pivots.
* Payloads carry no ``pivot_idx``: a batch-relative index is meaningless across calls; times are
  the only key.

Events (``factor_name="pivot"``, ``candle_time = visible_time``)::

    pivot.major  key "major:{pivot_time}:{direction}:{window}"
    pivot.minor  key "minor:{pivot_time}:{direction}:{window}"
    payload {"pivot_time", "pivot_price", "direction": "resistance"|"support",
             "visible_time", "window"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trade_canvas.factors.events import FactorEvent, make_event

NAME = "pivot"
Direction = Literal["resistance", "support"]


@dataclass(frozen=True, slots=True)
class Pivot:
    """A confirmed swing point; ``visible_time`` is the tick that confirmed it."""

    pivot_time: int
    pivot_price: float
    direction: Direction
    visible_time: int
    window: int

    def to_payload(self) -> dict[str, object]:
        """Return the event payload."""
        return {
            "pivot_time": self.pivot_time,
            "pivot_price": self.pivot_price,
            "direction": self.direction,
            "visible_time": self.visible_time,
            "window": self.window,
        }


@dataclass(frozen=True, slots=True)
class PivotState:
    """The last ``2*max(w_major, w_minor)+1`` candles (times, highs, lows) and the last major."""

    times: tuple[int, ...] = ()
    highs: tuple[float, ...] = ()
    lows: tuple[float, ...] = ()
    last_major_time: int | None = None


def buffer_size(w_major: int, w_minor: int) -> int:
    """Return how many recent candles the pivot (and pen) rules need."""
    return 2 * max(w_major, w_minor) + 1


def push_candle(
    state: PivotState, candle_time: int, high: float, low: float, size: int
) -> PivotState:
    """Append one candle to the buffer, dropping the oldest beyond ``size``."""
    if len(state.times) < size:
        return PivotState(
            state.times + (candle_time,),
            state.highs + (high,),
            state.lows + (low,),
            state.last_major_time,
        )
    return PivotState(
        state.times[1:] + (candle_time,),
        state.highs[1:] + (high,),
        state.lows[1:] + (low,),
        state.last_major_time,
    )


def find_majors(state: PivotState, window: int) -> tuple[Pivot, ...]:
    """Return the major pivots the newest candle confirms (resistance before support)."""
    count = len(state.times)
    if count < 2 * window + 1:
        return ()
    centre = count - window - 1
    highs, lows, now = state.highs, state.lows, state.times[-1]
    high, low = highs[centre], lows[centre]
    found: list[Pivot] = []
    if max(highs[centre - window : centre]) < high and max(highs[centre + 1 :]) <= high:
        found.append(Pivot(state.times[centre], high, "resistance", now, window))
    if min(lows[centre - window : centre]) > low and min(lows[centre + 1 :]) >= low:
        found.append(Pivot(state.times[centre], low, "support", now, window))
    return tuple(found)


def find_minors(state: PivotState, window: int) -> tuple[Pivot, ...]:
    """Return the minor pivots the newest candle confirms, after the latest major."""
    count = len(state.times)
    if state.last_major_time is None or count < 2 * window + 1:
        return ()
    start = count - 2 * window - 1
    if state.times[start] < state.last_major_time:
        return ()
    centre = count - window - 1
    highs, lows, now = state.highs, state.lows, state.times[-1]
    found: list[Pivot] = []
    if highs[centre] >= max(highs[start:]):
        found.append(Pivot(state.times[centre], highs[centre], "resistance", now, window))
    if lows[centre] <= min(lows[start:]):
        found.append(Pivot(state.times[centre], lows[centre], "support", now, window))
    return tuple(found)


def advance(
    state: PivotState, candle_time: int, high: float, low: float, w_major: int, w_minor: int
) -> tuple[PivotState, tuple[Pivot, ...], tuple[Pivot, ...]]:
    """Fold one closed candle; return the new state, new major and new minor pivots."""
    state = push_candle(state, candle_time, high, low, buffer_size(w_major, w_minor))
    majors = find_majors(state, w_major)
    if majors:
        state = PivotState(state.times, state.highs, state.lows, majors[-1].pivot_time)
    return state, majors, find_minors(state, w_minor)


def pivot_events(majors: tuple[Pivot, ...], minors: tuple[Pivot, ...]) -> list[FactorEvent]:
    """Return the ledger events for this tick's pivots, majors first."""
    events = []
    for prefix, pivots in (("major", majors), ("minor", minors)):
        for p in pivots:
            key = f"{prefix}:{p.pivot_time}:{p.direction}:{p.window}"
            events.append(make_event(NAME, f"pivot.{prefix}", key, p.visible_time, p.to_payload()))
    return events
