"""Cluster mode's wiring: node identity, lease and fan-out actors, notifier, listener, watchdog.

Started by ``runtime/boot.py`` only in cluster mode (Postgres with TRADE_CANVAS_CLUSTER=1 or
TRADE_CANVAS_WORKERS>1); the single-process path never imports the machinery below.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pykka

from trade_canvas.actors.cluster import FanoutActor, LeaseActor, fence
from trade_canvas.actors.factor import DRAW_WINDOW_CANDLES
from trade_canvas.actors.messages import (
    Broadcast,
    CheckHeads,
    DrawChanged,
    DropAllStreams,
    HintReceived,
    ListenerConnected,
    PublishForming,
    StartGlobal,
    Tick,
    WrittenHere,
)
from trade_canvas.actors.plumbing import tell
from trade_canvas.candles import Candle
from trade_canvas.cluster import (
    AnyHint, BroadcastHint, DrawHint, DrawRef, Hint, LeaseKeeper, draw_message,
)
from trade_canvas.config import Settings, session_dsn
from trade_canvas.errors import InvalidInput, Unavailable
from trade_canvas.exchanges import binance
from trade_canvas.runtime import factor_reads
from trade_canvas.series import parse_series_id
from trade_canvas.storage import CandleStore
from trade_canvas.storage.broker import FormingRelay, Listener, Notifier
from trade_canvas.storage.leases import Node, PostgresLeases, channel_name

logger = logging.getLogger(__name__)


def make_node(settings: Settings) -> Node:
    """Return this process's identity: a fresh id per boot, and the operator's name for it."""
    pid = os.getpid()
    name = settings.cluster_node_name or f"{socket.gethostname()}:{pid}"
    if settings.cluster_node_name and settings.workers > 1:
        name = f"{name}:{pid}"  # workers of one server share the setting
    return Node(f"{name}:{secrets.token_hex(3)}", name, pid)


@dataclass
class Cluster:
    """What the runtime facade needs of cluster mode; ``stop`` ends the threads."""

    settings: Settings
    node: Node
    keeper: LeaseKeeper
    notifier: Notifier
    view_leases: PostgresLeases  # its own connection: HTTP views never share the tick's
    forming: FormingRelay
    listener: Listener | None = None
    globals_group: Any = None  # the supervisor's process-wide actors, once started
    stopping: threading.Event = field(default_factory=threading.Event)
    drop_streams: Callable[[], None] = lambda: None  # set by start_cluster

    def committed(self, series_id: str, seq: int | None, candles: tuple[Candle, ...],
                  publish: bool) -> None:
        """A store actor committed a write: hint the others (``c`` pushed, ``w`` stored only)
        and tell this process's fan-out, which need not wait for the hint to come back."""
        if seq is None:
            return
        hint = Hint("c" if publish else "w", series_id, seq, tuple(candles), self.node.node_id)
        self.notifier.send(hint)
        if self.globals_group is not None:
            tell(self.globals_group.ref("fanout"), WrittenHere(hint))

    def check_ready(self) -> None:
        """Raise Unavailable while fenced or while the listener is down for too long."""
        if self.keeper.fenced:
            raise Unavailable("cluster: fenced (no lease renewal committed in time)")
        listener = self.listener
        if listener is not None and not listener.connected and listener.down_since is not None:
            down = time.monotonic() - listener.down_since
            if down > self.settings.cluster_resync_s:
                raise Unavailable(f"cluster: notification listener down for {down:.1f}s")

    def local_view(self) -> dict[str, Any]:
        """Return this process's side: node, fencing, listener and notifier counters."""
        listener = self.listener
        return {
            "node_id": self.node.node_id, "name": self.node.name, "pid": self.node.pid,
            "fenced": self.keeper.fenced, "fenced_at": self.keeper.fenced_at,
            "renew_age_s": round(time.monotonic() - self.keeper.renewed_at, 3),
            "listener": None if listener is None else {
                "connected": listener.connected, "last_error": listener.last_error,
                **listener.counters},
            "notifier": dict(self.notifier.counters),
            "forming_relay": dict(self.forming.counters),
        }

    def relay(self, series_id: str, message: PublishForming | Broadcast | DrawChanged) -> None:
        """Send what a local hub was told to the other processes' hubs (the hubs' relay)."""
        if isinstance(message, PublishForming):
            self.forming.offer(series_id, message.candle)
        elif isinstance(message, DrawChanged):
            self.notifier.send(DrawHint(series_id, self.node.node_id, message.message))
        else:
            self.notifier.send(BroadcastHint(series_id, self.node.node_id, message.message))

    def relay_forming(self, series_id: str, candle: Candle) -> None:
        """Send a forming candle of a series that does not run here to the other processes."""
        self.forming.offer(series_id, candle)

    def stop(self) -> None:
        """Stop the watchdog and the listener (the actors stop with the supervisor)."""
        self.stopping.set()
        self.forming.stop()
        if self.listener is not None:
            self.listener.stop()

    def close(self) -> None:
        """Send the last hints and close the connections (after the actors stopped)."""
        self.notifier.stop()
        self.view_leases.close()


def open_cluster(settings: Settings) -> Cluster:
    """Build the node and its notifier before the actors that hint through it exist."""
    node = make_node(settings)
    channel = channel_name(settings.postgres_schema)
    notifier = Notifier(settings.postgres_dsn, channel, node.node_id,
                        connect_timeout_s=settings.postgres_connect_timeout_s)
    notifier.start()
    view = PostgresLeases(session_dsn(settings), settings.postgres_schema, node,
                          tick_s=settings.cluster_tick_s, ttl_s=settings.cluster_lease_ttl_s)
    keeper = LeaseKeeper(settings.cluster_lease_ttl_s, settings.cluster_tick_s, time.monotonic())
    forming = FormingRelay(notifier, node.node_id, settings.market_forming_min_interval_ms / 1000)
    forming.start()
    logger.info("cluster mode: node %s (%s) on channel %s", node.name, node.node_id, channel)
    warn_connection_budget(settings, view)
    return Cluster(settings, node, keeper, notifier, view, forming)


def draw_rebuilder(store: CandleStore) -> Callable[[str, DrawRef], dict[str, Any] | None]:
    """Return how a draw delta sent as a reference is rebuilt from the store.

    The patch is exact at any later time (the versions of ``(from, to]``). A whole
    ``active_ids`` list is exact only while the factor head is still at ``to_time``: read at
    an earlier time, the ledger's view may differ from what the live state drew then. When
    the head moved on, such a delta is lost (None) and clients re-read on the next one.
    """

    def rebuild(series_id: str, ref: DrawRef) -> dict[str, Any] | None:
        whole_list = ref.active or ref.removed_ids is None
        if whole_list and store.factor_head_time(series_id) != ref.to_time:
            return None
        body = factor_reads.draw_delta(store, parse_series_id(series_id), ref.from_version,
                                       DRAW_WINDOW_CANDLES, ref.to_time)
        if whole_list and store.factor_head_time(series_id) != ref.to_time:
            return None  # moved on during the read
        return draw_message(body, ref)

    return rebuild


def warn_connection_budget(settings: Settings, leases: PostgresLeases) -> int | None:
    """Warn when the cluster's processes may open more connections than the server allows.

    Each process holds its pool plus three connections (lease control, listener, notifier), and
    a fourth for the on-demand feed tables when it follows Binance; the processes counted are the live nodes plus this server's workers. Returns the number
    needed when it is too many (None otherwise, or when the check itself failed).
    """
    try:
        room, alive = leases.connection_room()
    except Unavailable as exc:
        logger.warning("cluster: could not check max_connections: %s", exc)
        return None
    processes = alive + settings.workers
    own = 4 if settings.enable_whitelist_ingest or settings.enable_ondemand_ingest else 3
    needed = processes * (settings.postgres_pool_max_size + own)
    if needed <= room:
        return None
    logger.warning(
        "cluster: %d processes x (TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE=%d + %d) = %d connections "
        "may be opened, but the server allows %d (max_connections - "
        "superuser_reserved_connections): lower the pool size or raise max_connections",
        processes, settings.postgres_pool_max_size, own, needed, room)
    return needed


def start_cluster(
    cluster: Cluster,
    supervisor: pykka.ActorRef[Any],
    globals_group: Any,
    groups: dict[str, Any],
    store: Any,
    on_written: Callable[[str], None],
    upstream: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Start the lease and fan-out actors under the supervisor, the listener and the watchdog.

    ``upstream`` (market -> Binance streams this process holds, kept by the stream actors)
    delays a handoff until the series' stream is unsubscribed here.
    """
    settings = cluster.settings
    cluster.globals_group = globals_group
    leases = PostgresLeases(session_dsn(settings), settings.postgres_schema, cluster.node,
                            tick_s=settings.cluster_tick_s, ttl_s=settings.cluster_lease_ttl_s)
    held = upstream if upstream is not None else {}

    def still_upstream(series_id: str) -> bool:
        try:
            series = parse_series_id(series_id)
            if not binance.followable(series):
                return False
            stream = binance.series_stream(series)
        except InvalidInput:
            return False  # no live feed for such a series, so no stream to wait for
        return stream in held.get(series.market, frozenset())

    def drop_streams() -> None:
        for market in binance.MARKETS:
            tell(globals_group.ref(f"streams:{market}"), DropAllStreams())

    cluster.drop_streams = drop_streams
    supervisor.tell(StartGlobal("leases", lambda link: LeaseActor.start(
        leases, cluster.keeper, link, still_upstream=still_upstream,
        drop_streams=drop_streams)))

    def claim_now() -> None:
        tell(globals_group.ref("leases"), Tick(time.monotonic()))

    supervisor.tell(StartGlobal("fanout", lambda link: FanoutActor.start(
        store, groups, link, catchup_limit=settings.market_ws_catchup_limit,
        on_written=on_written, on_released=claim_now, rebuild_draw=draw_rebuilder(store))))

    def to_fanout(message: Any) -> None:
        tell(globals_group.ref("fanout"), message)

    node_id = cluster.node.node_id

    def on_hint(hint: AnyHint) -> None:
        if hint.node == node_id and hint.kind in ("c", "w"):
            return  # this process's own write: the fan-out had it at commit (WrittenHere)
        to_fanout(HintReceived(hint))

    cluster.listener = Listener(
        session_dsn(settings), channel_name(settings.postgres_schema), node_id,
        on_hint=on_hint,
        on_connected=lambda: to_fanout(ListenerConnected()),
        ping=lambda: cluster.notifier.send(Hint("p", "", 0, None, node_id)),
        ping_every_s=settings.cluster_resync_s,
        connect_timeout_s=settings.postgres_connect_timeout_s,
    )
    cluster.listener.start()
    _start_watchdog(cluster, supervisor, globals_group)


def _start_watchdog(cluster: Cluster, supervisor: pykka.ActorRef[Any], globals_group: Any) -> None:
    settings = cluster.settings
    # Checked far more often than a tick: fencing must happen before the lease can expire,
    # even while a tick hangs inside the lease actor.
    step = min(0.05, settings.cluster_tick_s / 4)

    def run() -> None:
        next_tick = next_check = time.monotonic()
        while not cluster.stopping.wait(step):
            now = time.monotonic()
            if cluster.keeper.fence_due(now):
                fence(supervisor, cluster.node.name, cluster.drop_streams)
            if now >= next_tick:
                next_tick = now + settings.cluster_tick_s
                tell(globals_group.ref("leases"), Tick(now))
            if now >= next_check:
                next_check = now + settings.cluster_resync_s
                tell(globals_group.ref("fanout"), CheckHeads())

    threading.Thread(target=run, name="cluster-watchdog", daemon=True).start()
