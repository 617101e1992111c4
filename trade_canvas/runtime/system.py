"""Runtime: the facade the HTTP layer calls (booted by ``runtime/boot.py``).

Reads go straight to the store rather than through the store actor: SQLite in WAL mode (and
Postgres) give readers a consistent snapshot, and routing reads through the single writer would
make every chart refresh wait behind ingest batches. Writes always go through the series' store
actor, which keeps one writer per series and orders "stored" before "published".
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import orjson
import pykka

from trade_canvas import __version__
from trade_canvas.actors.messages import (
    AcquireFeed,
    Crash,
    EnsureSeries,
    ReleaseFeed,
    PublishForming,
    StoreCandles,
    Subscribe,
    Unsubscribe,
)
from trade_canvas.actors.plumbing import StatusBoard, tell
from trade_canvas.actors.subscriber import Outbox
from trade_canvas.actors.supervisor import SeriesGroup
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.candles import Candle, dedupe_sorted
from trade_canvas.config import Settings
from trade_canvas.errors import InvalidInput, NotFound, Unavailable
from trade_canvas.exchanges import binance
from trade_canvas.runtime import factor_reads, frames, market_health
from trade_canvas.runtime.backtest import Backtests
from trade_canvas.runtime.cache import ResponseCache, WriteGenerations
from trade_canvas.runtime.journal import DebugJournal
from trade_canvas.runtime.replay_packages import ReplayPackages
from trade_canvas.runtime.top_markets import TopMarkets
from trade_canvas.series import SeriesId
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0


@dataclass
class Runtime:
    """Facade over the actor system; every method is safe to call from any request greenlet."""

    settings: Settings
    store: CandleStore
    board: StatusBoard
    supervisor: pykka.ActorRef[Any]
    whitelist: tuple[str, ...]
    groups: dict[str, SeriesGroup]
    rest: BinanceRest
    clock: Callable[[], float] = time.time
    globals_group: SeriesGroup = field(default_factory=lambda: SeriesGroup(None))
    stopping: threading.Event = field(default_factory=threading.Event)
    connections: dict[int, Outbox] = field(default_factory=dict)
    store_closed: bool = False
    generations: WriteGenerations = field(default_factory=WriteGenerations)
    read_cache: ResponseCache = field(default_factory=lambda: ResponseCache(64 << 20))
    # market -> Binance streams held upstream (written by the StreamConnections actors)
    upstream: dict[str, frozenset[str]] = field(default_factory=dict)
    backtests: Backtests | None = None  # started last in boot, stopped first
    top_markets: TopMarkets | None = None  # a supervised process-wide child
    replays: ReplayPackages | None = None  # replay packages: a supervised job runner
    journal: DebugJournal | None = None  # recent backend events for /ws/debug (debug API)
    stop_journal: Callable[[], None] | None = None
    cluster: Any = None  # runtime.cluster.Cluster in cluster mode (README "Running several processes")

    # -- candles

    def group(self, series: SeriesId) -> SeriesGroup:
        """Return the series' actor group, starting it on first use (and marking it used).

        Raises:
            CapacityExceeded: ``TRADE_CANVAS_MAX_SERIES`` groups run and all are in use.
        """
        group = self.groups.get(series.text)
        if group is None:
            try:
                group = self.supervisor.ask(EnsureSeries(series), timeout=ASK_TIMEOUT_S)
            except (pykka.Timeout, pykka.ActorDeadError) as exc:
                raise Unavailable(f"supervisor did not answer: {exc}") from exc
        group.touched = time.monotonic()  # the supervisor's idle reaper reads it
        return group

    def _ref(self, series: SeriesId, kind: str) -> pykka.ActorRef[Any]:
        ref = self.group(series).ref(kind)
        if ref is None:
            raise Unavailable(f"{kind} actor of {series.text} is restarting; retry shortly")
        return ref

    def ingest_closed(
        self, series: SeriesId, candles: Sequence[Candle], publish: bool = True,
        source: str = "http",
    ) -> int:
        """Store closed candles durably (one transaction), then publish them; returns the count."""
        if self.stopping.is_set():
            raise Unavailable("server_shutting_down")
        unique = tuple(dedupe_sorted(candles))
        ref = self._ref(series, "store")
        try:
            return ref.ask(StoreCandles(unique, publish, source=source),
                           timeout=self.settings.ingest_timeout_s)
        except pykka.ActorDeadError as exc:
            raise Unavailable(f"store actor of {series.text} stopped; retry shortly") from exc
        except pykka.Timeout as exc:
            raise Unavailable(f"store actor of {series.text} is busy; retry shortly") from exc

    def publish_forming(self, series: SeriesId, candle: Candle) -> None:
        """Show a forming candle to the series' subscribers (a series not running has none
        here; in cluster mode the other processes' subscribers get it too)."""
        group = self.groups.get(series.text)
        if group is not None:
            tell(group.ref("hub"), PublishForming(candle))  # the hub relays it
        elif self.cluster is not None:
            self.cluster.relay_forming(series.text, candle)

    def candles_json(self, series_id: str, since: int | None, limit: int) -> bytes:
        """Return the encoded candles payload, from the response cache when still current."""
        key = (series_id, since, limit)
        generation = self.generations.get(series_id)
        body = self.read_cache.get(key, generation)
        if body is None:
            body = orjson.dumps(self.read_candles(series_id, since, limit))
            self.read_cache.put(key, generation, body)
        return body

    def read_candles(self, series_id: str, since: int | None, limit: int) -> dict[str, Any]:
        """Return the HTTP candles payload (tail without ``since``; ``since`` is exclusive)."""
        # Rows go straight to the wire shape (Candle.to_dict's keys): no Candle per row.
        rows = self.store.read_rows(series_id, since, limit)
        # A tail's last row is the head; only a since read needs the extra query.
        head = rows[-1][0] if rows and since is None else self.store.head_time(series_id)
        return {
            "series_id": series_id,
            "server_head_time": head,
            "candles": [
                {"candle_time": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
                for t, o, h, lo, c, v in rows
            ],
        }

    # -- factors: read the store directly, like read_candles

    def factor_slices(self, series: SeriesId, at_time: int, window: int) -> dict[str, Any]:
        """Return the ``GET /api/factor/slices`` body (Conflict while the ledger lags)."""
        return factor_reads.slices(self.store, series, at_time, window)

    def draw_delta(
        self, series: SeriesId, cursor: int, window: int, at_time: int | None
    ) -> dict[str, Any]:
        """Return the ``GET /api/draw/delta`` body (Conflict while the ledger lags)."""
        return factor_reads.draw_delta(self.store, series, cursor, window, at_time)

    def factor_health(self, series: SeriesId) -> dict[str, Any]:
        """Return the ``GET /api/factor/health`` body, with the factor actor's own view if up."""
        body = factor_reads.health(self.store, series)
        group = self.groups.get(series.text)
        record = group.children.get("factor") if group is not None else None
        body["factor_actor"] = record.snapshot() if record is not None else None
        return body

    def live_frame(self, series: SeriesId, window: int) -> dict[str, Any]:
        """Return the ``GET /api/frame/live`` body."""
        return frames.live_frame(self.store, series, window)

    def frame_at(self, series: SeriesId, at_time: int, window: int) -> dict[str, Any]:
        """Return the ``GET /api/frame/at_time`` body."""
        return frames.frame_at(self.store, series, at_time, window)

    def delta_poll(self, series: SeriesId, after_id: int, window: int) -> dict[str, Any]:
        """Return the ``GET /api/delta/poll`` body."""
        return frames.delta_poll(self.store, series, after_id, window)

    # -- market health (the chart's lamp and debug tab)

    def market_health(self, series: SeriesId, now: int | None) -> dict[str, Any]:
        """Return the ``GET /api/market/health`` body (``now`` overrides the clock)."""
        record = self._child(series, "feed")
        fill = record.snapshot().get("fill") if record is not None else None
        return market_health.kline_health(
            self.store, series, int(self.clock()) if now is None else now, fill,
            self.settings.kline_health_backfill_recent_seconds,
        )

    def series_health(self, series: SeriesId, max_gaps: int, base_buckets: int) -> dict[str, Any]:
        """Return the ``GET /api/market/debug/series_health`` body."""
        return market_health.series_health(
            self.store, series, int(self.clock()), max_gaps, base_buckets
        )

    def ingest_state(self) -> dict[str, Any]:
        """Return the ``GET /api/market/debug/ingest_state`` body."""
        return market_health.ingest_state(self.board.records(), self.whitelist, self.settings)

    def metrics(self) -> dict[str, Any]:
        """Return the ``GET /api/market/debug/metrics`` body."""
        connections = list(self.connections.values())
        return market_health.metrics(
            self.board.records(), len(connections), sum(len(o.subscriptions) for o in connections),
            int(self.clock() * 1000),
        )

    def _child(self, series: SeriesId, kind: str) -> Any:
        group = self.groups.get(series.text)
        return group.children.get(kind) if group is not None else None

    # -- WebSocket connections

    def open_connection(self) -> Outbox:
        """Register a new WebSocket connection and return its outbox."""
        if self.stopping.is_set():
            raise Unavailable("server_shutting_down")
        outbox = Outbox(self.settings.ws_send_queue_max, self.settings.ws_send_buffer_mb << 20)
        self.connections[outbox.id] = outbox
        return outbox

    def subscribe(
        self, outbox: Outbox, series: SeriesId, since: int | None, batch: bool, draw: bool = False
    ) -> None:
        """Subscribe a connection to a series; catch-up then live messages follow.

        Raises:
            InvalidInput: on-demand ingest is on and Binance does not offer the series.
            CapacityExceeded: no on-demand feed slot is free (nothing is subscribed then).
        """
        if self._wants_feed(outbox, series):
            self._ask(AcquireFeed(series))
            outbox.subscriptions.hold_feed(series.text)
        ref = self._ref(series, "hub")
        outbox.subscriptions.add(series.text)
        tell(ref, Subscribe(outbox, since, batch, draw))

    def _wants_feed(self, outbox: Outbox, series: SeriesId) -> bool:
        if not self.settings.enable_ondemand_ingest or outbox.subscriptions.holds_feed(series.text):
            return False
        return binance.followable(series)

    def _ask(self, message: Any) -> Any:
        try:
            return self.supervisor.ask(message, timeout=ASK_TIMEOUT_S)
        except (pykka.Timeout, pykka.ActorDeadError) as exc:
            raise Unavailable(f"supervisor did not answer: {exc}") from exc

    def unsubscribe(self, outbox: Outbox, series_id: str) -> None:
        """Remove one subscription of a connection (unknown ones are ignored)."""
        subscribed, held_feed = outbox.subscriptions.remove(series_id)
        if held_feed:
            tell(self.supervisor, ReleaseFeed(series_id))
        if not subscribed:
            return
        group = self._existing_group(series_id)
        if group is not None:
            tell(group.ref("hub"), Unsubscribe(outbox))

    def close_connection(self, outbox: Outbox) -> None:
        """Forget a connection and all its subscriptions."""
        for series_id in outbox.subscriptions.everything():
            self.unsubscribe(outbox, series_id)
        outbox.discard()
        self.connections.pop(outbox.id, None)

    def _existing_group(self, series_id: str) -> SeriesGroup | None:
        return self.groups.get(series_id)

    # -- operations

    def crash(self, series: SeriesId, kind: str) -> None:
        """Make one actor of a series fail (debug API).

        Raises:
            NotFound: the series has no running actors (nothing is started to crash it).
        """
        group = self.groups.get(series.text)
        ref = group.ref(kind) if group is not None else None
        if group is None or (ref is None and kind not in group.children):
            raise NotFound(f"series {series.text} has no running {kind} actor")
        if ref is None:
            raise Unavailable(f"{kind} actor of {series.text} is restarting; retry shortly")
        tell(ref, Crash(f"debug request for {kind} of {series.text}"))

    def status(self) -> dict[str, Any]:
        """Return the operator's view of every actor, without asking any actor."""
        actors = [record.snapshot() for record in self.board.records()]
        counts: dict[str, int] = {}
        for view in actors:
            counts[view["kind"]] = counts.get(view["kind"], 0) + 1
        return {
            "version": __version__,
            "started_at": self.board.booted_at,
            "uptime_s": round(time.time() - self.board.booted_at, 3),
            "store_backend": self.store.backend,
            "counts_by_kind": counts,
            "series_count": len({v["series_id"] for v in actors if v["series_id"]}),
            "websocket_connections": len(self.connections),
            "read_cache": self.read_cache.snapshot(),
            "rest_limits": {host: limiter.snapshot() for host, limiter in self.rest.limiters.items()},
            # Cluster mode: this process's node, fencing, listener and notifier (None outside).
            "cluster": self.cluster.local_view() if self.cluster is not None else None,
            "actors": actors,
        }

    def readiness(self) -> dict[str, Any]:
        """Check the store and the supervisor.

        Raises:
            Unavailable: naming what is not ready.
        """
        if self.stopping.is_set():
            raise Unavailable("server_shutting_down")
        self.store.ping()
        if not self.supervisor.is_alive():
            raise Unavailable("supervisor is not running")
        if self.cluster is not None:
            self.cluster.check_ready()
        return {"ready": True, "store_backend": self.store.backend}

    def cluster_view(self) -> dict[str, Any]:
        """Return the ``GET /api/runtime/cluster`` body (tables, plus this process's side).

        Raises:
            NotFound: not in cluster mode.
        """
        if self.cluster is None:
            from trade_canvas.errors import NotFound

            raise NotFound("not in cluster mode (TRADE_CANVAS_CLUSTER, TRADE_CANVAS_WORKERS)")
        body = self.cluster.view_leases.view()
        local = {sid: g for sid, g in self.groups.items()}
        body["this_node"] = {
            **self.cluster.local_view(),
            "feeds": sorted(sid for sid, g in local.items() if "feed" in g.children),
            "pinned": sorted(s for s in self.whitelist if s in local),
            "refcounts": {sid: (g.children["feed"].snapshot().get("refcount"))
                          for sid, g in local.items() if "feed" in g.children},
        }
        return body

    def begin_shutdown(self) -> None:
        """Refuse new work and close every WebSocket session (code 1001)."""
        self.stopping.set()
        for outbox in list(self.connections.values()):
            outbox.close("server_shutdown")
        if self.top_markets is not None:
            self.top_markets.close_streams()

    def stop(self) -> None:
        """Stop accepting work, close connections, stop actors in reverse order, close the store."""
        if self.store_closed:
            return
        self.begin_shutdown()
        self.store_closed = True
        if self.backtests is not None:
            self.backtests.stop()
        if self.cluster is not None:
            self.cluster.stop()
        try:
            self.supervisor.stop(block=True, timeout=10)
        except pykka.Timeout:
            logger.error("supervisor did not stop within 10s")
        leftovers = pykka.ActorRegistry.get_all()
        if leftovers:
            logger.error("bug: actors still running after stop: %s", leftovers)
            pykka.ActorRegistry.stop_all(block=True, timeout=5)
        if self.cluster is not None:
            self.cluster.close()
        self.store.close()
        logger.info("runtime stopped")
        if self.stop_journal is not None:
            self.stop_journal()


def validate_kind(kind: str) -> str:
    """Check an actor kind named by a debug request."""
    if kind not in ("store", "hub", "feed", "factor"):
        raise InvalidInput("kind must be one of: store, hub, feed, factor")
    return kind
