"""Zhongshu factor (中枢): overlap zones of three pens after an entry pen (pure).

Per tick the pens confirmed at the tick are fed first, then the candle.

**Pending triple.** With no zone alive and nothing pending, the last three pens become
``(entry, P1, P2)``; P3 is the next pen, starting at P2's end in the opposite direction, and its
*trigger* is ``P1.end_price``. After a zone died, the entry must not start before the reseed
floor (the start of the pen before the death pen).

**Formation** needs the four ranges (entry, P1, P2, P3) to intersect; the zone is then
``zd = max(lows of P1..P3)``, ``zg = min(highs of P1..P3)``, ``start_time = entry.start_time``.

* ``pen_confirmed``: P3 is confirmed; ``formed_time`` = P3's visible time. Formed or not, the
  triple is consumed and the window slides to the last three pens.
* ``price_cross``: candles after the triple was built track P3's running extreme; once one
  crosses the trigger (``low <= trigger`` going down, ``high >= trigger`` going up) every candle
  retries formation with P3's range ``[P3 start, extreme]``. ``formed_time`` is the first
  crossing candle; the zone then waits for P3's confirmation, which extends it without a death
  check.

**Alive zone.** Each later pen lying wholly above ``zg`` or below ``zd`` kills it
(``zhongshu.dead``, ``death_time = visible_time`` = the pen's visible time, ``end_time`` = its
end so far); any other pen and every candle extend ``end_time``. ``zg``/``zd`` never change.

Differences from the earlier backend (factors.md §6.3):

* The state machine is persisted with the engine state instead of being replayed from a
  lookback window on every call, so long histories no longer lose or add dead zones.
* A ``zhongshu.formed`` event is added when a zone forms, so the alive zone at any past time is a
  pure function of the ledger (the latest formed zone with no matching dead event).

Events (``factor_name="zhongshu"``, ``candle_time = visible_time``)::

    zhongshu.formed  key "formed:{start}:{formed_time}:{zg:.8f}:{zd:.8f}:{formed_reason}"
        payload {"start_time", "end_time", "zg", "zd", "entry_direction", "formed_time",
                 "formed_reason", "visible_time"}
    zhongshu.dead    key "dead:{start}:{formed_time}:{death_time}:{zg:.8f}:{zd:.8f}:{reason}"
        payload {"start_time", "end_time", "zg", "zd", "entry_direction", "formed_time",
                 "death_time", "visible_time", "formed_reason"}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from trade_canvas.factors.events import FactorEvent, make_event
from trade_canvas.factors.pen import Pen

NAME = "zhongshu"
FormedReason = Literal["pen_confirmed", "price_cross"]


@dataclass(frozen=True, slots=True)
class Zone:
    """A formed zone; ``awaiting_p3`` is P3's start time while P3 is still unconfirmed."""

    start_time: int
    end_time: int
    zg: float
    zd: float
    entry_direction: int
    formed_time: int
    formed_reason: FormedReason
    visible_time: int
    awaiting_p3: int | None = None

    def to_payload(self) -> dict[str, Any]:
        """Return the zone fields shared by the formed/dead events and the alive head."""
        return {
            "start_time": self.start_time,
            "end_time": self.end_time,
            "zg": self.zg,
            "zd": self.zd,
            "entry_direction": self.entry_direction,
            "formed_time": self.formed_time,
            "formed_reason": self.formed_reason,
            "visible_time": self.visible_time,
        }


@dataclass(frozen=True, slots=True)
class Pending:
    """The triple waiting for P3, with P3's price-cross tracking."""

    entry: Pen
    p1: Pen
    p2: Pen
    p3_start_time: int
    p3_start_price: float
    p3_direction: int
    trigger: float
    extreme: float
    cross_time: int | None = None


@dataclass(frozen=True, slots=True)
class ZhongshuState:
    """The last three pens, the pending triple, the alive zone and the reseed floor."""

    tail: tuple[Pen, ...] = ()
    pending: Pending | None = None
    alive: Zone | None = None
    floor: int | None = None


def zone_bounds(
    entry: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float],
    p3: tuple[float, float],
) -> tuple[float, float] | None:
    """Return ``(zg, zd)`` if the four (low, high) ranges intersect, else None."""
    if max(entry[0], p1[0], p2[0], p3[0]) > min(entry[1], p1[1], p2[1], p3[1]):
        return None
    return min(p1[1], p2[1], p3[1]), max(p1[0], p2[0], p3[0])


def _span(pen: Pen) -> tuple[float, float]:
    return pen.low, pen.high


def _build_pending(tail: tuple[Pen, ...], floor: int | None) -> Pending | None:
    if len(tail) < 3:
        return None
    entry, p1, p2 = tail[-3:]
    if floor is not None and entry.start_time < floor:
        return None
    return Pending(
        entry, p1, p2, p2.end_time, p2.end_price, -p2.direction, p1.end_price, p2.end_price
    )


def _on_pen_idle(
    state: ZhongshuState, pen: Pen, formed: list[Pen], events: list[FactorEvent]
) -> ZhongshuState:
    pending, alive = state.pending, None
    if pending is not None and pen.start_time == pending.p3_start_time:
        bounds = zone_bounds(_span(pending.entry), _span(pending.p1), _span(pending.p2), _span(pen))
        if bounds is not None:
            alive = Zone(
                pending.entry.start_time, pen.end_time, bounds[0], bounds[1],
                pending.entry.direction, pen.visible_time, "pen_confirmed", pen.visible_time,
            )
            formed.append(pending.entry)
            events.append(formed_event(alive))
        pending = None
    if alive is None and pending is None:
        pending = _build_pending(state.tail, state.floor)
    return ZhongshuState(state.tail, pending, alive, state.floor)


def _on_pen_alive(
    state: ZhongshuState, zone: Zone, pen: Pen, events: list[FactorEvent]
) -> ZhongshuState:
    if zone.awaiting_p3 is not None and pen.start_time == zone.awaiting_p3:
        zone = replace(zone, awaiting_p3=None, end_time=max(zone.end_time, pen.end_time))
        return ZhongshuState(state.tail, None, zone, state.floor)
    if pen.low > zone.zg or pen.high < zone.zd:
        events.append(dead_event(zone, pen.visible_time))
        floor = state.tail[-2].start_time
        return ZhongshuState(state.tail, _build_pending(state.tail, floor), None, floor)
    zone = replace(zone, end_time=max(zone.end_time, pen.end_time))
    return ZhongshuState(state.tail, None, zone, state.floor)


def _cross(pending: Pending, candle_time: int, high: float, low: float) -> Pending:
    if pending.p3_direction < 0:
        extreme, crossed = min(pending.extreme, low), low <= pending.trigger
    else:
        extreme, crossed = max(pending.extreme, high), high >= pending.trigger
    cross_time = pending.cross_time
    if cross_time is None and crossed:
        cross_time = candle_time
    if extreme == pending.extreme and cross_time == pending.cross_time:
        return pending
    return replace(pending, extreme=extreme, cross_time=cross_time)


def _on_candle_pending(
    state: ZhongshuState, pending: Pending, candle_time: int, high: float, low: float,
    formed: list[Pen], events: list[FactorEvent],
) -> ZhongshuState:
    if candle_time <= pending.p3_start_time:
        return state
    pending = _cross(pending, candle_time, high, low)
    if pending.cross_time is None:
        return state if pending is state.pending else replace(state, pending=pending)
    p3 = (min(pending.p3_start_price, pending.extreme), max(pending.p3_start_price, pending.extreme))
    bounds = zone_bounds(_span(pending.entry), _span(pending.p1), _span(pending.p2), p3)
    if bounds is None:
        return replace(state, pending=pending)
    zone = Zone(
        pending.entry.start_time, candle_time, bounds[0], bounds[1], pending.entry.direction,
        pending.cross_time, "price_cross", candle_time, pending.p3_start_time,
    )
    formed.append(pending.entry)
    events.append(formed_event(zone))
    return ZhongshuState(state.tail, None, zone, state.floor)


def advance(
    state: ZhongshuState, pens: tuple[Pen, ...], candle_time: int, high: float, low: float
) -> tuple[ZhongshuState, list[FactorEvent], list[Pen]]:
    """Fold this tick's pens then its candle; return state, events and formed entry pens."""
    events: list[FactorEvent] = []
    formed: list[Pen] = []
    for pen in pens:
        state = replace(state, tail=(state.tail + (pen,))[-3:])
        if state.alive is None:
            state = _on_pen_idle(state, pen, formed, events)
        else:
            state = _on_pen_alive(state, state.alive, pen, events)
    if state.alive is not None:
        if state.alive.end_time < candle_time:
            state = replace(state, alive=replace(state.alive, end_time=candle_time))
    elif state.pending is not None:
        state = _on_candle_pending(state, state.pending, candle_time, high, low, formed, events)
    return state, events, formed


def formed_event(zone: Zone) -> FactorEvent:
    """Return the ``zhongshu.formed`` event for a zone formed at ``zone.visible_time``."""
    key = (
        f"formed:{zone.start_time}:{zone.formed_time}:{zone.zg:.8f}:{zone.zd:.8f}:"
        f"{zone.formed_reason}"
    )
    return make_event(NAME, "zhongshu.formed", key, zone.visible_time, zone.to_payload())


def dead_event(zone: Zone, death_time: int) -> FactorEvent:
    """Return the ``zhongshu.dead`` event for a zone killed at ``death_time``."""
    payload = zone.to_payload()
    payload.update(death_time=death_time, visible_time=death_time)
    key = (
        f"dead:{zone.start_time}:{zone.formed_time}:{death_time}:{zone.zg:.8f}:{zone.zd:.8f}:"
        f"{zone.formed_reason}"
    )
    return make_event(NAME, "zhongshu.dead", key, death_time, payload)


def alive_head(zone: Zone | None, at_time: int) -> dict[str, Any]:
    """Return the head ``{"alive": [zone with death_time None, visible_time at_time]}``."""
    if zone is None:
        return {"alive": []}
    item = zone.to_payload()
    item.update(end_time=max(zone.end_time, at_time), death_time=None, visible_time=at_time)
    return {"alive": [item]}
