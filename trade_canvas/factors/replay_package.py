"""Replay packages: the last N closed candles of a series with their overlay and slices (pure).

A package lets the chart replay a series bar by bar without calling the backend: the bars, the
draw instruction versions split into windows of ``window_size`` bars, and factor snapshots.

Per window (first bar time ``s``, last ``e``; index ``i`` counts bars from 0)::

    draw_catalog_base    latest version <= s of each relevant instruction
    draw_catalog_patch   every relevant version with s < visible_time <= e
                         (both sorted by (visible_time, version_id, instruction_id))
    draw_active_checkpoints  the full active id list at start_idx and every
                             snapshot_interval-th index after it
    draw_active_diffs        {at_idx, add_ids, remove_ids} where the active set changed between

A marker is relevant when its time lies in the package's ``[from, to]``, a polyline when its
points' span overlaps it; an instruction with one relevant version keeps all its versions (so a
line that moves out of the package is retired rather than left drawn). At bar time ``t`` an instruction is active when its latest version
``<= t`` is a marker with time in ``[from, t]`` or a polyline whose largest point time is
``>= from`` and smallest ``<= t``: the cut-off is the package start.

Factor snapshots are the ``GET /api/factor/slices`` entries at each bar, computed from the same
ledger rows. A factor gets a row only when its snapshot changed. Unlike the earlier backend,
fields that merely restate the bar time (``meta``, and the alive zone's ``end_time`` and
``visible_time``, which follow the bar) do not count as a change; otherwise every factor had a
row at every bar and packages grew without bound. A window's answer carries its own rows plus,
per factor, the latest row before it (the baseline), sorted by ``(candle_time, factor_name)``.
The history cut-off of the snapshots is the package start as well (the draw rule's), so rows
stay small; the chart reads the pen heads, confirmed pens and anchor from them.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson

from trade_canvas.candles import Candle
from trade_canvas.factors.engine import FactorState
from trade_canvas.factors.events import FactorEvent
from trade_canvas.factors.slices import build_view, slices_payload
from trade_canvas.series import Timeframe

SCHEMA_VERSION = 1
KEY_TAGS = ("replay_package_v1", "factor_snapshots_v2")
# Keys each known factor can show, for ``metadata.factor_schema``.
KNOWN_FACTORS = ("anchor", "pen", "pivot", "sr", "zhongshu")


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """What a build was asked for; ``to`` is a stored candle time."""

    series_id: str
    timeframe_s: int
    to: int
    window_candles: int
    window_size: int
    snapshot_interval: int


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One stored draw version with its definition decoded."""

    version_id: int
    instruction_id: str
    kind: str
    visible_time: int
    definition: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the catalog row shape."""
        return {"version_id": self.version_id, "instruction_id": self.instruction_id,
                "kind": self.kind, "visible_time": self.visible_time,
                "definition": self.definition}


def cache_key(spec: PackageSpec, candle_head: int, factor_head: int, last_version: int) -> str:
    """Return the package key: 24 hex digits over the request and the ledgers' marks."""
    material = {
        "tags": list(KEY_TAGS), "series_id": spec.series_id, "to": spec.to,
        "window_candles": spec.window_candles, "window_size": spec.window_size,
        "snapshot_interval": spec.snapshot_interval, "preload_offset": 0,
        "candle_head": candle_head, "factor_head": factor_head, "last_version": last_version,
    }
    digest = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:24]


def _span(row: VersionRow) -> tuple[int, int] | None:
    if row.kind == "marker":
        t = int(row.definition.get("time", 0))
        return t, t
    points = row.definition.get("points") or []
    if not points:
        return None
    times = [int(p["time"]) for p in points]
    return min(times), max(times)


def _relevant(row: VersionRow, start: int, end: int) -> bool:
    span = _span(row)
    if row.kind not in ("marker", "polyline"):
        return True
    return span is not None and span[1] >= start and span[0] <= end


def _active_from(row: VersionRow, start: int) -> int | None:
    """Return the first bar time at which the version is active (None: never)."""
    if row.kind not in ("marker", "polyline"):
        return row.visible_time
    span = _span(row)
    if span is None or span[1] < start:
        return None
    return max(row.visible_time, span[0])


def _sort_key(row: VersionRow) -> tuple[int, int, str]:
    return row.visible_time, row.version_id, row.instruction_id


def draw_windows(
    times: Sequence[int], versions: Iterable[VersionRow], window_size: int, interval: int
) -> list[dict[str, Any]]:
    """Return each window's draw part: catalog base and patch, checkpoints and diffs."""
    start, end = times[0], times[-1]
    shown = [v for v in versions if v.visible_time <= end]
    # every version of an instruction that is relevant once, so a move out of the package
    # retires it instead of leaving its last relevant version drawn
    relevant = {v.instruction_id for v in shown if _relevant(v, start, end)}
    rows = sorted((v for v in shown if v.instruction_id in relevant), key=_sort_key)
    result = []
    latest: dict[str, VersionRow] = {}
    active_since: dict[str, int] = {}
    cursor = 0
    for w0 in range(0, len(times), window_size):
        first = times[w0]
        while cursor < len(rows) and rows[cursor].visible_time <= first:
            _apply(rows[cursor], latest, active_since, start)
            cursor += 1
        base = sorted(latest.values(), key=_sort_key)
        patch: list[VersionRow] = []
        checkpoints: list[dict[str, Any]] = []
        diffs: list[dict[str, Any]] = []
        previous: list[str] | None = None
        for i in range(w0, min(len(times), w0 + window_size)):
            t = times[i]
            while cursor < len(rows) and rows[cursor].visible_time <= t:
                patch.append(rows[cursor])
                _apply(rows[cursor], latest, active_since, start)
                cursor += 1
            active = sorted(k for k, since in active_since.items() if since <= t)
            if (i - w0) % interval == 0:
                checkpoints.append({"at_idx": i, "active_ids": active})
            elif active != previous and previous is not None:
                old, new = set(previous), set(active)
                diffs.append({"at_idx": i, "add_ids": sorted(new - old),
                              "remove_ids": sorted(old - new)})
            previous = active
        result.append({
            "draw_catalog_base": [v.to_dict() for v in base],
            "draw_catalog_patch": [v.to_dict() for v in patch],
            "draw_active_checkpoints": checkpoints, "draw_active_diffs": diffs,
        })
    return result


def _apply(
    row: VersionRow, latest: dict[str, VersionRow], active_since: dict[str, int], start: int
) -> None:
    latest[row.instruction_id] = row
    since = _active_from(row, start)
    if since is None:
        active_since.pop(row.instruction_id, None)
    else:
        active_since[row.instruction_id] = since


class _Row:
    """A ledger row with its payload decoded once (``build_view`` reads it at every bar)."""

    __slots__ = ("kind", "candle_time", "_payload")

    def __init__(self, event: FactorEvent) -> None:
        self.kind = event.kind
        self.candle_time = event.candle_time
        self._payload = orjson.loads(event.payload_json)

    def payload(self) -> dict[str, Any]:
        return self._payload  # type: ignore[no-any-return]


def _change_key(name: str, snapshot: Mapping[str, Any]) -> bytes:
    head = snapshot["head"]
    if name == "zhongshu":
        head = {"alive": [{k: v for k, v in z.items() if k not in ("end_time", "visible_time")}
                          for z in head.get("alive", [])]}
    return orjson.dumps([snapshot["history"], head])


# History rows kept in a package snapshot: those that reach into the package (see the module doc).
_HISTORY_END = {"major": "pivot_time", "minor": "pivot_time", "confirmed": "end_time",
                "dead": "end_time"}


def _trim(snapshot: dict[str, Any], start: int) -> dict[str, Any]:
    history = {
        key: [row for row in rows if row[_HISTORY_END[key]] >= start]
        if key in _HISTORY_END else rows
        for key, rows in snapshot["history"].items()
    }
    return dict(snapshot, history=history)


def factor_rows(
    series_id: str, bars: Sequence[Candle], events: Sequence[FactorEvent],
    history: Sequence[Candle], state: FactorState | None, window_candles: int, tf: Timeframe,
    pause: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """Return the deduplicated factor snapshot rows at every bar, ascending.

    ``events`` are the ledger rows from ``window_candles`` before the package start on, in
    time order (an alive zone's older formed event first), ``history`` the candles of the same
    span, and ``state`` the engine state at the last bar (or None). Heads are computed exactly
    as the slices read does; history lists keep the rows that reach into the package. ``pause``
    runs every 100 bars (a cooperative yield under gevent).
    """
    rows = [_Row(e) for e in events]
    event_times = [r.candle_time for r in rows]
    formed = [r for r in rows if r.kind == "zhongshu.formed"]
    formed_times = [r.candle_time for r in formed]
    candle_times = [c.candle_time for c in history]
    start = bars[0].candle_time
    last: dict[str, bytes] = {}
    result: list[dict[str, Any]] = []
    for n, bar in enumerate(bars):
        t = bar.candle_time
        window_start = tf.window_start(t, window_candles)
        lo = bisect.bisect_left(event_times, window_start)
        visible = rows[lo:bisect.bisect_right(event_times, t)]
        k = bisect.bisect_right(formed_times, t) - 1
        if k >= 0 and formed[k].candle_time < window_start:
            visible = [formed[k], *visible]  # the alive zone may have formed before the window
        lo = bisect.bisect_left(candle_times, window_start)
        candles = history[lo:bisect.bisect_right(candle_times, t)]
        at_head = state if state is not None and state.head_time == t else None
        body = slices_payload(series_id, build_view(t, visible, candles, at_head))  # type: ignore[arg-type]
        for name in body["factors"]:
            snapshot = _trim(body["snapshots"][name], start)
            key = _change_key(name, snapshot)
            if last.get(name) != key:
                last[name] = key
                result.append({"factor_name": name, "candle_time": t, "snapshot": snapshot})
        if n % 100 == 99:
            pause()
    return result


def factor_schema(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return ``metadata.factor_schema``: per factor the keys seen in its history and head."""
    seen: dict[str, tuple[set[str], set[str]]] = {name: (set(), set()) for name in KNOWN_FACTORS}
    for row in rows:
        history, head = seen.setdefault(row["factor_name"], (set(), set()))
        history.update(row["snapshot"]["history"])
        head.update(row["snapshot"]["head"])
    return [{"factor_name": name, "history_keys": sorted(keys[0]), "head_keys": sorted(keys[1])}
            for name, keys in sorted(seen.items())]


def metadata(spec: PackageSpec, bars: Sequence[Candle], schema: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the package's ``metadata`` block."""
    return {
        "schema_version": SCHEMA_VERSION, "series_id": spec.series_id,
        "timeframe_s": spec.timeframe_s, "total_candles": len(bars),
        "from_candle_time": bars[0].candle_time, "to_candle_time": bars[-1].candle_time,
        "window_size": spec.window_size, "snapshot_interval": spec.snapshot_interval,
        "preload_offset": 0, "idx_to_time": "windows[*].kline[idx].time",
        "factor_schema": schema,
    }


def _window_row(row: Mapping[str, Any], first: int) -> Mapping[str, Any]:
    # Pivots change every few bars and each row repeats the whole list: a window's rows keep
    # only the pivots of the window itself (the overlay draws every pivot from its markers).
    if row["factor_name"] != "pivot":
        return row
    snapshot = row["snapshot"]
    history = {key: [p for p in pivots if p["pivot_time"] >= first]
               for key, pivots in snapshot["history"].items()}
    return dict(row, snapshot=dict(snapshot, history=history))


def window_bodies(
    key: str, bars: Sequence[Candle], draws: Sequence[dict[str, Any]],
    rows: Sequence[Mapping[str, Any]], window_size: int,
) -> list[dict[str, Any]]:
    """Return each window's ``GET /api/replay/window`` body."""
    row_times = [r["candle_time"] for r in rows]
    bodies = []
    for w, draw in enumerate(draws):
        chunk = bars[w * window_size:(w + 1) * window_size]
        first, last = chunk[0].candle_time, chunk[-1].candle_time
        inside = list(rows[bisect.bisect_left(row_times, first):bisect.bisect_right(row_times, last)])
        baseline: dict[str, Mapping[str, Any]] = {}
        for row in rows[:bisect.bisect_left(row_times, first)]:
            baseline[row["factor_name"]] = row
        snapshots = sorted((_window_row(r, first) for r in [*baseline.values(), *inside]),
                           key=lambda r: (r["candle_time"], r["factor_name"]))
        window = {
            "window_index": w, "start_idx": w * window_size,
            "end_idx": w * window_size + len(chunk),
            "kline": [{"time": c.candle_time, "open": c.open, "high": c.high, "low": c.low,
                       "close": c.close, "volume": c.volume} for c in chunk],
            **draw,
        }
        bodies.append({"job_id": key, "window": window, "factor_snapshots": snapshots})
    return bodies
