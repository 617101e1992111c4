"""Read model: what the factors show at one time, and the ``GET /api/factor/slices`` body (pure).

Wiring (HTTP layer, with a store)::

    aligned = greatest stored candle_time <= at_time              # None -> empty_slices(...)
    if factor head_time is None or < aligned: 409 "ledger_out_of_sync:factor"
    rows    = factor events with candle_time in [aligned - window*tf, aligned]
              + the latest "zhongshu.formed" event at or before aligned (it may be older)
    candles = stored candles in [aligned - window*tf, aligned]
    state   = the engine state snapshot, if its head_time == aligned (else None)
    view    = build_view(aligned, rows, candles, state)
    body    = slices_payload(series_id, view)

With ``state`` at ``aligned`` the heads (pen extending/candidate, alive zone, anchor current)
come from it exactly. Without it they are recomputed from the events and candles: the pen head
replays the window's major pivots and needs the candles since the second-last effective pivot;
the alive zone is the latest ``zhongshu.formed`` with no matching ``zhongshu.dead``; the anchor
is the last switch's ``new_anchor`` plus the silent same-pointer updates after it, which the
ledger does not record: the caller replays them (``replay_anchor``, from the events and candles
since the anchor's start) so that a past read draws what the live overlay drew at that time.

Response shape (factors with nothing to show are omitted)::

    {"schema_version": 1, "series_id", "at_time": aligned, "candle_id": "<sid>:<aligned>",
     "factors": ["pivot", "pen", "zhongshu", "anchor"],
     "snapshots": {name: {"schema_version": 1, "history": {...}, "head": {...},
                          "meta": {"series_id", "epoch": 0, "at_time", "candle_id",
                                   "factor_name"}}}}

    pivot    history {"major": [...], "minor": [...]}     head {}
    pen      history {"confirmed": [...]}                 head {"extending", "candidate"}
    zhongshu history {"dead": [...]}                      head {"alive": [zone] | []}
    anchor   history {"anchors": [PenRef], "switches": [...]}  head {"current_anchor_ref"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from trade_canvas.candles import Candle
from trade_canvas.factors import FACTOR_NAMES
from trade_canvas.factors.anchor import PenRef, pick, ref_from_dict
from trade_canvas.factors.engine import FactorState
from trade_canvas.factors.events import FactorEvent
from trade_canvas.factors.pen import Swing, fold_effective, pen_head, swing_head, update_swing
from trade_canvas.factors.pivot import Pivot
from trade_canvas.factors.zhongshu import alive_head

Payload = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FactorView:
    """Everything visible at ``at_time``: sorted history payloads and the recomputed heads.

    The payload dicts are owned by the view; treat them as read-only.
    """

    at_time: int
    majors: tuple[Payload, ...]
    minors: tuple[Payload, ...]
    pens: tuple[Payload, ...]
    dead: tuple[Payload, ...]
    switches: tuple[Payload, ...]
    pen_head: Payload
    alive: tuple[Payload, ...]
    anchor_current: Payload | None  # what the overlay draws as anchor.current
    anchor_base: Payload | None = None  # the engine's (or ledger's) ref, before any override


def _bucket(events: Iterable[FactorEvent], at_time: int) -> dict[str, list[Payload]]:
    buckets: dict[str, list[Payload]] = {}
    for event in events:
        if event.candle_time <= at_time:
            buckets.setdefault(event.kind, []).append(event.payload())
    return buckets


def _sorted(rows: list[Payload], *keys: str) -> tuple[Payload, ...]:
    return tuple(sorted(rows, key=lambda row: tuple(row[k] for k in keys)))


def build_view(
    at_time: int, events: Iterable[FactorEvent], candles: Sequence[Candle],
    state: FactorState | None = None, anchor: PenRef | None = None,
) -> FactorView:
    """Build the view at ``at_time`` from ledger rows, window candles and optionally the state.

    ``state`` is used only when ``state.head_time == at_time``. Without it, ``anchor`` is the
    engine's anchor ref at ``at_time`` when the caller has replayed it (:func:`replay_anchor`);
    else the anchor is the last switch's ``new_anchor`` (or the window's last confirmed pen).
    """
    buckets = _bucket(events, at_time)
    live = state if state is not None and state.head_time == at_time else None
    majors = _sorted(buckets.get("pivot.major", []), "visible_time", "pivot_time")
    pens = _sorted(buckets.get("pen.confirmed", []), "visible_time", "start_time")
    switches = _sorted(buckets.get("anchor.switch", []), "visible_time", "switch_time")
    if live is not None:
        head = pen_head(live.pen)
        alive = alive_head(live.zhongshu.alive, at_time)["alive"]
        current = live.anchor.current
    else:
        head = recompute_pen_head(majors, candles, at_time)
        alive = alive_from_events(buckets, at_time)
        current = anchor if anchor is not None else _ledger_anchor(switches, pens)
    return FactorView(
        at_time, majors, _sorted(buckets.get("pivot.minor", []), "visible_time", "pivot_time"),
        pens, _sorted(buckets.get("zhongshu.dead", []), "visible_time", "start_time"), switches,
        head, tuple(alive), drawn_anchor(current, head),
        _base_anchor(current if live is not None or anchor is not None else None, switches, pens),
    )


def recompute_pen_head(
    majors: Sequence[Payload], candles: Sequence[Candle], at_time: int
) -> Payload:
    """Return the pen head at ``at_time`` from major pivot payloads and candles."""
    pivots = [
        Pivot(p["pivot_time"], p["pivot_price"], p["direction"], p["visible_time"], p["window"])
        for p in sorted(majors, key=lambda p: (p["visible_time"], p["pivot_time"], p["direction"]))
    ]
    effective = fold_effective(pivots)
    if len(effective) < 2:
        return swing_head(None)
    start = effective[-2]
    swing = Swing(start.pivot_time, start.pivot_price, 1 if start.direction == "support" else -1)
    for candle in candles:
        if start.pivot_time < candle.candle_time <= at_time:
            swing = update_swing(swing, candle.candle_time, float(candle.high), float(candle.low))
    return swing_head(swing)


def alive_from_events(buckets: dict[str, list[Payload]], at_time: int) -> list[Payload]:
    """Return ``[alive zone]`` or ``[]``: the latest formed zone that has not died yet."""
    formed = buckets.get("zhongshu.formed", [])
    if not formed:
        return []
    zone = max(formed, key=lambda z: (z["visible_time"], z["formed_time"]))
    for dead in buckets.get("zhongshu.dead", []):
        if (dead["start_time"], dead["formed_time"]) == (zone["start_time"], zone["formed_time"]):
            return []
    return [dict(zone, end_time=max(zone["end_time"], at_time), death_time=None,
                 visible_time=at_time)]


def replay_anchor(
    last_switch: Payload, events: Iterable[FactorEvent], candles: Sequence[Candle], at_time: int
) -> PenRef:
    """Return the engine's anchor ref at ``at_time``: the last switch plus its silent updates.

    The ledger records a switch only when the anchor's pointer (start_time) changes; after it the
    engine keeps updating the same pointer silently (a longer candidate, the confirmed pen, a zone
    entry), and those updates change what the overlay draws (the current line, and which switch
    is drawn as history). ``last_switch`` is the newest ``anchor.switch`` payload at or before
    ``at_time``; ``events`` and ``candles`` must cover ``[pointer start, at_time]``. Every tick
    after the switch is replayed with the anchor rule restricted to that pointer (any other
    winner would have been a switch): confirmed pens, zone entries and the head candidate, which
    is the swing from the second-last effective major pivot, as :func:`recompute_pen_head`.
    """
    current = ref_from_dict(last_switch["new_anchor"])
    strength = current.strength
    after = int(last_switch["switch_time"])
    buckets = _bucket(events, at_time)
    pens = buckets.get("pen.confirmed", [])
    pens_at: dict[int, list[Payload]] = {}
    for pen in pens:
        if pen["visible_time"] > after:
            pens_at.setdefault(pen["visible_time"], []).append(pen)
    formed_at: dict[int, list[Payload]] = {}
    for zone in buckets.get("zhongshu.formed", []):
        if zone["visible_time"] > after:
            formed_at.setdefault(zone["visible_time"], []).append(zone)
    majors = sorted(
        (Pivot(p["pivot_time"], p["pivot_price"], p["direction"], p["visible_time"], p["window"])
         for p in buckets.get("pivot.major", [])),
        key=lambda p: (p.visible_time, p.pivot_time, p.direction),
    )
    ordered = sorted((c for c in candles if c.candle_time <= at_time), key=lambda c: c.candle_time)
    effective: list[Pivot] = []
    next_major = 0
    start: Pivot | None = None
    swing: Swing | None = None
    for index, candle in enumerate(ordered):
        t = candle.candle_time
        grew = False
        while next_major < len(majors) and majors[next_major].visible_time <= t:
            effective = fold_effective([*effective[-2:], majors[next_major]])[-3:]
            next_major += 1
            grew = True
        if t <= after:
            continue
        if grew or start is None:
            new_start = effective[-2] if len(effective) >= 2 else None
            if new_start != start:
                start, swing = new_start, None
                if start is not None and start.pivot_time == current.start_time:
                    swing = Swing(start.pivot_time, start.pivot_price,
                                  1 if start.direction == "support" else -1)
                    for prior in ordered[:index]:
                        if prior.candle_time > start.pivot_time:
                            swing = update_swing(swing, prior.candle_time, float(prior.high),
                                                 float(prior.low))
        if swing is not None:
            swing = update_swing(swing, t, float(candle.high), float(candle.low))
        baseline, best = strength, None
        for pen in pens_at.get(t, ()):
            best = pick(best, ref_from_dict(dict(pen, kind="confirmed")), baseline)
        for zone in formed_at.get(t, ()):
            entry = [p for p in pens if p["start_time"] == zone["start_time"]
                     and p["direction"] == zone["entry_direction"]]
            if entry and zone["start_time"] == current.start_time:
                current = ref_from_dict(dict(max(entry, key=lambda p: p["end_time"]),
                                             kind="confirmed"))
                strength = current.strength
        if swing is not None and swing.end_time is not None:
            candidate = PenRef("candidate", swing.start_time, swing.end_time, swing.direction,
                               swing.start_price, swing.end_price)
            best = pick(best, candidate, baseline)
        if best is not None and best.start_time == current.start_time:
            current, strength = best, best.strength
    return current


def _ledger_anchor(switches: Sequence[Payload], pens: Sequence[Payload]) -> PenRef | None:
    if switches:
        return ref_from_dict(switches[-1]["new_anchor"])
    if pens:
        return ref_from_dict(dict(pens[-1], kind="confirmed"))
    return None


def _base_anchor(
    live: PenRef | None, switches: Sequence[Payload], pens: Sequence[Payload]
) -> Payload | None:
    # The original's base ref: the stored head's, else the last kept switch's new anchor, else
    # the window's last confirmed pen.
    if live is not None:
        return live.to_dict()
    kept = anchor_history(switches)[1]
    if kept:
        return dict(kept[-1]["new_anchor"])
    return ref_from_dict(dict(pens[-1], kind="confirmed")).to_dict() if pens else None


def drawn_anchor(current: PenRef | None, head: Payload) -> Payload | None:
    """Return the anchor the overlay draws: the head candidate when it outweighs ``current``."""
    candidate = head.get("candidate")
    if candidate is not None:
        strength = abs(candidate["end_price"] - candidate["start_price"])
        if (
            current is None
            or candidate["start_time"] == current.start_time
            or strength > current.strength
        ):
            return ref_from_dict(dict(candidate, kind="candidate")).to_dict()
    return None if current is None else current.to_dict()


def head_anchor_ref(
    base: Payload | None, head: Payload, pens: Sequence[Payload]
) -> Payload | None:
    """Return the slices' ``current_anchor_ref``: the original backend's candidate-anchor rule.

    The chart highlights a candidate anchor only when it equals ``pen.head.candidate``, while the
    engine's candidate ref follows ``pen.head.extending``. So the head candidate replaces the
    base ref when there is no base, when both start at the same time, or when the candidate is
    strictly stronger than the base; the base's strength is that of the head pen or confirmed
    pen it names (-1 when it names none). Only the serialized head changes: the ledger, the
    switches and the overlay's ``anchor.current`` keep the engine's ref.
    """
    ref = _normalized(base)
    candidate = _normalized(head.get("candidate"), "candidate")
    if candidate is not None and (
        ref is None
        or candidate["start_time"] == ref["start_time"]
        or _strength(head["candidate"]) > _base_strength(ref, head, pens)
    ):
        return dict(head["candidate"], kind="candidate")
    return ref


def _normalized(raw: Payload | None, kind: str | None = None) -> Payload | None:
    if raw is None:
        return None
    kind = kind or raw.get("kind")
    if kind not in ("confirmed", "candidate") or raw.get("direction") not in (1, -1):
        return None
    if not (raw.get("start_time", 0) > 0 and raw.get("end_time", 0) > 0):
        return None
    return dict(raw, kind=kind)


def _strength(pen: Payload) -> float:
    return float(abs(pen["end_price"] - pen["start_price"]))


def _same(a: Payload, b: Payload | None) -> bool:
    keys = ("start_time", "end_time", "direction")
    return b is not None and all(a[k] == b[k] for k in keys)


def _base_strength(ref: Payload, head: Payload, pens: Sequence[Payload]) -> float:
    for part in ("extending", "candidate"):
        if _same(ref, head.get(part)):
            return _strength(head[part])
    matches = [p for p in pens
               if p["start_time"] == ref["start_time"] and p["direction"] == ref["direction"]]
    if matches:
        return _strength(max(matches, key=lambda p: p["end_time"]))
    return -1.0


def anchor_history(switches: Sequence[Payload]) -> tuple[list[Payload], list[Payload]]:
    """Normalise switches: last row per switch_time, then first switch to each pointer only."""
    last_per_time: dict[int, Payload] = {}
    for row in switches:
        last_per_time[row["switch_time"]] = row
    seen: set[int] = set()
    kept: list[Payload] = []
    for row in sorted(last_per_time.values(), key=lambda r: (r["visible_time"], r["switch_time"])):
        start = row["new_anchor"]["start_time"]
        if start not in seen:
            seen.add(start)
            kept.append(row)
    return [row["new_anchor"] for row in kept], kept


def _factor_slices(view: FactorView) -> dict[str, tuple[Payload, Payload]]:
    slices: dict[str, tuple[Payload, Payload]] = {}
    if view.majors:
        slices["pivot"] = ({"major": list(view.majors), "minor": list(view.minors)}, {})
    if view.pens:
        slices["pen"] = ({"confirmed": list(view.pens)}, dict(view.pen_head))
    if view.dead or view.alive:
        slices["zhongshu"] = ({"dead": list(view.dead)}, {"alive": list(view.alive)})
    if view.pens or view.switches:
        anchors, kept = anchor_history(view.switches)
        slices["anchor"] = (
            {"anchors": anchors, "switches": kept},
            {"current_anchor_ref": head_anchor_ref(view.anchor_base, view.pen_head, view.pens)},
        )
    return slices


def slices_payload(series_id: str, view: FactorView) -> dict[str, Any]:
    """Return the ``GET /api/factor/slices`` body for a view."""
    candle_id = f"{series_id}:{view.at_time}"
    slices = _factor_slices(view)
    names = [name for name in FACTOR_NAMES if name in slices]
    snapshots = {
        name: {
            "schema_version": 1,
            "history": slices[name][0],
            "head": slices[name][1],
            "meta": {
                "series_id": series_id, "epoch": 0, "at_time": view.at_time,
                "candle_id": candle_id, "factor_name": name,
            },
        }
        for name in names
    }
    return {
        "schema_version": 1, "series_id": series_id, "at_time": view.at_time,
        "candle_id": candle_id, "factors": names, "snapshots": snapshots,
    }


def empty_slices(series_id: str, requested_time: int) -> dict[str, Any]:
    """Return the body for a series with no candle at or before ``requested_time``."""
    return {
        "schema_version": 1, "series_id": series_id, "at_time": requested_time,
        "candle_id": None, "factors": [], "snapshots": {},
    }
