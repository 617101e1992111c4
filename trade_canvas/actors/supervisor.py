"""The Supervisor: starts each series' actor group on first use and restarts what dies.

pykka has no supervision, so this one sees all three kinds of death: a child whose handler
raised tells ``ChildFailed`` from its ``on_failure``; a child whose ``on_start`` raised never
tells ``ChildStarted`` and misses its deadline; anything else shows up as ``is_alive()`` turning
false on a periodic ``Tick``. Restarts back off exponentially (capped) and the backoff resets once
a child has run stably for a while.

Series groups do not live forever: a group with no subscriber, no feed and no use by the facade
(a write, a subscribe) for ``series_idle_ttl_s`` is stopped on a tick, and at most
``max_series`` groups run at once. At the cap, a new series evicts the longest-unused idle group;
when every group is in use it is refused with ``CapacityExceeded`` and nothing is started. A
stopped group is started again on next use; its data lives in the store, not in the actors.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import pykka

from trade_canvas.actors import instruments
from trade_canvas.actors.plumbing import ChildLink, ChildRecord, ChildStart, ChildState, StatusBoard
from trade_canvas.actors.messages import (
    AcquireFeed,
    ChildFailed,
    ChildStarted,
    EnsureSeries,
    PinFeed,
    ReleaseFeed,
    StartGlobal,
    StopSeries,
    Tick,
    LeasesChanged,
    WantLeases,
)
from trade_canvas.errors import CapacityExceeded
from trade_canvas.feed_demand import Demand, FeedDemand, FeedJob
from trade_canvas.series import SeriesId, parse_series_id

logger = logging.getLogger(__name__)

REAP_PER_TICK = 50  # idle groups stopped per tick: stopping blocks the supervisor briefly
STOP_WAIT_S = 5.0  # how long stopping children may hold the supervisor


class SeriesGroup:
    """The actors of one series (or, with ``series`` None, the process-wide ones), by kind."""

    def __init__(self, series: SeriesId | None) -> None:
        self.series = series
        self.children: dict[str, ChildRecord] = {}
        # Set by whoever uses the group (the runtime facade), read by the supervisor's reaper.
        self.touched = 0.0  # monotonic time of the last write, subscribe or forming update
        self.in_use: Callable[[], bool] = lambda: False  # e.g. the hub has subscribers

    def ref(self, kind: str) -> pykka.ActorRef[Any] | None:
        """Return the live ref of a child kind, or None while it is down or absent."""
        record = self.children.get(kind)
        if record is None or record.ref is None:
            return None
        return record.ref


Blueprint = Callable[[SeriesId, SeriesGroup], dict[str, ChildStart]]
FeedBlueprint = Callable[[SeriesId, SeriesGroup, FeedJob], ChildStart]
# Cluster mode: how a series' factor actor is started once this process holds the series'
# lease, given the lease's fencing epoch (its writes are checked against it).
FactorBlueprint = Callable[[SeriesId, SeriesGroup, int], ChildStart]


class Supervisor(pykka.ThreadingActor):
    """Owns every per-series actor group; restarts children with capped backoff."""

    def __init__(
        self,
        blueprint: Blueprint,
        board: StatusBoard,
        groups: dict[str, SeriesGroup] | None = None,
        *,
        globals_group: SeriesGroup | None = None,
        feed_blueprint: FeedBlueprint | None = None,
        factor_blueprint: FactorBlueprint | None = None,
        unroute: Callable[[SeriesId, pykka.ActorRef[Any]], None] | None = None,
        demand: Demand | None = None,
        idle_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        start_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        cluster: bool = False,
        series_idle_ttl_s: float = 300.0,
        max_series: int = 0,
        on_reaped: Callable[[], None] | None = None,
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
        self.globals = globals_group if globals_group is not None else SeriesGroup(None)
        self.feed_blueprint = feed_blueprint
        self.factor_blueprint = factor_blueprint
        self.unroute = unroute  # drops a stopped feed's upstream stream (see _stop_feeds)
        # Per process (FeedDemand) or, in cluster mode, for the whole cluster (ClusterFeedDemand).
        self.demand: Demand = demand if demand is not None else FeedDemand(0)
        self.idle_ttl_s = idle_ttl_s
        # Cluster mode: a feed and the factor actor run only while this process holds the
        # series' lease (the global "leases" child claims what this process wants: its feed jobs
        # and every series with a local group, and tells ``LeasesChanged`` with the epochs).
        # None: no cluster, every wanted feed runs here and the blueprint has the factor actor.
        self.owned: dict[str, int] | None = {} if cluster else None
        self.factor_epochs: dict[str, int] = {}  # series -> epoch its factor actor fences with
        self.wanted: frozenset[str] = frozenset()
        self.series_idle_ttl_s = series_idle_ttl_s
        self.max_series = max_series
        self.on_reaped = on_reaped  # after a tick that stopped idle groups (memory release)
        self.record = ChildRecord(kind="supervisor", series_id=None, start=lambda link: self.actor_ref)

    def on_start(self) -> None:
        self.record.ref = self.actor_ref
        self.record.started_at = self.wall()
        self.record.move(ChildState.RUNNING)
        self.board.add(self.record)

    def on_stop(self) -> None:
        for series_id in reversed(list(self.groups)):
            self._stop_series(series_id)
        for kind in reversed(list(self.globals.children)):
            self._remove_child(self.globals, kind)
        self.demand.close()
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
            case AcquireFeed():
                return self._acquire(message.series)
            case ReleaseFeed():
                return self.demand.release(message.series_id, self.wall())
            case PinFeed():
                return self._pin(message.series)
            case StartGlobal():
                return self._add_child(self.globals, message.kind, message.start)
            case LeasesChanged():
                return self._leases_changed(message.owned)
        logger.warning("supervisor ignored unexpected message %r", message)
        return None

    def _ensure(self, series: SeriesId) -> SeriesGroup:
        group = self.groups.get(series.text)
        if group is not None:
            return group
        self._make_room()
        group = SeriesGroup(series)
        group.touched = self.clock()
        for kind, start in self.blueprint(series, group).items():
            self._add_child(group, kind, start)
        # Published only once every child has a ref: the facade reads this dict without asking,
        # and starting a child can yield to request greenlets under gevent.
        self.groups[series.text] = group
        logger.info("series %s started (%s)", series.text, ", ".join(group.children))
        if self.owned is not None:
            self._start_factor(group)
            self._want()  # a write or a subscribe here: this process may own the series
        return group

    def _add_child(self, group: SeriesGroup, kind: str, start: ChildStart) -> None:
        series_id = group.series.text if group.series is not None else None
        record = ChildRecord(kind=kind, series_id=series_id, start=start)
        group.children[kind] = record
        self.board.add(record)
        self._start_child(record)

    def _remove_child(self, group: SeriesGroup, kind: str) -> None:
        self._remove_children([(group, kind)])

    def _remove_children(self, which: list[tuple[SeriesGroup, str]]) -> None:
        """Stop children all at once and wait for them together (at most STOP_WAIT_S).

        Waiting here is safe (children never ask the supervisor anything), but a child can be
        stuck in a call that will not return soon (a store write behind a partition): stopping
        them one after the other would hold the supervisor for STOP_WAIT_S per stuck child.
        """
        stopping = []
        for group, kind in which:
            record = group.children.pop(kind, None)
            if record is None:
                continue
            if record.ref is not None and record.ref.is_alive():
                stopping.append((record, record.ref.stop(block=False)))
            record.ref = None
            record.move(ChildState.STOPPED)
            self.board.remove(record)
        deadline = self.clock() + STOP_WAIT_S
        for record, future in stopping:
            try:
                future.get(timeout=max(0.0, deadline - self.clock()))
            except pykka.Timeout:
                logger.error("actor %s for %s did not stop within %gs", record.kind,
                             record.series_id, STOP_WAIT_S)
            except pykka.ActorDeadError:
                pass

    def _acquire(self, series: SeriesId) -> bool:
        # Both limits are checked before anything starts: a refused subscribe creates nothing.
        if series.text not in self.groups:
            self._make_room()
        outcome = self.demand.acquire(series.text, self.wall())
        for victim in outcome.evict:
            self._stop_feed(victim, "evicted for a new on-demand feed")
        group = self._ensure(series)
        if outcome.start:
            self._start_feed(group, self.demand.jobs[series.text])
        self._want()
        return outcome.start

    def _want(self, every_tick: bool = False) -> None:
        # Repeated every tick (not only on change): a restarted lease actor starts empty.
        wanted = frozenset(self.demand.jobs) | frozenset(self.groups)
        if self.owned is None or (wanted == self.wanted and not every_tick):
            return
        self.wanted = wanted
        ref = self.globals.ref("leases")
        if ref is not None:
            try:
                ref.tell(WantLeases(wanted))
            except pykka.ActorDeadError:
                pass

    def _leases_changed(self, owned: Mapping[str, int]) -> None:
        if self.owned is None:
            return
        self.owned = dict(owned)
        lost = [sid for sid, group in self.groups.items()
                if "feed" in group.children and sid not in owned]
        moved = [sid for sid, group in self.groups.items() if "factor" in group.children
                 and self.factor_epochs.get(sid) != owned.get(sid)]
        # Lost, or lost and claimed again meanwhile (the ledger may have moved on): stopped
        # together, so a fence with hundreds of series takes one stop wait, not one each.
        self._stop_feeds(lost, "this process no longer holds the series' lease",
                         also=[(self.groups[sid], "factor") for sid in moved])
        for series_id in moved:
            self.factor_epochs.pop(series_id, None)
        if moved:
            logger.info("factor actors stopped, their series' leases moved: %s",
                        ", ".join(moved[:10]) + (" ..." if len(moved) > 10 else ""))
        for group in list(self.groups.values()):
            self._start_factor(group)
        for series_id in sorted(owned):
            job = self.demand.jobs.get(series_id)
            if job is None:
                continue  # claimed just before we stopped wanting it; released next tick
            group = self.groups.get(series_id) or self._ensure(parse_series_id(series_id))
            if "feed" not in group.children:
                self._start_feed(group, job)

    def _pin(self, series: SeriesId) -> None:
        group = self._ensure(series)
        if self.demand.pin(series.text) or "feed" not in group.children:
            self._start_feed(group, self.demand.jobs[series.text])

    def _start_factor(self, group: SeriesGroup) -> None:
        """Cluster mode: run the group's factor actor here while this process owns the series."""
        series = group.series
        if self.factor_blueprint is None or self.owned is None or series is None:
            return
        epoch = self.owned.get(series.text)
        if epoch is None or "factor" in group.children:
            return
        self.factor_epochs[series.text] = epoch
        self._add_child(group, "factor", self.factor_blueprint(series, group, epoch))
        logger.info("factor actor of %s started here (lease epoch %d)", series.text, epoch)

    def _start_feed(self, group: SeriesGroup, job: FeedJob) -> None:
        if self.feed_blueprint is None or group.series is None:
            return
        if self.owned is not None and job.series_id not in self.owned:
            return self._want()  # started by _leases_changed once the lease is ours
        self._add_child(group, "feed", self.feed_blueprint(group.series, group, job))
        logger.info("feed of %s started (%s)", job.series_id, "pinned" if job.pinned else "on demand")

    def _stop_feed(self, series_id: str, why: str) -> None:
        self._stop_feeds([series_id], why)

    def _stop_feeds(self, series_ids: list[str], why: str,
                    also: list[tuple[SeriesGroup, str]] | None = None) -> None:
        which = list(also or [])
        stopped = []
        for series_id in series_ids:
            group = self.groups.get(series_id)
            record = group.children.get("feed") if group is not None else None
            if group is None or record is None:
                continue
            if self.unroute is not None and group.series is not None and record.ref is not None:
                # Its stream leaves the upstream connection now, even if the feed actor is
                # stuck and runs its own removal only much later.
                self.unroute(group.series, record.ref)
            which.append((group, "feed"))
            stopped.append(series_id)
        self._remove_children(which)
        for series_id in stopped:
            logger.info("feed of %s stopped: %s", series_id, why)

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
        group = self.groups.get(series_id) if series_id is not None else self.globals
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
        for series_id in self.demand.expired(self.wall(), self.idle_ttl_s):
            self._stop_feed(series_id, f"idle for {self.idle_ttl_s:g}s")
        self._want(every_tick=True)
        self._reap(now)
        for group in [self.globals, *self.groups.values()]:
            for record in list(group.children.values()):
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
                instruments.ACTOR_RESTARTS.labels(record.kind.split(":")[0]).inc()
                self._start_child(record)

    def _idle(self, group: SeriesGroup) -> bool:
        return "feed" not in group.children and not group.in_use()

    def _reap(self, now: float) -> None:
        reaped = 0
        for series_id, group in list(self.groups.items()):
            if not self._idle(group):
                group.touched = max(group.touched, now)  # the idle time counts from here
            elif now - group.touched >= self.series_idle_ttl_s and reaped < REAP_PER_TICK:
                self._stop_series(series_id, f"idle for {self.series_idle_ttl_s:g}s")
                reaped += 1
        if reaped and self.on_reaped is not None:
            self.on_reaped()

    def _make_room(self) -> None:
        """Stop the longest-unused idle group if the cap is reached.

        Raises:
            CapacityExceeded: every one of the ``max_series`` groups is in use.
        """
        if not self.max_series or len(self.groups) < self.max_series:
            return
        idle = [(g.touched, sid) for sid, g in self.groups.items() if self._idle(g)]
        if not idle:
            raise CapacityExceeded(
                f"series_capacity: {self.max_series} series are in use "
                "(TRADE_CANVAS_MAX_SERIES); retry later"
            )
        self._stop_series(min(idle)[1], "evicted for a new series")

    def _stop_series(self, series_id: str, why: str = "") -> None:
        group = self.groups.pop(series_id, None)
        self.factor_epochs.pop(series_id, None)
        if group is None:
            return
        for kind in reversed(list(group.children)):
            self._remove_child(group, kind)
        logger.info("series %s stopped%s", series_id, f": {why}" if why else "")
