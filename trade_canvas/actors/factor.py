"""FactorActor: folds one series' stored candles through the factor engine, stores and pushes.

Resume is O(1): ``on_start`` loads the series' engine snapshot and continues from its
``head_time``; nothing is replayed. The snapshot carries the fingerprint of the logic that built
it. When it differs from the running one and ``TRADE_CANVAS_ENABLE_FACTOR_FINGERPRINT_REBUILD``
is on, the series' factor data (never its candles) is cleared and recomputed from the newest
``TRADE_CANVAS_FACTOR_REBUILD_KEEP_CANDLES`` stored candles, then subscribers get a
``factor.rebuild`` system message. A series without a snapshot is simply computed (no message).

Long work (a rebuild, a first batch of thousands of candles, catching up after a restart) runs
in chunks of ``chunk`` candles read from the store: after each chunk the actor yields
(``time.sleep(0)``, a gevent switch in the server) and tells itself ``ContinueFactors``, so other
series, ingest and requests run in between. ``CandlesStored`` arriving meanwhile only moves the
store head; the chunk loop reads those candles from the store.

Every batch is written in one transaction: the events, the new snapshot and the draw
instructions whose definition changed (new versions). Then one ``draw_delta`` message goes to
the hub, which encodes it once for all subscribers::

    {"type": "draw_delta", "series_id": S, "schema_version": 1,
     "to_candle_id": "S:T", "to_candle_time": T, "from_version_id": 41,
     "active_ids": [...], "instruction_catalog_patch": [{version_id, instruction_id, kind,
     visible_time, definition}], "series_points": {}, "next_cursor": {"version_id": 57,
     "point_time": null}}

A client whose cursor is not ``from_version_id`` missed something and asks
``GET /api/draw/delta`` with its own cursor instead of applying the patch.

Candles at or before the factor head (history rewrites, or candles the catch-up already read)
are skipped and counted: the ledger is append-only, and a corrected old candle takes effect at
the next rebuild (change ``TRADE_CANVAS_FACTOR_LOGIC_VERSION`` to force one). Recomputing from a
rewritten candle would rewrite already-published events and break clients' cursors.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pykka

from trade_canvas.actors.plumbing import ChildLink, RefLookup, report_failure, tell
from trade_canvas.actors.instruments import FACTOR_FOLD_SECONDS
from trade_canvas.actors.messages import (
    Broadcast,
    CandlesStored,
    ContinueFactors,
    Crash,
    DrawChanged,
    FactorCatchUp,
    FoldPending,
)
from trade_canvas.candles import Candle
from trade_canvas.config import Settings
from trade_canvas.errors import Fenced, InvalidInput
from trade_canvas.factors import draw, engine
from trade_canvas.factors.engine import FactorParams, FactorState
from trade_canvas.factors.events import FactorEvent
from trade_canvas.factors.fingerprint import fingerprint
from trade_canvas.factors.overlay import Overlay, OverlayChange
from trade_canvas.series import SeriesId
from trade_canvas.storage import CandleStore, DrawVersion, FactorSnapshot, Fence

logger = logging.getLogger(__name__)

CHUNK_PAUSE_S = 0.003

CHUNK_CANDLES = 500
# A catch-up slice folds candles for about this long before it renders, stores and yields.
SLICE_S = 0.003
SLICE_STEP_CANDLES = 32
# More new candles than this at once (a batch, a backfill page) are folded by the sliced
# catch-up loop from the store rather than in one go.
LIVE_FOLD_CANDLES = 64
# Candles behind the head whose instructions are rendered and versioned on each batch. The
# window is a time span, DRAW_WINDOW_CANDLES * timeframe.seconds: for calendar months that uses
# the nominal 31-day month, so it is approximate (about 2030 months, where Binance has under 200).
DRAW_WINDOW_CANDLES = 2000


@dataclass(frozen=True, slots=True)
class FactorOptions:
    """What every factor actor of the process shares (the fingerprint is computed once)."""

    params: FactorParams
    fingerprint: str
    rebuild: bool
    keep_candles: int
    chunk: int = CHUNK_CANDLES
    coalesce_s: float = 0.0
    slice_s: float = SLICE_S


@functools.lru_cache(maxsize=4)
def factor_options(settings: Settings) -> FactorOptions:
    """Return the factor options of ``settings`` (hashing the factor sources once)."""
    params = FactorParams(settings.factor_pivot_window_major, settings.factor_pivot_window_minor)
    return FactorOptions(
        params, fingerprint(params, settings.factor_logic_version),
        settings.enable_factor_fingerprint_rebuild, settings.factor_rebuild_keep_candles,
        coalesce_s=settings.factor_coalesce_ms / 1000,
    )


class FactorActor(pykka.ThreadingActor):
    """Keeps one series' factor ledger, snapshot and draw versions level with its candles."""

    def __init__(
        self,
        series: SeriesId,
        store: CandleStore,
        lookup: RefLookup,
        link: ChildLink,
        options: FactorOptions,
        clock: Callable[[], float] = time.monotonic,
        fence: Fence | None = None,
    ) -> None:
        super().__init__()
        # Cluster mode: (node id, lease epoch). Every batch is written only while the series'
        # lease still has this epoch, so a process that lost the series can never write into
        # the ledger its new owner continues.
        self.fence = fence
        self.series = series
        self.sid = series.text
        self.step_s = series.timeframe.seconds  # nominal for months: window spans only
        self.store = store
        self.lookup = lookup
        self.link = link
        self.options = options
        self.state = engine.initial_state(options.params)
        self.fingerprint = options.fingerprint  # the one written with snapshots
        self.store_head: int | None = None
        # The draw window, decoded and rendered in memory: a fold rebuilds only what it changes.
        self.overlay = Overlay(self.step_s, DRAW_WINDOW_CANDLES)
        self.last_version = 0
        self.cursor: int | None = None  # catching up: fold stored candles after this time
        self.backlog: list[Candle] = []  # read from the store after the cursor, not folded yet
        self.backlog_full = False
        self.reread = False  # stored after the chunk in hand was read: read once more
        self.clock = clock
        self.pending: list[Candle] = []  # stored, not folded yet (coalescing)
        self.fold_due = False  # a FoldPending is on its way
        self.last_fold = -math.inf
        self.coalesced = 0  # folds that took more than one live write
        self.rebuilding = False
        self.rebuild_folded = 0
        self.rebuilds = 0
        self.skipped_old = 0
        self.stalled: str | None = None
        link.record.extra = self.status

    def status(self) -> dict[str, Any]:
        """Return the status-board fields: heads, lag and what the actor is doing."""
        head = self.state.head_time
        lag = None if head is None or self.store_head is None else max(0, self.store_head - head)
        candles = None if head is None or self.store_head is None else max(
            0, self.series.timeframe.steps_between(head, self.store_head))
        return {
            "head_time": head, "store_head_time": self.store_head, "lag_seconds": lag,
            "lag_candles": candles,
            "catching_up": self.cursor is not None, "rebuilding": self.rebuilding,
            "rebuilds": self.rebuilds, "old_candles_skipped": self.skipped_old,
            "pending_candles": len(self.pending), "coalesced_folds": self.coalesced,
            "stalled": self.stalled,
        }

    def on_start(self) -> None:
        self.store_head = self.store.head_time(self.sid)
        snapshot = self.store.read_factor_snapshot(self.sid)
        if snapshot is None:
            self._catch_up_from_tail()
        elif not self._resume(snapshot):
            self._start_rebuild()
        elif self.stalled is None and (self.store_head or 0) > (self.state.head_time or 0):
            self._schedule(self.state.head_time)
        logger.info("factor actor %s started at head %s (store head %s)",
                    self.sid, self.state.head_time, self.store_head)
        self.link.started()

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case CandlesStored():
                return self._on_stored(message.candles)
            case ContinueFactors():
                return self._continue()
            case FoldPending():
                self.fold_due = False
                return self._fold_pending()
            case FactorCatchUp():
                return self._catch_up_from_store()
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        logger.warning("factor actor %s ignored %r", self.sid, message)
        return None

    # -- start: resume, rebuild or first computation

    def _resume(self, snapshot: FactorSnapshot) -> bool:
        """Load the snapshot; False when it must be rebuilt."""
        matches = snapshot.fingerprint == self.options.fingerprint
        if not matches and self.options.rebuild:
            return False
        try:
            state = engine.state_from_json(snapshot.state_json)
        except InvalidInput as exc:
            return self._unusable(f"snapshot unreadable: {exc}")
        if state.params != self.options.params:
            return self._unusable("snapshot was built with other pivot windows")
        if not matches:
            logger.warning("factor logic of %s changed but rebuild is off; continuing the old "
                           "ledger (TRADE_CANVAS_ENABLE_FACTOR_FINGERPRINT_REBUILD=0)", self.sid)
            self.fingerprint = snapshot.fingerprint  # a later rebuild still sees the mismatch
        self.state = state
        self.last_version = self.store.last_draw_version(self.sid)
        window: list[FactorEvent] = []
        if state.head_time is not None:
            start = state.head_time - DRAW_WINDOW_CANDLES * self.step_s
            window = self.store.read_factor_events(self.sid, start, state.head_time)
        self.overlay.load(window, state)
        return True

    def _unusable(self, reason: str) -> bool:
        if self.options.rebuild:
            return False
        self.stalled = f"{reason}; enable TRADE_CANVAS_ENABLE_FACTOR_FINGERPRINT_REBUILD"
        logger.error("factor actor %s stalled: %s", self.sid, self.stalled)
        return True

    def _start_rebuild(self) -> None:
        self.store.clear_factor_data(self.sid)
        self.rebuilding = True
        self.rebuilds += 1
        self.rebuild_folded = 0
        logger.info("factor rebuild of %s started (fingerprint %s, newest %d candles)",
                    self.sid, self.options.fingerprint[:12], self.options.keep_candles)
        self._catch_up_from_tail()
        if self.cursor is None:
            self._finish_rebuild()

    def _catch_up_from_tail(self) -> None:
        self.state = engine.initial_state(self.options.params)
        self.overlay = Overlay(self.step_s, DRAW_WINDOW_CANDLES)
        self.last_version = self.store.last_draw_version(self.sid)
        tail = self.store.read_tail(self.sid, self.options.keep_candles)
        if tail:
            self._schedule(tail[0].candle_time - 1)

    def _finish_rebuild(self) -> None:
        self.rebuilding = False
        n = self.rebuild_folded
        logger.info("factor rebuild of %s done: %d candles", self.sid, n)
        tell(self.lookup("hub"), Broadcast({
            "type": "system", "series_id": self.sid, "event": "factor.rebuild",
            "message": f"factor logic changed; recomputed the newest {n} candles",
            "data": {"series_id": self.sid, "fingerprint": self.fingerprint, "candles": n},
        }))

    # -- folding candles

    def _schedule(self, after: int | None) -> None:
        self.cursor = after
        self.backlog = []
        self.actor_ref.tell(ContinueFactors())

    def _catch_up_from_store(self) -> None:
        """Another process stored candles this one was not given: fold what the store has."""
        if self.stalled is not None:
            return
        if self.cursor is not None:
            self.reread = True  # the chunk loop is running: one more read at its end
            return
        self._fold_pending()
        if self.state.head_time is None:
            self._catch_up_from_tail()
        else:
            self._schedule(self.state.head_time)

    def _continue(self) -> None:
        if self.cursor is None or self.stalled is not None:
            return
        if not self.backlog:  # read a chunk, fold it over several slices
            self.reread = False
            self.backlog = self.store.read_since(self.sid, self.cursor, self.options.chunk)
            self.backlog_full = len(self.backlog) == self.options.chunk
        candles = self.backlog
        folded = self._fold_slice(candles) if candles else 0
        self.backlog = candles[folded:]
        if folded:
            self.cursor = candles[folded - 1].candle_time
            self.store_head = max(self.store_head or 0, self.cursor)
        if self.backlog or self.backlog_full or self.reread:
            # Catching up is background work: between slices, give ingest, reads and other
            # series a moment (under gevent this sleep is a cooperative pause, not a block).
            time.sleep(CHUNK_PAUSE_S)
            self.actor_ref.tell(ContinueFactors())
            return
        self.cursor = None
        if self.rebuilding:
            self._finish_rebuild()

    @FACTOR_FOLD_SECONDS.time()
    def _fold_slice(self, candles: Sequence[Candle]) -> int:
        """Fold a prefix of ``candles`` that takes about ``slice_s`` of CPU; return its length.

        Everything an actor does runs on the server's one thread, so a catch-up must come back
        to the event loop often: the engine folds in small steps until the slice's time is up,
        then the overlay is rendered and stored once for the whole slice.
        """
        deadline = self.clock() + self.options.slice_s
        state, events, folded = self.state, [], 0
        while folded < len(candles):
            step = candles[folded:folded + SLICE_STEP_CANDLES]
            state, new = engine.run(state, step, self.options.params)
            events.extend(new)
            folded += len(step)
            if self.clock() >= deadline:
                break
        self._commit(state, events, folded)
        return folded

    def _on_stored(self, candles: Sequence[Candle]) -> None:
        if not candles:
            return
        self.store_head = max(self.store_head or 0, candles[-1].candle_time)
        if self.cursor is not None:
            # The chunk loop reads these from the store; if the chunk in hand was read before
            # they were stored, it reads once more before it stops.
            self.reread = True
            return
        if self.stalled is not None:
            return
        head = self.pending[-1].candle_time if self.pending else self.state.head_time
        new = [c for c in candles if head is None or c.candle_time > head]
        if len(new) < len(candles):
            self.skipped_old += len(candles) - len(new)
            logger.debug("factor actor %s skipped %d candles at or before head %s",
                         self.sid, len(candles) - len(new), head)
        self.pending.extend(new)
        if len(self.pending) > LIVE_FOLD_CANDLES:
            after = self.pending[0].candle_time - 1
            self.pending = []
            self._schedule(after)
        elif self.pending and not self.fold_due:
            self._fold_soon()

    def _fold_soon(self) -> None:
        """Fold now, or when ``coalesce_s`` has passed since the last fold.

        Under a fast writer (bulk single-candle ingest, a backfill) folding after every write
        would render and store the overlay per candle; waiting a few milliseconds folds what
        arrived meanwhile in one pass, while a live series (one candle a minute) folds at once.
        """
        wait = self.last_fold + self.options.coalesce_s - self.clock()
        if wait <= 0:
            self._fold_pending()
            return
        self.fold_due = True
        timer = threading.Timer(wait, tell, (self.actor_ref, FoldPending()))
        timer.daemon = True
        timer.start()

    def _fold_pending(self) -> None:
        candles, self.pending = self.pending, []
        if candles:
            self.coalesced += len(candles) > 1
            self._fold(candles)
            self.last_fold = self.clock()

    @FACTOR_FOLD_SECONDS.time()
    def _fold(self, candles: Sequence[Candle]) -> None:
        state, events = engine.run(self.state, candles, self.options.params)
        self._commit(state, events, len(candles))

    def _commit(self, state: FactorState, events: list[FactorEvent], folded: int) -> None:
        """Render the overlay at ``state``, store events, snapshot and new versions, push."""
        if state.head_time == self.state.head_time:
            return
        assert state.head_time is not None
        change = self.overlay.advance(state, events)
        snapshot = FactorSnapshot(state.head_time, self.fingerprint, engine.state_to_json(state))
        try:
            versions = self.store.save_factor_batch(self.sid, events, snapshot, change.changed,
                                                    fence=self.fence)
        except Fenced as exc:
            # The supervisor stops this actor once the lease actor reports the loss; until
            # then nothing more is folded (the overlay advanced in memory only).
            self.stalled = f"lease lost: {exc}"
            self.cursor, self.backlog, self.pending = None, [], []
            logger.warning("factor actor %s stops writing: %s", self.sid, exc)
            return
        self.state = state
        if self.rebuilding:
            self.rebuild_folded += folded
            self.last_version = max([self.last_version] + [v.version_id for v in versions])
        elif not change.empty:
            self._push(state.head_time, change, versions)

    def _push(self, head: int, change: OverlayChange, versions: list[DrawVersion]) -> None:
        patch = [v.to_dict() for v in versions]
        body = draw.draw_delta_payload(self.sid, head, self.last_version, patch, ())
        del body["active_ids"]  # a push carries what changed, never the whole active list
        message = {"type": "draw_delta", **body, "from_version_id": self.last_version,
                   "removed_ids": change.removed_ids}
        if change.added_ids:  # a change a diff cannot express: send the whole active list
            message["active_ids"] = self.overlay.active_ids()
        self.last_version = body["next_cursor"]["version_id"]
        tell(self.lookup("hub"), DrawChanged(message))
