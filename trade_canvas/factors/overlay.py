"""The draw window of one series, kept decoded in memory and updated per fold (pure).

``draw.render(build_view(...))`` decodes and renders every event of the window; done after each
closed candle, that was most of the factor actor's work and grew with the window. An
``Overlay`` keeps the window's event payloads decoded and each instruction built once, and a
fold rebuilds only what it can change:

- markers and dead zones: built once when their event arrives, dropped when it leaves the window;
- the confirmed pen line: when a pen enters or leaves the window, or the window start passes the
  end of the oldest pen drawn;
- the anchor history: when a switch enters or leaves the window, or the current anchor moves;
- the heads (pen extending/candidate, alive zone, current anchor): every fold, from the state.

Which instructions are active (a marker time or a point inside the window) is kept as a set:
new and changed instructions are tested once, and expiry runs through a heap keyed by each
instruction's last point time, so a fold costs what it changes, not the window's size.

The result of every fold equals ``render`` + ``changed`` + ``active_ids`` over the same window
(``tests/actors/test_factor_golden.py`` pins it on real data). Unlike the frozen values elsewhere
in ``factors/``, this is a mutable working set: one actor owns it and never shares it.

Usage::

    overlay = Overlay(step_seconds, window_candles)
    overlay.load(window_events, state)          # on resume; returns nothing to store
    change = overlay.advance(state, new_events)  # after each fold
    store change.changed (new versions); push change.changed ids + change.removed_ids
"""

from __future__ import annotations

import collections
import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from trade_canvas.factors import draw
from trade_canvas.factors.draw import Instruction
from trade_canvas.factors.engine import FactorState
from trade_canvas.factors.events import FactorEvent
from trade_canvas.factors.pen import pen_head
from trade_canvas.factors.slices import drawn_anchor
from trade_canvas.factors.zhongshu import alive_head

Payload = dict[str, Any]
HEAD_IDS = {
    "pen": ("pen.extending", "pen.candidate"),
    "alive": ("zhongshu.alive:top", "zhongshu.alive:bottom"),
    "anchor": ("anchor.current",),
}


@dataclass(frozen=True, slots=True)
class _Entry:
    candle_time: int
    payload: Payload
    drawn: tuple[Instruction, ...]


@dataclass(frozen=True, slots=True)
class OverlayChange:
    """What one fold changed.

    ``changed`` are the instructions whose definition is new (sorted by id: store them as new
    versions in this order); ``removed_ids`` are ids a client holding the previous active set
    plus ``changed`` must drop; ``added_ids`` are ids that became active without a new definition
    (rare: an instruction whose points lay ahead of the head), which a diff cannot express.
    """

    changed: list[Instruction]
    removed_ids: list[str]
    added_ids: list[str]

    @property
    def empty(self) -> bool:
        """True when no client's overlay would change."""
        return not (self.changed or self.removed_ids or self.added_ids)


class Overlay:
    """The drawn instructions of one series' window, maintained fold by fold."""

    def __init__(self, step_seconds: int, window_candles: int) -> None:
        self.span = step_seconds * window_candles
        self._reset()

    def _reset(self) -> None:
        self.current: dict[str, Instruction] = {}
        self.active: set[str] = set()
        self._events: dict[str, collections.deque[_Entry]] = collections.defaultdict(
            collections.deque
        )
        self._refs: collections.Counter[str] = collections.Counter()  # event-drawn ids
        self._history_ids: set[str] = set()
        self._head_inputs: dict[str, Any] = {}  # what each head part was last drawn from
        self._pen_min_end: int | None = None
        self._anchor_start: int | None = None
        self._expiry: list[tuple[int, int, str, Instruction]] = []
        self._ahead: dict[str, Instruction] = {}  # instructions with a point after the head
        self._seq = itertools.count()

    def active_ids(self) -> list[str]:
        """Return the sorted ids of the active instructions."""
        return sorted(self.active)

    def load(self, events: Iterable[FactorEvent], state: FactorState) -> None:
        """Start from a resumed state and the stored events of its window."""
        self._reset()
        self.advance(state, events)

    def advance(self, state: FactorState, events: Iterable[FactorEvent]) -> OverlayChange:
        """Fold in the new ``events`` and the heads of ``state``; return what changed."""
        head = state.head_time
        if head is None:
            return OverlayChange([], [], [])
        start = head - self.span
        updates: dict[str, Instruction | None] = {}
        dirty = self._evict(start, updates)
        dirty |= self._add(events, updates)
        if "pen.confirmed" in dirty or (self._pen_min_end is not None
                                        and self._pen_min_end < start):
            self._pen_line(start, head, updates)
        anchor = self._heads(state, head, updates)
        anchor_start = None if anchor is None else anchor["start_time"]
        if "anchor.switch" in dirty or anchor_start != self._anchor_start:
            self._anchor_start = anchor_start
            self._history(anchor, updates)
        return self._apply(updates, start, head)

    # -- what the fold rebuilds

    def _evict(self, start: int, updates: dict[str, Instruction | None]) -> set[str]:
        dirty = set()
        for kind, entries in self._events.items():
            while entries and entries[0].candle_time < start:
                entry = entries.popleft()
                dirty.add(kind)
                for ins in entry.drawn:
                    ident = ins.instruction_id
                    self._refs[ident] -= 1
                    if self._refs[ident] <= 0:  # no other event in the window draws it
                        del self._refs[ident]
                        updates[ident] = None
        return dirty

    def _add(self, events: Iterable[FactorEvent], updates: dict[str, Instruction | None]) -> set[str]:
        dirty = set()
        for event in events:
            payload = event.payload()
            drawn = tuple(draw.event_instructions(event.kind, payload))
            self._events[event.kind].append(_Entry(event.candle_time, payload, drawn))
            dirty.add(event.kind)
            for ins in drawn:
                self._refs[ins.instruction_id] += 1
                updates[ins.instruction_id] = ins
        return dirty

    def _pen_line(self, start: int, head: int, updates: dict[str, Instruction | None]) -> None:
        pens = [entry.payload for entry in self._events["pen.confirmed"]]
        line = draw.confirmed_pen_line(pens, start, head)
        ends = [p["end_time"] for p in pens if p["end_time"] >= start]
        self._pen_min_end = min(ends) if ends else None
        updates["pen.confirmed"] = line[0] if line else None

    def _heads(
        self, state: FactorState, head: int, updates: dict[str, Instruction | None]
    ) -> Payload | None:
        pens = pen_head(state.pen)
        anchor = drawn_anchor(state.anchor.current, pens)
        alive = alive_head(state.zhongshu.alive, head)["alive"]
        parts: dict[str, tuple[Any, Callable[[], list[Instruction]]]] = {
            "pen": ((pens["extending"], pens["candidate"]), lambda: draw.pen_head_lines(pens, head)),
            "alive": (alive, lambda: draw.alive_zone_lines(alive, head)),
            "anchor": (anchor, lambda: draw.current_anchor_line(anchor, head)),
        }
        for name, (inputs, render) in parts.items():
            if self._head_inputs.get(name, self) == inputs:
                continue  # same inputs, same definitions: nothing to encode
            self._head_inputs[name] = inputs
            fresh = {ins.instruction_id: ins for ins in render()}
            for ident in HEAD_IDS[name]:
                updates[ident] = fresh.get(ident)
        return anchor

    def _history(self, anchor: Payload | None, updates: dict[str, Instruction | None]) -> None:
        switches = sorted((entry.payload for entry in self._events["anchor.switch"]),
                          key=lambda row: (row["visible_time"], row["switch_time"]))
        fresh = {ins.instruction_id: ins for ins in draw.anchor_history_lines(switches, anchor)}
        for ident in self._history_ids - fresh.keys():
            updates[ident] = None
        self._history_ids = set(fresh)
        updates.update(fresh)

    # -- applying the fold: definitions, then the active set

    def _apply(
        self, updates: dict[str, Instruction | None], start: int, head: int
    ) -> OverlayChange:
        before: dict[str, bool] = {}  # id -> was it active before this fold (first touch only)
        changed: list[Instruction] = []
        for ident, ins in updates.items():
            old = self.current.get(ident)
            if ins is None:
                if old is not None:
                    del self.current[ident]
                    self._ahead.pop(ident, None)
                    self._set_active(ident, False, before)
                continue
            if old is not None and old.definition_json == ins.definition_json:
                continue
            self.current[ident] = ins
            changed.append(ins)
            self._classify(ins, start, head, before)
        for ins in list(self._ahead.values()):
            self._classify(ins, start, head, before)
        self._expire(start, before)
        changed.sort(key=lambda ins: ins.instruction_id)
        changed_ids = {ins.instruction_id for ins in changed}
        removed = {i for i, was in before.items() if was and i not in self.active}
        removed |= {i for i in changed_ids if i not in self.active}
        added = [i for i, was in before.items()
                 if not was and i in self.active and i not in changed_ids]
        return OverlayChange(changed, sorted(removed), sorted(added))

    def _classify(self, ins: Instruction, start: int, head: int, before: dict[str, bool]) -> None:
        ident = ins.instruction_id
        last = max(ins.times, default=start - 1)
        if last > head or ins.visible_time > head:
            self._ahead[ident] = ins
        else:
            self._ahead.pop(ident, None)
        active = draw.in_window(ins, start, head)
        if active and last <= head:
            heapq.heappush(self._expiry, (last, next(self._seq), ident, ins))
        self._set_active(ident, active, before)

    def _set_active(self, ident: str, active: bool, before: dict[str, bool]) -> None:
        before.setdefault(ident, ident in self.active)
        if active:
            self.active.add(ident)
        else:
            self.active.discard(ident)

    def _expire(self, start: int, before: dict[str, bool]) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < start:
            _, _, ident, ins = heapq.heappop(expiry)
            if self.current.get(ident) is ins and ident in self.active:
                self._set_active(ident, False, before)

