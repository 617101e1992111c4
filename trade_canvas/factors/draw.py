"""Draw instructions (chart overlay) rendered from a :class:`FactorView`, and the draw delta (pure).

``render(view, window_start)`` returns every instruction that should exist at ``view.at_time``
(ids and styles follow factors.md §4.2). The overlay writer keeps a version per change:

    current = render(build_view(to_time, rows, candles, state), to_time - window*tf)
    for ins in changed(latest_definitions, current): insert version (version_id, ins...)
    active  = active_ids(current, to_time - window*tf, to_time)

and ``GET /api/draw/delta`` answers ``draw_delta_payload(series_id, to_time, cursor, patch,
active)`` with ``patch`` = stored versions with ``version_id > cursor`` and ``visible_time <=
to_time`` (ascending). Because ``active_ids`` comes from the current render, an instruction that
is no longer drawn (an alive zone that died) is retired at once; the earlier backend kept it
active and answered 409 until a new zone formed (factors.md §6.3). ``next_cursor`` is the last
version in the patch, never beyond what was sent.

Instruction ids::

    pivot.major:{pivot_time}:{direction}:{window}   marker
    pivot.minor:{pivot_time}:{direction}:{window}   marker
    anchor.switch:{switch_time}:{new_dir}:{reason}  marker
    pen.confirmed | pen.extending | pen.candidate   polyline
    zhongshu.dead:{start}:{end}:{zg:.6f}:{zd:.6f}:top|bottom   polyline
    zhongshu.alive:top|bottom                       polyline
    anchor.current                                  polyline
    anchor.history:{switch_time}:{start}:{end}:{dir}  polyline
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from trade_canvas.factors.events import encode_payload
from trade_canvas.factors.slices import FactorView, Payload, anchor_history

WHITE = "#ffffff"
AMBER = "#f59e0b"
MARKER_COLORS = {
    ("pivot.major", "resistance"): "#ef4444",
    ("pivot.major", "support"): "#22c55e",
    ("pivot.minor", "resistance"): "rgba(239,68,68,0.6)",
    ("pivot.minor", "support"): "rgba(34,197,94,0.6)",
}
DEAD_COLORS = {1: "rgba(74,222,128,0.58)", -1: "rgba(248,113,113,0.58)"}
ALIVE_COLORS = {1: "rgba(22,163,74,0.72)", -1: "rgba(220,38,38,0.72)"}
HISTORY_COLOR = "rgba(59,130,246,0.55)"


@dataclass(frozen=True, slots=True)
class Instruction:
    """One drawable: ``kind`` is ``marker`` or ``polyline``; the definition is canonical JSON.

    ``times`` are the marker's time or the polyline's point times (what the window test reads),
    kept beside the JSON so that deciding whether an instruction is drawn needs no decoding.
    """

    instruction_id: str
    kind: str
    visible_time: int
    definition_json: str
    times: tuple[int, ...] = field(default=(), compare=False)

    def definition(self) -> dict[str, Any]:
        """Return a fresh dict of the definition."""
        decoded: dict[str, Any] = json.loads(self.definition_json)
        return decoded


def _make(instruction_id: str, kind: str, visible_time: int, definition: Payload) -> Instruction:
    if kind == "marker":
        times: tuple[int, ...] = (definition["time"],)
    else:
        times = tuple(point["time"] for point in definition["points"])
    return Instruction(instruction_id, kind, visible_time, encode_payload(definition), times)


def _pivot_markers(feature: str, pivots: Sequence[Payload], size: float) -> list[Instruction]:
    result = []
    for p in pivots:
        is_top = p["direction"] == "resistance"
        definition = {
            "type": "marker", "feature": feature, "time": p["pivot_time"],
            "position": "aboveBar" if is_top else "belowBar",
            "color": MARKER_COLORS[(feature, p["direction"])],
            "shape": "circle", "text": "", "size": size,
        }
        ident = f"{feature}:{p['pivot_time']}:{p['direction']}:{p['window']}"
        result.append(_make(ident, "marker", p["visible_time"], definition))
    return result


def _switch_markers(switches: Sequence[Payload]) -> list[Instruction]:
    result = []
    for row in switches:
        up = row["new_anchor"]["direction"] >= 0
        definition = {
            "type": "marker", "feature": "anchor.switch", "time": row["switch_time"],
            "position": "belowBar" if up else "aboveBar",
            "color": AMBER, "shape": "arrowUp" if up else "arrowDown", "text": "A", "size": 1,
        }
        ident = f"anchor.switch:{row['switch_time']}:{row['new_anchor']['direction']}:{row['reason']}"
        result.append(_make(ident, "marker", row["switch_time"], definition))
    return result


def _polyline(
    ident: str, feature: str, visible_time: int, points: list[tuple[int, float]], color: str,
    width: int, dashed: bool = False, entry_direction: int | None = None,
) -> list[Instruction]:
    if len(points) < 2:
        return []
    definition: Payload = {
        "type": "polyline", "feature": feature, "color": color, "lineWidth": width,
        "points": [{"time": t, "value": v} for t, v in points],
    }
    if dashed:
        definition["lineStyle"] = "dashed"
    if entry_direction is not None:
        definition["entryDirection"] = entry_direction
    return [_make(ident, "polyline", visible_time, definition)]


def confirmed_pen_line(
    pens: Iterable[Payload], window_start: int, at_time: int
) -> list[Instruction]:
    """Return the ``pen.confirmed`` polyline through the pens that reach into the window."""
    chosen = sorted(
        (p for p in pens if p["end_time"] >= window_start and p["start_time"] <= at_time),
        key=lambda p: (p["start_time"], p["visible_time"]),
    )
    points: list[tuple[int, float]] = []
    for p in chosen:
        if not points or points[-1] != (p["start_time"], p["start_price"]):
            points.append((p["start_time"], p["start_price"]))
        points.append((p["end_time"], p["end_price"]))
    return _polyline("pen.confirmed", "pen.confirmed", at_time, points, WHITE, 2)


def pen_head_lines(pen_head: Mapping[str, Any], at_time: int) -> list[Instruction]:
    """Return the dashed ``pen.extending`` and ``pen.candidate`` lines of the pen head."""
    result = []
    for part in ("extending", "candidate"):
        seg = pen_head.get(part)
        if seg is not None:
            line = [(seg["start_time"], seg["start_price"]), (seg["end_time"], seg["end_price"])]
            result += _polyline(f"pen.{part}", f"pen.{part}", at_time, line, WHITE, 2, True)
    return result


def _zone_lines(
    prefix: str, zone: Payload, visible_time: int, colors: Mapping[int, str]
) -> list[Instruction]:
    direction = 1 if zone["entry_direction"] >= 0 else -1
    result = []
    for side, price in (("top", zone["zg"]), ("bottom", zone["zd"])):
        line = [(zone["start_time"], price), (zone["end_time"], price)]
        result += _polyline(
            f"{prefix}:{side}", prefix.split(":")[0], visible_time, line, colors[direction], 1,
            entry_direction=zone["entry_direction"],
        )
    return result


def dead_zone_lines(zone: Payload) -> list[Instruction]:
    """Return the top and bottom lines of one dead zone."""
    prefix = (
        f"zhongshu.dead:{zone['start_time']}:{zone['end_time']}:"
        f"{zone['zg']:.6f}:{zone['zd']:.6f}"
    )
    return _zone_lines(prefix, zone, zone["visible_time"], DEAD_COLORS)


def alive_zone_lines(alive: Iterable[Payload], at_time: int) -> list[Instruction]:
    """Return the top and bottom lines of the alive zone (none without one)."""
    result = []
    for zone in alive:
        result += _zone_lines("zhongshu.alive", zone, at_time, ALIVE_COLORS)
    return result


def _zhongshu_lines(view: FactorView) -> list[Instruction]:
    result = []
    for zone in view.dead:
        result += dead_zone_lines(zone)
    return result + alive_zone_lines(view.alive, view.at_time)


def current_anchor_line(current: Payload | None, at_time: int) -> list[Instruction]:
    """Return the ``anchor.current`` line (dashed while the anchor is a candidate)."""
    if current is None:
        return []
    line = [(current["start_time"], current["start_price"]),
            (current["end_time"], current["end_price"])]
    dashed = current["kind"] == "candidate"
    return _polyline("anchor.current", "anchor.current", at_time, line, AMBER, 2, dashed)


def anchor_history_lines(
    switches: Sequence[Payload], current: Payload | None
) -> list[Instruction]:
    """Return one line per earlier anchor (``switches`` sorted as in a view), except the current."""
    result: list[Instruction] = []
    anchors, kept = anchor_history(switches)
    for ref, row in zip(anchors, kept):
        if current is not None and ref["start_time"] == current["start_time"]:
            continue
        ident = (
            f"anchor.history:{row['switch_time']}:{ref['start_time']}:{ref['end_time']}:"
            f"{ref['direction']}"
        )
        line = [(ref["start_time"], ref["start_price"]), (ref["end_time"], ref["end_price"])]
        result += _polyline(
            ident, "anchor.history", max(1, row["switch_time"]), line, HISTORY_COLOR, 1
        )
    return result


def event_instructions(kind: str, payload: Payload) -> list[Instruction]:
    """Return what one ledger event draws by itself (markers, dead zones); [] for the others."""
    if kind == "pivot.major":
        return _pivot_markers("pivot.major", (payload,), 1.0)
    if kind == "pivot.minor":
        return _pivot_markers("pivot.minor", (payload,), 0.5)
    if kind == "anchor.switch":
        return _switch_markers((payload,))
    if kind == "zhongshu.dead":
        return dead_zone_lines(payload)
    return []


def render(view: FactorView, window_start: int) -> list[Instruction]:
    """Return every instruction drawn at ``view.at_time``, sorted by id."""
    result = (
        _pivot_markers("pivot.major", view.majors, 1.0)
        + _pivot_markers("pivot.minor", view.minors, 0.5)
        + _switch_markers(view.switches)
        + confirmed_pen_line(view.pens, window_start, view.at_time)
        + pen_head_lines(view.pen_head, view.at_time)
        + _zhongshu_lines(view)
        + current_anchor_line(view.anchor_current, view.at_time)
        + anchor_history_lines(view.switches, view.anchor_current)
    )
    return sorted(result, key=lambda ins: ins.instruction_id)


def changed(latest: Mapping[str, str], current: Iterable[Instruction]) -> list[Instruction]:
    """Return the instructions whose definition differs from ``latest`` (id -> definition_json)."""
    return [ins for ins in current if latest.get(ins.instruction_id) != ins.definition_json]


def in_window(ins: Instruction, window_start: int, to_time: int) -> bool:
    """Return whether the instruction is visible by ``to_time`` and touches the window."""
    return ins.visible_time <= to_time and any(window_start <= t <= to_time for t in ins.times)


def active_ids(current: Iterable[Instruction], window_start: int, to_time: int) -> list[str]:
    """Return the sorted ids of drawn instructions with a marker time or a point in the window."""
    return sorted(ins.instruction_id for ins in current if in_window(ins, window_start, to_time))


def draw_delta_payload(
    series_id: str, to_time: int, cursor_version_id: int,
    patch: Sequence[Mapping[str, Any]], active: Sequence[str],
) -> dict[str, Any]:
    """Return the ``GET /api/draw/delta`` body.

    ``patch`` rows are ``{version_id, instruction_id, kind, visible_time, definition}``, already
    filtered to ``version_id > cursor`` and ``visible_time <= to_time``, ascending.
    """
    last = max((int(row["version_id"]) for row in patch), default=cursor_version_id)
    return {
        "schema_version": 1, "series_id": series_id,
        "to_candle_id": f"{series_id}:{to_time}", "to_candle_time": to_time,
        "active_ids": list(active), "instruction_catalog_patch": [dict(row) for row in patch],
        "series_points": {}, "next_cursor": {"version_id": last, "point_time": None},
    }


def empty_draw_delta(series_id: str, cursor_version_id: int) -> dict[str, Any]:
    """Return the body when there is nothing to draw up to the requested time."""
    return {
        "schema_version": 1, "series_id": series_id, "to_candle_id": None,
        "to_candle_time": None, "active_ids": [], "instruction_catalog_patch": [],
        "series_points": {}, "next_cursor": {"version_id": cursor_version_id, "point_time": None},
    }
