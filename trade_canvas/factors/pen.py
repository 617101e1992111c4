"""Pen factor (笔): segments between alternating major pivots, plus the repainting head (pure).

**Effective pivots.** Major pivots are folded in confirmation order: the first is appended; one
of the same direction as the last replaces it only if strictly more extreme (higher resistance,
lower support), otherwise it is ignored; one of the opposite direction is appended, and once
three alternate, the pen ``effective[-3] -> effective[-2]`` is confirmed at the new pivot's
``visible_time``. Only ``effective[-1]`` can still move, so a confirmed pen never changes and
pens are contiguous. ``direction`` is +1 if ``end_price > start_price``, else -1.

**Head** (recomputed every tick, may repaint, reads no candle after the tick):

* ``extending`` starts at ``effective[-2]`` and runs to the highest high (from a support) or the
  lowest low (from a resistance) among later candles, earliest on ties; dropped if flat;
* ``candidate`` starts at the extending end and runs to the opposite extreme strictly after it;
  dropped if flat or when there is no extending.

The head is kept incrementally: a :class:`Swing` tracks those two extremes from
``effective[-2]`` (``head``) and another from ``effective[-1]`` (``tail``), which becomes the
head when the next opposite pivot arrives. A new ``tail`` is seeded from the pivot buffer, which
always holds every candle after a pivot that was just confirmed. This replaces the earlier
backend's rescans of the batch and makes the head O(1) per candle.

The **last-pen candidate** used by the anchor (factors.md §1.2) is the extending segment without
the flat check: the last confirmed pen ends at ``effective[-2]``, so both scan the same candles.
(The original chose the scan side from the pen's price direction; for a zero-height pen that
could disagree with the pivot kinds. Here the pivot kind decides.)

Event (``factor_name="pen"``, ``candle_time = visible_time``)::

    pen.confirmed  key "confirmed:{start_time}:{end_time}:{direction}"
    payload {"start_time", "end_time", "start_price", "end_price", "direction", "visible_time"}

Batch indices (``start_idx``/``end_idx``) are not emitted: they were batch-relative (§6.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from trade_canvas.factors.events import FactorEvent, make_event
from trade_canvas.factors.pivot import Pivot, PivotState

NAME = "pen"


@dataclass(frozen=True, slots=True)
class Pen:
    """A confirmed pen between two effective pivots."""

    start_time: int
    end_time: int
    start_price: float
    end_price: float
    direction: int
    visible_time: int

    @property
    def low(self) -> float:
        return min(self.start_price, self.end_price)

    @property
    def high(self) -> float:
        return max(self.start_price, self.end_price)

    def to_payload(self) -> dict[str, Any]:
        """Return the event payload."""
        return {
            "start_time": self.start_time,
            "end_time": self.end_time,
            "start_price": self.start_price,
            "end_price": self.end_price,
            "direction": self.direction,
            "visible_time": self.visible_time,
        }


@dataclass(frozen=True, slots=True)
class Swing:
    """Running extremes after a pivot: the far end (extending) and the pullback (candidate).

    ``direction`` +1 tracks the highest high (from a support), -1 the lowest low.
    """

    start_time: int
    start_price: float
    direction: int
    end_time: int | None = None
    end_price: float = 0.0
    back_time: int | None = None
    back_price: float = 0.0


@dataclass(frozen=True, slots=True)
class PenState:
    """The last three effective pivots, the two swings and the last confirmed pen."""

    effective: tuple[Pivot, ...] = ()
    head: Swing | None = None
    tail: Swing | None = None
    last_pen: Pen | None = None


def update_swing(swing: Swing, candle_time: int, high: float, low: float) -> Swing:
    """Fold one candle into a swing; returns the same object when nothing moved."""
    if swing.direction > 0:
        far, back, is_far, is_back = high, low, high > swing.end_price, low < swing.back_price
    else:
        far, back, is_far, is_back = low, high, low < swing.end_price, high > swing.back_price
    if swing.end_time is None or is_far:
        return Swing(swing.start_time, swing.start_price, swing.direction, candle_time, far)
    if swing.back_time is None or is_back:
        return Swing(
            swing.start_time, swing.start_price, swing.direction,
            swing.end_time, swing.end_price, candle_time, back,
        )
    return swing


def seed_swing(pivot: Pivot, buffer: PivotState) -> Swing:
    """Start a swing at ``pivot`` and fold the buffered candles after it."""
    direction = 1 if pivot.direction == "support" else -1
    swing = Swing(pivot.pivot_time, pivot.pivot_price, direction)
    for t, high, low in zip(buffer.times, buffer.highs, buffer.lows):
        if t > pivot.pivot_time:
            swing = update_swing(swing, t, high, low)
    return swing


def _more_extreme(new: Pivot, old: Pivot) -> bool:
    if new.direction == "resistance":
        return new.pivot_price > old.pivot_price
    return new.pivot_price < old.pivot_price


def fold_effective(pivots: Iterable[Pivot]) -> list[Pivot]:
    """Return the whole effective pivot list for major pivots given in confirmation order."""
    effective: list[Pivot] = []
    for pivot in pivots:
        if effective and effective[-1].direction == pivot.direction:
            if _more_extreme(pivot, effective[-1]):
                effective[-1] = pivot
        else:
            effective.append(pivot)
    return effective


def _apply_major(
    state: PenState, pivot: Pivot, buffer: PivotState
) -> tuple[PenState, Pen | None]:
    effective = state.effective
    if effective and effective[-1].direction == pivot.direction:
        if not _more_extreme(pivot, effective[-1]):
            return state, None
        new_effective = effective[:-1] + (pivot,)
        return PenState(new_effective, state.head, seed_swing(pivot, buffer), state.last_pen), None
    grown = effective + (pivot,)
    pen = None
    if len(grown) >= 3:
        start, end = grown[-3], grown[-2]
        direction = 1 if end.pivot_price > start.pivot_price else -1
        pen = Pen(
            start.pivot_time, end.pivot_time, start.pivot_price, end.pivot_price,
            direction, pivot.visible_time,
        )
    last_pen = pen if pen is not None else state.last_pen
    return PenState(grown[-3:], state.tail, seed_swing(pivot, buffer), last_pen), pen


def advance(
    state: PenState, candle_time: int, high: float, low: float,
    majors: tuple[Pivot, ...], buffer: PivotState,
) -> tuple[PenState, tuple[Pen, ...]]:
    """Fold one candle and this tick's major pivots; return the state and newly confirmed pens."""
    head, tail = state.head, state.tail
    new_head = update_swing(head, candle_time, high, low) if head is not None else None
    new_tail = update_swing(tail, candle_time, high, low) if tail is not None else None
    if new_head is not head or new_tail is not tail:
        state = PenState(state.effective, new_head, new_tail, state.last_pen)
    pens: list[Pen] = []
    for pivot in majors:
        state, pen = _apply_major(state, pivot, buffer)
        if pen is not None:
            pens.append(pen)
    return state, tuple(pens)


def pen_events(pens: tuple[Pen, ...]) -> list[FactorEvent]:
    """Return the ledger events for newly confirmed pens."""
    return [
        make_event(
            NAME, "pen.confirmed", f"confirmed:{p.start_time}:{p.end_time}:{p.direction}",
            p.visible_time, p.to_payload(),
        )
        for p in pens
    ]


def segment(start_time: int, start_price: float, end_time: int, end_price: float,
            direction: int) -> dict[str, Any]:
    """Return the head segment shape ``{start_time, end_time, start_price, end_price, direction}``."""
    return {
        "start_time": start_time,
        "end_time": end_time,
        "start_price": start_price,
        "end_price": end_price,
        "direction": direction,
    }


def swing_head(swing: Swing | None) -> dict[str, Any]:
    """Return ``{"extending": seg|None, "candidate": seg|None}`` for the head swing."""
    if swing is None or swing.end_time is None or swing.end_price == swing.start_price:
        return {"extending": None, "candidate": None}
    extending = segment(
        swing.start_time, swing.start_price, swing.end_time, swing.end_price, swing.direction
    )
    candidate = None
    if swing.back_time is not None and swing.back_price != swing.end_price:
        candidate = segment(
            swing.end_time, swing.end_price, swing.back_time, swing.back_price, -swing.direction
        )
    return {"extending": extending, "candidate": candidate}


def pen_head(state: PenState) -> dict[str, Any]:
    """Return the current head ``{"extending", "candidate"}`` (None parts when absent)."""
    return swing_head(state.head)


def last_pen_candidate(state: PenState) -> Swing | None:
    """Return the head swing when a confirmed pen exists (the anchor's candidate source)."""
    if state.last_pen is None or state.head is None or state.head.end_time is None:
        return None
    return state.head
