"""Boot: starts the runtime as a flat list of steps, each a small function (mopidy's commands).

``boot`` opens the store and the REST client, starts the supervisor and the facade over it, then
the ticker, cluster mode, feeds and the process-wide services, in that order; ``Runtime.stop``
undoes them in reverse. ``boot_from_environ`` is the gunicorn worker's entry: settings, logging,
the SQLite lock file, then ``boot``.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import threading
import time
from typing import Any, Callable, Mapping, NoReturn

import pykka

from trade_canvas.actors import instruments
from trade_canvas.actors.connection import StreamConnections
from trade_canvas.actors.factor import FactorActor, factor_options
from trade_canvas.actors.feed import FeedActor
from trade_canvas.actors.hub import HubState, SubscriberHub
from trade_canvas.actors.messages import PinFeed, RemoveStream, StartGlobal, Tick
from trade_canvas.actors.plumbing import StatusBoard, tell
from trade_canvas.actors.store import StoreActor
from trade_canvas.actors.supervisor import SeriesGroup, Supervisor
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.config import (
    Settings,
    cluster_mode,
    load_settings,
    load_whitelist,
    processes_per_ip,
    session_dsn,
    unknown_names,
)
from trade_canvas.errors import ConfigError, InvalidInput, TradeCanvasError, Unavailable
from trade_canvas.exchanges import binance
from trade_canvas.feed_demand import Demand, FeedDemand, FeedJob
from trade_canvas.runtime.backtest import start_backtests
from trade_canvas.runtime.cache import ResponseCache, WriteGenerations
from trade_canvas.runtime.cluster import Cluster, open_cluster, start_cluster
from trade_canvas.runtime.history import quiet_ingest
from trade_canvas.runtime.journal import DebugJournal, event_from_record
from trade_canvas.runtime.logs import install_journal
from trade_canvas.runtime.replay_packages import start_replay_packages
from trade_canvas.runtime.system import Runtime
from trade_canvas.runtime.top_markets import start_top_markets
from trade_canvas.series import SeriesId, parse_series_id
from trade_canvas.storage import CandleStore, open_store
from trade_canvas.storage.feed_refs import ClusterFeedDemand
from trade_canvas.storage.lockfile import LockFile, hold_lock

logger = logging.getLogger(__name__)

TICK_INTERVAL_S = 0.5


def open_configured_store(settings: Settings) -> CandleStore:
    """Open the candle store the settings name (Postgres or the SQLite file)."""
    if settings.enable_pg_store:
        return open_store(
            settings.postgres_dsn, postgres=True,
            schema=settings.postgres_schema,
            pool_min_size=settings.postgres_pool_min_size,
            pool_max_size=settings.postgres_pool_max_size,
            connect_timeout_s=settings.postgres_connect_timeout_s,
            sequenced=cluster_mode(settings),
        )
    return open_store(settings.db_path, postgres=False)


def make_blueprint(
    settings: Settings, store: CandleStore, generations: WriteGenerations,
    on_committed: Callable[..., None] | None = None, *, with_factor: bool = True,
    relay: Callable[..., None] | None = None,
) -> Callable[..., dict[str, Any]]:
    """Return how a series group is built: one line per actor kind, in start order.

    In cluster mode (``with_factor`` False) the factor actor is not part of the group: the
    supervisor starts it only on the process holding the series' lease (``make_factor_blueprint``).
    """

    def blueprint(series: SeriesId, group: SeriesGroup) -> dict[str, Any]:
        hub_state = HubState()
        group.in_use = lambda: bool(hub_state.subscriptions)
        factor = factor_options(settings)
        children = {
            "hub": lambda link: SubscriberHub.start(
                series, store, hub_state, link,
                catchup_limit=settings.market_ws_catchup_limit,
                forming_interval_s=settings.market_forming_min_interval_ms / 1000.0,
                relay=relay,
            ),
            "store": lambda link: StoreActor.start(
                series, store, group.ref, link, generations.bump, on_committed=on_committed),
            "factor": lambda link: FactorActor.start(series, store, group.ref, link, factor),
        }
        if not with_factor:
            del children["factor"]
        return children

    return blueprint


def make_factor_blueprint(
    settings: Settings, store: CandleStore, node_id: str
) -> Callable[[SeriesId, SeriesGroup, int], Any]:
    """Return how the lease owner's factor actor of a series is started (cluster mode)."""

    def factor(series: SeriesId, group: SeriesGroup, epoch: int) -> Any:
        options = factor_options(settings)
        return lambda link: FactorActor.start(series, store, group.ref, link, options,
                                              fence=(node_id, epoch))

    return factor


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


def make_unroute(globals_group: SeriesGroup) -> Callable[[SeriesId, Any], None]:
    """Return how the supervisor takes a stopped feed's stream off the upstream connection."""

    def unroute(series: SeriesId, feed: Any) -> None:
        try:
            stream = binance.series_stream(series)
        except InvalidInput:
            return
        tell(globals_group.ref(f"streams:{series.market}"), RemoveStream(stream, feed))

    return unroute


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
            processes_per_ip=processes_per_ip(settings), upstream=runtime.upstream,
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
    """Start everything, one step after the other; returns the facade.

    ``Runtime.stop`` undoes the steps in reverse order.
    """
    whitelist = load_whitelist(settings.whitelist_path)
    instruments.label_series(whitelist)
    store = open_configured_store(settings)
    rest = BinanceRest.from_settings(settings)
    cluster = open_cluster(settings) if cluster_mode(settings) else None
    runtime = _start_supervisor(settings, store, rest, whitelist, cluster, clock)
    _start_journal(runtime)
    _start_ticker(runtime)
    _start_cluster(runtime, cluster)
    _start_feeds(runtime)
    _start_top_markets(runtime)
    _start_replays(runtime)
    _start_backtests(runtime)
    logger.info("runtime up: store=%s whitelist=%d series", store.backend, len(whitelist))
    return runtime


def _start_supervisor(
    settings: Settings, store: CandleStore, rest: BinanceRest, whitelist: tuple[str, ...],
    cluster: Cluster | None, clock: Callable[[], float],
) -> Runtime:
    groups: dict[str, SeriesGroup] = {}
    board = StatusBoard()
    globals_group = SeriesGroup(None)
    generations = WriteGenerations()
    supervisor = Supervisor.start(
        make_blueprint(settings, store, generations,
                       cluster.committed if cluster is not None else None,
                       with_factor=cluster is None,
                       relay=cluster.relay if cluster is not None else None), board, groups,
        globals_group=globals_group,
        feed_blueprint=make_feed_blueprint(settings, store, rest, globals_group),
        factor_blueprint=(make_factor_blueprint(settings, store, cluster.node.node_id)
                          if cluster is not None else None),
        unroute=make_unroute(globals_group),
        demand=make_demand(settings, cluster),
        idle_ttl_s=settings.ondemand_idle_ttl_s,
        cluster=cluster is not None,
        series_idle_ttl_s=settings.series_idle_ttl_s,
        max_series=settings.max_series,
        on_reaped=release_freed_memory,
    )
    return Runtime(
        settings, store, board, supervisor, whitelist, groups, rest, clock=clock,
        generations=generations, globals_group=globals_group,
        read_cache=ResponseCache(settings.read_cache_mb << 20),
    )


def make_demand(settings: Settings, cluster: Cluster | None) -> Demand:
    """Return the feed model: this process's, or the cluster's in cluster mode.

    A node that follows nothing live (both ingest switches off) runs no feed, so it neither
    joins the cluster's jobs nor wants their leases.
    """
    if cluster is None or not (settings.enable_whitelist_ingest or settings.enable_ondemand_ingest):
        return FeedDemand(settings.ondemand_max_jobs)
    return ClusterFeedDemand(  # per-session timeouts: the direct DSN, as the lease control's
        session_dsn(settings), settings.postgres_schema, cluster.node, settings.ondemand_max_jobs,
        tick_s=settings.cluster_tick_s, grace_s=settings.cluster_lease_ttl_s,
        connect_timeout_s=settings.postgres_connect_timeout_s)


def _start_journal(runtime: Runtime) -> None:
    if runtime.settings.enable_debug_api:
        runtime.journal = DebugJournal(runtime.settings.debug_event_buffer)
        runtime.stop_journal = install_journal(runtime.journal.record, event_from_record)


def _start_cluster(runtime: Runtime, cluster: Cluster | None) -> None:
    if cluster is not None:
        runtime.cluster = cluster
        start_cluster(cluster, runtime.supervisor, runtime.globals_group, runtime.groups,
                      runtime.store, runtime.generations.bump, runtime.upstream)


def _start_top_markets(runtime: Runtime) -> None:
    runtime.top_markets = start_top_markets(runtime.settings, runtime.rest, runtime.supervisor,
                                            runtime.globals_group)


def _start_replays(runtime: Runtime) -> None:
    runtime.replays = start_replay_packages(
        runtime.settings, runtime.store, runtime.rest, quiet_ingest(runtime.ingest_closed),
        runtime.supervisor, runtime.globals_group,
    )


def _start_backtests(runtime: Runtime) -> None:
    runtime.backtests = start_backtests(runtime.settings, runtime.store, runtime.rest,
                                        quiet_ingest(runtime.ingest_closed))


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
