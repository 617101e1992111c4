"""Runtime: boots the system as a flat list of steps and is the facade the HTTP layer calls.

Reads go straight to the store rather than through the store actor: SQLite in WAL mode (and
Postgres) give readers a consistent snapshot, and routing reads through the single writer would
make every chart refresh wait behind ingest batches. Writes always go through the series' store
actor, which keeps one writer per series and orders "stored" before "published".
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NoReturn, Sequence

import orjson
import pykka

from trade_canvas import __version__
from trade_canvas.actors import instruments
from trade_canvas.actors.plumbing import StatusBoard, tell
from trade_canvas.actors.hub import HubState, SubscriberHub
from trade_canvas.actors.connection import StreamConnections
from trade_canvas.actors.factor import FactorActor, factor_options
from trade_canvas.actors.feed import FeedActor
from trade_canvas.actors.messages import (
    AcquireFeed,
    Crash,
    PinFeed,
    ReleaseFeed,
    StartGlobal,
    EnsureSeries,
    PublishForming,
    StoreCandles,
    Subscribe,
    Tick,
    Unsubscribe,
)
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.actors.store import StoreActor
from trade_canvas.actors.subscriber import Outbox
from trade_canvas.actors.supervisor import SeriesGroup, Supervisor
from trade_canvas.candles import Candle, dedupe_sorted
from trade_canvas.config import (
    Settings, cluster_mode, load_settings, load_whitelist, unknown_names,
)
from trade_canvas.errors import (
    ConfigError, InvalidInput, NotFound, TradeCanvasError, Unavailable,
)
from trade_canvas.exchanges import binance
from trade_canvas.feed_demand import FeedDemand, FeedJob
from trade_canvas.runtime import factor_reads, frames, market_health
from trade_canvas.runtime.cache import ResponseCache, WriteGenerations
from trade_canvas.runtime.cluster import open_cluster, start_cluster
from trade_canvas.runtime.backtest import Backtests, start_backtests
from trade_canvas.runtime.journal import DebugJournal, event_from_record
from trade_canvas.runtime.logs import install_journal
from trade_canvas.runtime.history import quiet_ingest
from trade_canvas.runtime.replay_packages import ReplayPackages, start_replay_packages
from trade_canvas.runtime.top_markets import TopMarkets, start_top_markets
from trade_canvas.series import SeriesId, parse_series_id
from trade_canvas.storage import CandleStore
from trade_canvas.storage.lockfile import LockFile, hold_lock

logger = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0
TICK_INTERVAL_S = 0.5


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
    stopping: threading.Event = field(default_factory=threading.Event)
    connections: dict[int, Outbox] = field(default_factory=dict)
    store_closed: bool = False
    generations: WriteGenerations = field(default_factory=WriteGenerations)
    read_cache: ResponseCache = field(default_factory=lambda: ResponseCache(64 << 20))
    backtests: Backtests | None = None  # started last in boot, stopped first
    top_markets: TopMarkets | None = None  # a supervised process-wide child
    replays: ReplayPackages | None = None  # replay packages: a supervised job runner
    journal: DebugJournal | None = None  # recent backend events for /ws/debug (debug API)
    stop_journal: Callable[[], None] | None = None
    cluster: Any = None  # runtime.cluster.Cluster in cluster mode (README "Running many processes")

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
        """Show a forming candle to the series' subscribers (a series not running has none)."""
        group = self.groups.get(series.text)
        if group is not None:
            tell(group.ref("hub"), PublishForming(candle))

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


def open_store(settings: Settings) -> CandleStore:
    """Open the configured candle store."""
    if settings.enable_pg_store:
        from trade_canvas.storage.postgres import PostgresCandleStore

        return PostgresCandleStore(
            settings.postgres_dsn,
            schema=settings.postgres_schema,
            pool_min_size=settings.postgres_pool_min_size,
            pool_max_size=settings.postgres_pool_max_size,
            connect_timeout_s=settings.postgres_connect_timeout_s,
            sequenced=cluster_mode(settings),
        )
    from trade_canvas.storage.sqlite import SqliteCandleStore

    return SqliteCandleStore(settings.db_path)


def make_blueprint(
    settings: Settings, store: CandleStore, generations: WriteGenerations,
    on_committed: Callable[..., None] | None = None,
) -> Callable[..., dict[str, Any]]:
    """Return how a series group is built: one line per actor kind, in start order."""

    def blueprint(series: SeriesId, group: SeriesGroup) -> dict[str, Any]:
        hub_state = HubState()
        group.in_use = lambda: bool(hub_state.subscriptions)
        factor = factor_options(settings)
        return {
            "hub": lambda link: SubscriberHub.start(
                series, store, hub_state, link,
                catchup_limit=settings.market_ws_catchup_limit,
                forming_interval_s=settings.market_forming_min_interval_ms / 1000.0,
            ),
            "store": lambda link: StoreActor.start(
                series, store, group.ref, link, generations.bump, on_committed=on_committed),
            "factor": lambda link: FactorActor.start(series, store, group.ref, link, factor),
        }

    return blueprint


def make_feed_blueprint(
    settings: Settings, store: CandleStore, rest: BinanceRest, globals_group: SeriesGroup
) -> Callable[[SeriesId, SeriesGroup, FeedJob], Any]:
    """Return how a series' feed actor is started."""

    def feed(series: SeriesId, group: SeriesGroup, job: FeedJob) -> Any:
        streams = lambda: globals_group.ref(f"streams:{series.market}")  # noqa: E731
        return lambda link: FeedActor.start(
            series, job, rest, streams, group.ref, store, link,
            tail_max=settings.market_auto_tail_backfill_max_candles,
        )

    return feed


def release_freed_memory() -> None:
    """Hand memory freed by stopped series groups back to the OS.

    CPython and glibc keep freed blocks for reuse, so after a churn of thousands of on-demand
    series the process stays at its peak RSS although nothing references that memory any more.
    A collection frees the groups' reference cycles and glibc's ``malloc_trim`` returns its free
    pages; both run only after a tick that reaped groups.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None  # not glibc: nothing to trim


def _start_feeds(runtime: Runtime) -> None:
    settings = runtime.settings
    if not (settings.enable_whitelist_ingest or settings.enable_ondemand_ingest):
        return
    urls = {"spot": settings.binance_spot_ws_url, "futures": settings.binance_futures_ws_url}
    for market, url in urls.items():
        start = (lambda m, u: lambda link: StreamConnections.start(
            m, u, link,
            streams_per_connection=settings.binance_ws_streams_per_connection,
            silence_timeout_s=settings.binance_ws_silence_timeout_s,
        ))(market, url)
        runtime.supervisor.tell(StartGlobal(f"streams:{market}", start))
    if not settings.enable_whitelist_ingest:
        return
    for series_id in runtime.whitelist:
        series = parse_series_id(series_id)
        if binance.followable(series):
            runtime.supervisor.tell(PinFeed(series))
        else:
            logger.warning("whitelist series %s has no live feed (not a Binance series)", series_id)


def _start_ticker(runtime: Runtime) -> None:
    def run() -> None:
        while not runtime.stopping.wait(TICK_INTERVAL_S):
            try:
                runtime.supervisor.tell(Tick(time.monotonic()))
            except pykka.ActorDeadError:
                return

    threading.Thread(target=run, name="supervisor-ticker", daemon=True).start()


def boot(settings: Settings, clock: Callable[[], float] = time.time) -> Runtime:
    """Start the store and the supervisor; returns the facade."""
    whitelist = load_whitelist(settings.whitelist_path)
    instruments.label_series(whitelist)
    store = open_store(settings)
    board = StatusBoard()
    groups: dict[str, SeriesGroup] = {}
    rest = BinanceRest.from_settings(settings)
    globals_group = SeriesGroup(None)
    generations = WriteGenerations()
    cluster = open_cluster(settings) if cluster_mode(settings) else None
    supervisor = Supervisor.start(
        make_blueprint(settings, store, generations,
                       cluster.notifier.written if cluster is not None else None), board, groups,
        globals_group=globals_group,
        feed_blueprint=make_feed_blueprint(settings, store, rest, globals_group),
        demand=FeedDemand(settings.ondemand_max_jobs),
        idle_ttl_s=settings.ondemand_idle_ttl_s,
        cluster=cluster is not None,
        series_idle_ttl_s=settings.series_idle_ttl_s,
        max_series=settings.max_series,
        on_reaped=release_freed_memory,
    )
    runtime = Runtime(
        settings, store, board, supervisor, whitelist, groups, rest, clock=clock,
        generations=generations,
        read_cache=ResponseCache(settings.read_cache_mb << 20),
    )
    if settings.enable_debug_api:
        runtime.journal = DebugJournal(settings.debug_event_buffer)
        runtime.stop_journal = install_journal(runtime.journal.record, event_from_record)
    _start_ticker(runtime)
    if cluster is not None:
        runtime.cluster = cluster
        start_cluster(cluster, supervisor, globals_group, groups, store, generations.bump)
    _start_feeds(runtime)
    runtime.top_markets = start_top_markets(settings, rest, supervisor, globals_group)
    runtime.replays = start_replay_packages(
        settings, store, rest, quiet_ingest(runtime.ingest_closed), supervisor, globals_group
    )
    runtime.backtests = start_backtests(
        settings, store, rest, quiet_ingest(runtime.ingest_closed)
    )
    logger.info(
        "runtime up: store=%s whitelist=%d series", store.backend, len(whitelist)
    )
    return runtime


def validate_kind(kind: str) -> str:
    """Check an actor kind named by a debug request."""
    if kind not in ("store", "hub", "feed", "factor"):
        raise InvalidInput("kind must be one of: store, hub, feed, factor")
    return kind



_current: list[Runtime] = []
_locks: list[LockFile] = []


def current_runtime() -> Runtime | None:
    """Return the runtime booted in this process, if any (used by server hooks)."""
    return _current[-1] if _current else None


def boot_from_environ(
    environ: Mapping[str, str], configure_logging: Callable[[str, str], None]
) -> Runtime:
    """Load settings from the environment, set up logging, warn about unknown names, boot.

    Raises:
        SystemExit: with gunicorn's worker-boot-error code after logging one line, when the
            settings are invalid or the store cannot be opened (ConfigError, Unavailable).
    """
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        configure_logging("INFO", "text")
        _boot_failed(exc)
    configure_logging(settings.log_level, settings.log_format)
    for name, closest in unknown_names(environ):
        hint = f"; did you mean {closest}?" if closest else ""
        logger.warning("unknown setting %s is ignored%s", name, hint)
    try:
        if not settings.enable_pg_store:
            # Held until the process ends: the server is the only process on the SQLite file.
            _locks.append(hold_lock(settings.db_path))
        runtime = boot(settings)
    except (ConfigError, Unavailable) as exc:
        _boot_failed(exc)
    _current.append(runtime)
    return runtime


def _boot_failed(exc: TradeCanvasError) -> NoReturn:
    # An exception would make gunicorn log its traceback ("Exception in worker process") for
    # what is an operator's mistake or an outage, already explained by the message. Exiting
    # with WORKER_BOOT_ERROR instead makes the master stop at once with that code; any other
    # code would make it respawn the worker in a loop.
    from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]

    logger.error("cannot start: %s", exc)
    raise SystemExit(Arbiter.WORKER_BOOT_ERROR)
