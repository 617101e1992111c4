"""The Supervisor: starts each series' actor group on first use and restarts what dies.

pykka has no supervision, so this one sees all three kinds of death: a child whose handler
raised tells ``ChildFailed`` from its ``on_failure``; a child whose ``on_start`` raised never
tells ``ChildStarted`` and misses its deadline; anything else shows up as ``is_alive()`` turning
false on a periodic ``Tick``. Restarts back off exponentially (capped) and the backoff resets once
a child has run stably for a while.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pykka

from trade_canvas.actors.child import ChildLink, ChildRecord, ChildStart, ChildState, StatusBoard
from trade_canvas.actors.messages import (
    ChildFailed,
    ChildStarted,
    EnsureSeries,
    StopSeries,
    Tick,
)
from trade_canvas.series import SeriesId

logger = logging.getLogger(__name__)


class SeriesGroup:
    """The actors of one series, by kind, in start order."""

    def __init__(self, series: SeriesId) -> None:
        self.series = series
        self.children: dict[str, ChildRecord] = {}

    def ref(self, kind: str) -> pykka.ActorRef[Any] | None:
        """Return the live ref of a child kind, or None while it is down or absent."""
        record = self.children.get(kind)
        if record is None or record.ref is None:
            return None
        return record.ref


Blueprint = Callable[[SeriesId, SeriesGroup], dict[str, ChildStart]]


class Supervisor(pykka.ThreadingActor):
    """Owns every per-series actor group; restarts children with capped backoff."""

    def __init__(
        self,
        blueprint: Blueprint,
        board: StatusBoard,
        groups: dict[str, SeriesGroup] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        start_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.blueprint = blueprint
        self.board = board
        self.clock = clock
        self.wall = wall
        self.start_timeout_s = start_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        # Shared with the runtime facade, which reads it (never writes) to skip an ask per request.
        self.groups: dict[str, SeriesGroup] = groups if groups is not None else {}
        self.record = ChildRecord(kind="supervisor", series_id=None, start=lambda link: self.actor_ref)

    def on_start(self) -> None:
        self.record.ref = self.actor_ref
        self.record.started_at = self.wall()
        self.record.move(ChildState.RUNNING)
        self.board.add(self.record)

    def on_stop(self) -> None:
        for series_id in reversed(list(self.groups)):
            self._stop_series(series_id)
        self.record.move(ChildState.STOPPED)

    def on_receive(self, message: Any) -> Any:
        self.record.handled += 1
        match message:
            case EnsureSeries():
                return self._ensure(message.series)
            case StopSeries():
                return self._stop_series(message.series_id)
            case ChildStarted():
                return self._child_started(message)
            case ChildFailed():
                return self._child_failed(message)
            case Tick():
                return self._tick(message.now)
        logger.warning("supervisor ignored unexpected message %r", message)
        return None

    def _ensure(self, series: SeriesId) -> SeriesGroup:
        group = self.groups.get(series.text)
        if group is not None:
            return group
        group = SeriesGroup(series)
        self.groups[series.text] = group
        for kind, start in self.blueprint(series, group).items():
            record = ChildRecord(kind=kind, series_id=series.text, start=start)
            group.children[kind] = record
            self.board.add(record)
            self._start_child(record)
        logger.info("series %s started (%s)", series.text, ", ".join(group.children))
        return group

    def _start_child(self, record: ChildRecord) -> None:
        record.generation += 1
        try:
            record.ref = record.start(ChildLink(record, self.actor_ref))
        except Exception as exc:  # a child that cannot even be built is retried like a crash
            record.ref = None
            record.move(ChildState.FAILED)
            self._schedule_restart(record, f"start failed: {type(exc).__name__}: {exc}")
            return
        record.move(ChildState.STARTING)
        record.started_at = self.wall()
        record.running_since = None
        record.start_deadline = self.clock() + self.start_timeout_s

    def _find(self, series_id: str | None, kind: str, generation: int) -> ChildRecord | None:
        group = self.groups.get(series_id or "")
        record = group.children.get(kind) if group is not None else None
        if record is None or record.generation != generation:
            return None  # a report from an incarnation already replaced
        return record

    def _child_started(self, message: ChildStarted) -> None:
        record = self._find(message.series_id, message.kind, message.generation)
        if record is None or record.state is not ChildState.STARTING:
            return
        record.move(ChildState.RUNNING)
        record.running_since = self.clock()
        if record.restarts:
            logger.info(
                "actor %s for %s restarted (restart #%d)", record.kind, record.series_id, record.restarts
            )

    def _child_failed(self, message: ChildFailed) -> None:
        record = self._find(message.series_id, message.kind, message.generation)
        if record is not None and record.state in (ChildState.RUNNING, ChildState.STARTING):
            self._schedule_restart(record, message.error)

    def _schedule_restart(self, record: ChildRecord, error: str) -> None:
        now = self.clock()
        stable = record.running_since is not None and now - record.running_since >= self.stable_after_s
        if stable or record.backoff_s <= 0:
            record.backoff_s = self.backoff_initial_s
        else:
            record.backoff_s = min(record.backoff_s * 2, self.backoff_max_s)
        record.last_error = error
        record.last_error_at = self.wall()
        if record.ref is not None and record.ref.is_alive():
            record.ref.stop(block=False)
        record.ref = None
        if record.state is not ChildState.FAILED:
            record.move(ChildState.RESTARTING)
        record.next_restart_at = now + record.backoff_s
        logger.error(
            "actor %s for %s failed: %s; restarting in %.1fs",
            record.kind,
            record.series_id,
            error,
            record.backoff_s,
        )

    def _tick(self, now: float) -> None:
        for group in list(self.groups.values()):
            for record in group.children.values():
                self._check(record, now)

    def _check(self, record: ChildRecord, now: float) -> None:
        if record.state in (ChildState.RUNNING, ChildState.STARTING):
            if record.ref is None or not record.ref.is_alive():
                self._schedule_restart(record, "actor stopped unexpectedly")
            elif record.state is ChildState.STARTING and now > (record.start_deadline or now):
                self._schedule_restart(record, f"did not start within {self.start_timeout_s:g}s")
        elif record.state in (ChildState.RESTARTING, ChildState.FAILED):
            if record.next_restart_at is not None and now >= record.next_restart_at:
                record.restarts += 1
                self._start_child(record)

    def _stop_series(self, series_id: str) -> None:
        group = self.groups.pop(series_id, None)
        if group is None:
            return
        for record in reversed(list(group.children.values())):
            if record.ref is not None and record.ref.is_alive():
                # Blocking here is safe: children never ask the supervisor anything.
                try:
                    record.ref.stop(block=True, timeout=5)
                except pykka.Timeout:
                    logger.error("actor %s for %s did not stop within 5s", record.kind, series_id)
            record.ref = None
            record.move(ChildState.STOPPED)
            self.board.remove(record)
        logger.info("series %s stopped", series_id)
