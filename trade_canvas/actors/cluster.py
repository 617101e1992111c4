"""Cluster mode's two process-wide actors: the lease keeper and the fan-out of others' writes.

``LeaseActor`` runs one lease tick per ``Tick`` (heartbeat, release, renew, reap, claim; see
``storage/leases.py``) for the series the supervisor wants, and tells the supervisor which ones
this process owns; the supervisor runs feeds for those only. When no tick commits for
``ttl - tick`` seconds the process fences itself: ownership drops to nothing, feeds stop. The
runtime's watchdog checks the same deadline while a tick hangs. On a graceful stop the actor
gives every lease up at once and notifies the others, who claim on the hint.

``FanoutActor`` follows the writes other processes make: the listener hands it every
notification (``HintReceived``); for each series with local actors, a ``SeqFollower`` says
whether the hint is the next write (deliver its candles to the series' hub), a duplicate (drop)
or a jump (read the store from the delivered position: "resync"). This process's own writes
come from its store actors at commit (``WrittenHere``): they move the position without a
delivery, since the local hubs have those candles already, and their hints coming back are
dropped unread. A periodic ``CheckHeads`` compares the sequence numbers in ``series_heads``
with what was delivered, so a lost hint costs at most ``CLUSTER_RESYNC_S``. The hub's
per-subscriber cursor drops anything already sent, so a candle is pushed once, in order,
whichever process wrote it.

The same ordered stream (this process's own writes included, from their commit) feeds the
series' factor actor, which runs only on the lease owner: it folds every write of the cluster
in commit order, and its batches are fenced by the lease epoch (``save_factor_batch(fence=...)``).

It also hands what other processes' hubs relay (forming candles, draw deltas, system messages;
never sequenced, never resynced) to the local hub of each series that runs here, marked
``remote``. A draw delta too big for a hint arrives as a reference and is rebuilt from the
store (``rebuild_draw``), only while the series has local subscribers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import pykka

from trade_canvas.actors.plumbing import ChildLink, report_failure, tell
from trade_canvas.actors.messages import (
    Broadcast,
    CandlesStored,
    CheckHeads,
    Crash,
    DrawChanged,
    FactorCatchUp,
    HintReceived,
    LeasesChanged,
    ListenerConnected,
    PublishForming,
    Tick,
    WantLeases,
    WrittenHere,
)
from trade_canvas.candles import Candle
from trade_canvas.cluster import (
    BroadcastHint, DrawHint, DrawRef, FormingHint, Hint, LeaseKeeper, SeqFollower, Step,
)
from trade_canvas.errors import TradeCanvasError, Unavailable
from trade_canvas.storage.leases import PostgresLeases

logger = logging.getLogger(__name__)


class LeaseActor(pykka.ThreadingActor):
    """Holds this process's series leases; tells the supervisor what it owns."""

    def __init__(
        self,
        leases: PostgresLeases,
        keeper: LeaseKeeper,
        link: ChildLink,
        clock: Callable[[], float] = time.monotonic,
        still_upstream: Callable[[str], bool] = lambda series_id: False,
        drop_streams: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        # Whether this process still holds the series' stream upstream: an asked series is
        # handed over only once its feed stopped and its UNSUBSCRIBE went out, so no stream is
        # ever on two upstream connections (stream actors unsubscribe on their own tick and
        # rate limit).
        self.still_upstream = still_upstream
        self.drop_streams = drop_streams  # on fencing: every upstream stream, at once
        self.leases = leases
        self.keeper = keeper
        self.link = link
        self.clock = clock
        self.wanted: frozenset[str] = frozenset()
        self.owned: dict[str, int] = {}  # series -> epoch
        # Asked for by another node at the last tick: reported to the supervisor as not owned
        # (feed and factor stop), still renewed, freed by the next tick (a handoff).
        self.handing: tuple[str, ...] = ()
        self.told: dict[str, int] | None = None
        self.alive = 0
        self.errors = 0
        self.last_error: str | None = None
        link.record.extra = self._status

    def _status(self) -> dict[str, Any]:
        return {"node_id": self.leases.node.node_id, "owned": len(self.owned), "handing": len(self.handing),
                "wanted": len(self.wanted), "alive_nodes": self.alive,
                "fenced": self.keeper.fenced, "fenced_at": self.keeper.fenced_at,
                "renew_age_s": round(self.clock() - self.keeper.renewed_at, 3),
                "tick_errors": self.errors, "last_tick_error": self.last_error}

    def on_start(self) -> None:
        self.link.started()

    def on_stop(self) -> None:
        # Graceful stop: the others claim on the release hint instead of waiting for the TTL.
        try:
            released = self.leases.leave()
            logger.info("cluster node %s left; released %d series", self.leases.node.name,
                        len(released))
        except Unavailable as exc:
            logger.warning("cluster node %s could not release its leases: %s",
                           self.leases.node.name, exc)
        self.leases.close()

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case Tick():
                return self._tick()
            case WantLeases():
                self.wanted = message.series_ids
                return None
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        return None

    def _tick(self) -> None:
        sent = self.clock()
        try:
            ready = tuple(sid for sid in self.handing if not self.still_upstream(sid))
            result = self.leases.tick(sorted(self.wanted), hand_over=ready)
        except Unavailable as exc:
            self.errors += 1
            if self.last_error is None:
                logger.warning("cluster lease tick failed: %s", exc)
            self.last_error = str(exc)
            if self.leases.connection_lost:
                self.keeper.lost()
            self.fence_if_due()
            return
        if self.last_error is not None:
            logger.info("cluster lease ticks commit again")
        self.last_error = None
        lifted = self.keeper.renewed(sent)
        self.alive = result.alive
        if self.fence_if_due():
            return  # the tick took so long that its renewal is already too old
        self.owned = result.owned
        self.handing = result.asked
        owned = {sid: epoch for sid, epoch in result.owned.items() if sid not in result.asked}
        if lifted:
            logger.warning("cluster node %s renews its leases again after fencing",
                           self.leases.node.name)
        if result.asked:
            logger.info("handing %d series over to nodes below their share: %s",
                        len(result.asked), ", ".join(result.asked[:10]))
        if result.claimed:
            logger.info("claimed %d series: %s", len(result.claimed), ", ".join(
                f"{sid} (epoch {result.owned[sid]})" for sid in result.claimed[:10]))
        if owned != self.told or lifted:
            self.told = owned
            tell(self.link.supervisor, LeasesChanged(owned))

    def fence_if_due(self) -> bool:
        """Drop all ownership when the renewal deadline passed (once per lapse)."""
        if not self.keeper.fence_due(self.clock()):
            return self.keeper.fenced
        fence(self.link.supervisor, self.leases.node.name, self.drop_streams)
        self.told = {}
        self.owned = {}
        self.handing = ()
        return True


def fence(supervisor: pykka.ActorRef[Any] | None, name: str,
          drop_streams: Callable[[], None] = lambda: None) -> None:
    """Stop every feed of this process: its leases may be claimed by others from now on.

    The upstream streams are dropped first and directly (``drop_streams``): the supervisor and
    the feeds may be waiting on the very Postgres this process lost, and another process may
    subscribe the same streams as soon as the leases expire.
    """
    logger.error("cluster node %s fenced itself: no lease renewal committed in time; its feeds "
                 "stop until a renewal commits", name)
    drop_streams()
    tell(supervisor, LeasesChanged({}))


class FanoutActor(pykka.ThreadingActor):
    """Delivers the writes of every process to this process's hubs, once and in order."""

    def __init__(
        self,
        store: Any,  # PostgresCandleStore (sequenced): read_heads, read_since, read_tail
        groups: Mapping[str, Any],  # the supervisor's series groups (read only)
        link: ChildLink,
        *,
        catchup_limit: int,
        on_written: Callable[[str], None] | None = None,
        on_released: Callable[[], None] | None = None,
        rebuild_draw: Callable[[str, DrawRef], dict[str, Any] | None] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.rebuild_draw = rebuild_draw
        self.groups = groups
        self.link = link
        self.catchup_limit = catchup_limit
        self.on_written = on_written
        self.on_released = on_released
        self.followers: dict[str, SeqFollower] = {}
        self.cursors: dict[str, int | None] = {}  # newest candle time delivered per series
        self.counters = {"hints": 0, "delivered": 0, "duplicates": 0, "resyncs": 0,
                         "behind_found": 0, "resync_errors": 0, "listener_connects": 0,
                         "written_here": 0, "relayed": 0, "draw_rebuilt": 0, "draw_lost": 0}
        link.record.extra = lambda: {"followed": len(self.followers), **self.counters}

    def on_start(self) -> None:
        self.link.started()

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case HintReceived(hint=Hint() as hint):
                return self._hint(hint)
            case HintReceived(hint=FormingHint() | DrawHint() | BroadcastHint() as relayed):
                return self._relayed(relayed)
            case WrittenHere():
                return self._written_here(message.hint)
            case CheckHeads():
                return self._check_heads()
            case ListenerConnected():
                self.counters["listener_connects"] += 1
                return self._check_heads(everything=True)
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        return None

    def _hint(self, hint: Hint) -> None:
        self.counters["hints"] += 1
        if hint.kind == "r":
            if self.on_released is not None:
                self.on_released()  # claim now rather than at the next tick
            return
        if self.on_written is not None:
            self.on_written(hint.series_id)  # the read cache must not serve the old tail
        if hint.series_id not in self.groups:
            self.followers.pop(hint.series_id, None)  # nobody here: catch-up reads the store
            return
        if self._advance(hint, hint.candles is not None) is Step.DROP:
            self.counters["duplicates"] += 1

    def _advance(self, hint: Hint, inline: bool) -> Step:
        """Take the write numbered ``hint.seq`` if it is the next one; return what was done.

        The next write in sequence goes to the hub (unless stored only) and to the owner's
        factor actor (absent on every other process), which in cluster mode has no other
        source: it folds the writes of every process in their commit order. A write told to it
        directly could overtake an earlier one whose hint is still on its way, and the older
        candle would be skipped as history. A jump resyncs both from the store.
        """
        follower = self._follower(hint.series_id)
        step = follower.step(hint.seq, inline, publish=hint.kind == "c")
        if step is Step.RESYNC:
            self._resync(hint.series_id, hint.seq)
        elif step is not Step.DROP:
            if step is Step.DELIVER and hint.candles is not None:
                self._deliver(hint.series_id, hint.candles)
            self._to_factor(hint.series_id, hint.candles)  # None: it reads the store
        return step

    def _to_factor(self, series_id: str, candles: tuple[Candle, ...] | None) -> None:
        group = self.groups.get(series_id)
        ref = group.ref("factor") if group is not None else None
        if ref is not None:
            tell(ref, FactorCatchUp() if candles is None else CandlesStored(candles,
                                                                          time.monotonic()))

    def _written_here(self, hint: Hint) -> None:
        """Deliver this process's committed write to its hub, in sequence.

        A jump (another process's write not delivered yet) or a series just taken up here
        resyncs, as a hint would: every write numbered up to this one has committed. The hint
        of this write, coming back through Postgres, is not handed here (runtime/cluster.py).
        """
        if hint.series_id not in self.groups or not hint.candles:
            return
        follower = self._follower(hint.series_id)
        if follower.delivered is None and hint.seq == 1:
            follower.resynced(0)  # the series' first write in cluster mode: nothing to miss
        # The hub and the factor actor get it from here, not from the store actor: told
        # directly, this write could overtake an earlier one of another process whose hint is
        # still on its way (a jump: resynced), and the hub's cursors would skip that candle.
        if self._advance(hint, True) in (Step.DELIVER, Step.SKIP):
            self.counters["written_here"] += 1

    def _relayed(self, hint: FormingHint | DrawHint | BroadcastHint) -> None:
        """Hand another process's forming candles, draw delta or system message to the hub."""
        self.counters["relayed"] += 1
        if isinstance(hint, FormingHint):
            for series_id, candle in hint.candles:
                group = self.groups.get(series_id)
                if group is not None:
                    tell(group.ref("hub"), PublishForming(candle, remote=True))
            return
        group = self.groups.get(hint.series_id)
        if group is None:
            return  # nobody here follows the series
        if isinstance(hint, BroadcastHint):
            tell(group.ref("hub"), Broadcast(dict(hint.message), remote=True))
            return
        message = dict(hint.message) if hint.message is not None else None
        if message is None and hint.ref is not None and group.in_use():
            message = self._rebuild_draw(hint.series_id, hint.ref)
        if message is not None:
            tell(group.ref("hub"), DrawChanged(message, remote=True))

    def _rebuild_draw(self, series_id: str, ref: DrawRef) -> dict[str, Any] | None:
        message = None
        if self.rebuild_draw is not None:
            try:
                message = self.rebuild_draw(series_id, ref)
            except TradeCanvasError as exc:
                logger.warning("fan-out of %s: draw delta %d..%d not rebuilt: %s",
                               series_id, ref.from_version, ref.to_version, exc)
        # A lost delta: clients see the next one's from_version_id differ and re-read.
        self.counters["draw_rebuilt" if message is not None else "draw_lost"] += 1
        return message

    def _follower(self, series_id: str) -> SeqFollower:
        follower = self.followers.get(series_id)
        if follower is None:
            follower = self.followers[series_id] = SeqFollower()
            self.cursors.setdefault(series_id, None)
        return follower

    def _deliver(self, series_id: str, candles: Any) -> None:
        cursor = self.cursors.get(series_id)
        fresh = tuple(c for c in candles if cursor is None or c.candle_time > cursor)
        if not fresh:
            return
        self.cursors[series_id] = fresh[-1].candle_time
        group = self.groups.get(series_id)
        if group is not None and tell(group.ref("hub"), CandlesStored(fresh, time.monotonic())):
            self.counters["delivered"] += len(fresh)

    def _resync(self, series_id: str, seq: int | None = None) -> None:
        """Read the store after the delivered position, deliver, and mark ``seq`` delivered."""
        follower = self._follower(series_id)
        try:
            if seq is None:
                head = self.store.read_heads([series_id]).get(series_id)
                seq = head[0] if head is not None else 0
            cursor = self.cursors.get(series_id)
            while True:
                if cursor is None:
                    candles = self.store.read_tail(series_id, self.catchup_limit)
                else:
                    candles = self.store.read_since(series_id, cursor, self.catchup_limit)
                self._deliver(series_id, candles)
                cursor = self.cursors.get(series_id)
                if len(candles) < self.catchup_limit:
                    break
        except TradeCanvasError as exc:
            # The next CheckHeads tries again; the follower has not moved.
            self.counters["resync_errors"] += 1
            logger.warning("fan-out of %s: resync failed: %s", series_id, exc)
            return
        self.counters["resyncs"] += 1
        follower.resynced(seq)
        self._to_factor(series_id, None)

    def _check_heads(self, everything: bool = False) -> None:
        local = [sid for sid in self.groups if sid in self.followers or everything]
        for gone in [sid for sid in self.followers if sid not in self.groups]:
            del self.followers[gone]
        local += [sid for sid in self.groups if sid not in self.followers]
        if not local:
            return
        try:
            heads = self.store.read_heads(sorted(set(local)))
        except TradeCanvasError as exc:
            logger.warning("fan-out position check failed: %s", exc)
            return
        for series_id in sorted(set(local)):
            head = heads.get(series_id)
            follower = self._follower(series_id)
            if head is None:
                follower.resynced(0)  # never written in cluster mode: nothing to miss yet
                continue
            if everything or follower.behind(head[0]):
                self.counters["behind_found"] += 1
                self._resync(series_id, head[0])
