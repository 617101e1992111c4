"""Anchor factor: a pointer to the dominant (strongest) pen, and its switch events (pure).

A pen reference (:class:`PenRef`) is ``{kind: confirmed|candidate, start_time, end_time,
direction, start_price, end_price}``; its pointer id is ``start_time`` and its strength
``|end_price - start_price|``. Per tick, against the *baseline* = the strength at tick start:

1. each newly confirmed pen stronger than the baseline (strictly; None always passes) competes
   for "best" (an earlier contender is only beaten strictly);
2. each zone formed this tick points the anchor at its entry pen: a ``zhongshu_entry`` switch if
   the pointer changes; the strength is set either way (it may go down);
3. the last-pen candidate (the pen head's extending swing, see ``pen.py``) competes too, gated
   against the same baseline;
4. the best, if any, becomes current: a ``strong_pen`` switch if the pointer changes, else a
   silent update (longer end, or candidate -> confirmed). At most one per tick.

Difference from the earlier backend (factors.md §6.3): ``{current, strength}`` is part of the
persisted engine state, so the silent same-pointer updates survive between ingest calls and
one-by-one ingestion equals batch ingestion. PenRef also carries its prices so that a drawn
anchor needs nothing but the ref.

Event (``factor_name="anchor"``, ``candle_time = switch_time``)::

    anchor.switch  key "zhongshu_entry:{t}:{start}:{end}:{dir}"
                   or  "strong_pen:{t}:{kind}:{start}:{end}:{dir}"
    payload {"switch_time", "reason", "old_anchor": PenRef|null, "new_anchor": PenRef,
             "visible_time"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from trade_canvas.factors.events import FactorEvent, make_event
from trade_canvas.factors.pen import Pen, Swing

NAME = "anchor"
RefKind = Literal["confirmed", "candidate"]


@dataclass(frozen=True, slots=True)
class PenRef:
    """A reference to a confirmed pen or to the head candidate."""

    kind: RefKind
    start_time: int
    end_time: int
    direction: int
    start_price: float
    end_price: float

    @property
    def strength(self) -> float:
        return abs(self.end_price - self.start_price)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape."""
        return {
            "kind": self.kind,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "direction": self.direction,
            "start_price": self.start_price,
            "end_price": self.end_price,
        }


@dataclass(frozen=True, slots=True)
class AnchorState:
    """The current anchor and its strength (None before the first one)."""

    current: PenRef | None = None
    strength: float | None = None


def ref_from_pen(pen: Pen) -> PenRef:
    """Return a confirmed ref to ``pen``."""
    return PenRef(
        "confirmed", pen.start_time, pen.end_time, pen.direction, pen.start_price, pen.end_price
    )


def ref_from_swing(swing: Swing) -> PenRef | None:
    """Return a candidate ref along the swing's extending segment (None before any candle)."""
    if swing.end_time is None:
        return None
    return PenRef(
        "candidate", swing.start_time, swing.end_time, swing.direction,
        swing.start_price, swing.end_price,
    )


def ref_from_dict(raw: Mapping[str, Any]) -> PenRef:
    """Rebuild a ref from its JSON shape."""
    kind: RefKind = "candidate" if raw.get("kind") == "candidate" else "confirmed"
    return PenRef(
        kind, int(raw["start_time"]), int(raw["end_time"]), int(raw["direction"]),
        float(raw.get("start_price", 0.0)), float(raw.get("end_price", 0.0)),
    )


def pick(best: PenRef | None, ref: PenRef, baseline: float | None) -> PenRef | None:
    """Return the tick's best ref after ``ref`` competes (strict gate against ``baseline``)."""
    if baseline is not None and not ref.strength > baseline:
        return best
    if best is not None and not ref.strength > best.strength:
        return best
    return ref


def switch_event(t: int, reason: str, old: PenRef | None, new: PenRef) -> FactorEvent:
    """Return an ``anchor.switch`` event at tick ``t``."""
    tail = f"{new.start_time}:{new.end_time}:{new.direction}"
    key = f"zhongshu_entry:{t}:{tail}" if reason == "zhongshu_entry" else f"strong_pen:{t}:{new.kind}:{tail}"
    payload = {
        "switch_time": t,
        "reason": reason,
        "old_anchor": None if old is None else old.to_dict(),
        "new_anchor": new.to_dict(),
        "visible_time": t,
    }
    return make_event(NAME, "anchor.switch", key, t, payload)


def advance(
    state: AnchorState, t: int, pens: tuple[Pen, ...], formed_entries: list[Pen],
    candidate: Swing | None,
) -> tuple[AnchorState, list[FactorEvent]]:
    """Apply one tick's confirmed pens, formed zones and candidate; return state and switches."""
    baseline = state.strength
    best: PenRef | None = None
    for pen in pens:
        best = pick(best, ref_from_pen(pen), baseline)
    current, strength = state.current, state.strength
    events: list[FactorEvent] = []
    for entry in formed_entries:
        ref = ref_from_pen(entry)
        if current is None or current.start_time != ref.start_time:
            events.append(switch_event(t, "zhongshu_entry", current, ref))
        current, strength = ref, ref.strength
    cand = ref_from_swing(candidate) if candidate is not None else None
    if cand is not None:
        best = pick(best, cand, baseline)
    if best is not None:
        if current is None or current.start_time != best.start_time:
            events.append(switch_event(t, "strong_pen", current, best))
        current, strength = best, best.strength
    if current is state.current and strength == state.strength:
        return state, events
    return AnchorState(current, strength), events
