"""Messages between actors: frozen dataclasses, because pykka does not copy messages.

Commands are imperative (``StoreCandles``), events past tense (``CandlesStored``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import pykka

from trade_canvas.actors.subscriber import MarketStream, Outbox
from trade_canvas.candles import Candle
from trade_canvas.cluster import AnyHint, Hint
from trade_canvas.exchanges.binance import KlineUpdate
from trade_canvas.exchanges.binance_markets import MarketInfo
from trade_canvas.freqtrade.commands import BacktestRequest
from trade_canvas.freqtrade.values import BacktestResult
from trade_canvas.series import SeriesId

ActorRef = pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class EnsureSeries:
    """Start the actor group of a series if it is not running; answers the group."""

    series: SeriesId


@dataclass(frozen=True, slots=True)
class StopSeries:
    """Stop every actor of a series."""

    series_id: str


@dataclass(frozen=True, slots=True)
class StoreCandles:
    """Write closed candles (sorted, unique times); answers the count written.

    Sent with ``reply_to`` (a feed), the store actor tells it ``CandlesCommitted`` or
    ``StoreFailed`` with ``batch`` instead of failing, so the sender advances only on a commit.
    """

    candles: tuple[Candle, ...]
    publish: bool = True
    reply_to: ActorRef | None = None
    batch: int = 0
    source: str = "http"  # who sent them, for the candles-stored metric: http, feed, backfill


@dataclass(frozen=True, slots=True)
class CandlesCommitted:
    """The ``StoreCandles`` numbered ``batch`` is durable."""

    batch: int


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """The ``StoreCandles`` numbered ``batch`` was not written (the store is unavailable)."""

    batch: int
    error: str


@dataclass(frozen=True, slots=True)
class CandlesStored:
    """Closed candles are durable; subscribers may see them."""

    candles: tuple[Candle, ...]
    committed_at: float = 0.0  # time.monotonic() of the commit (fan-out latency); 0: unknown


@dataclass(frozen=True, slots=True)
class PublishForming:
    """Show a not-yet-closed candle to subscribers (never stored)."""

    candle: Candle
    remote: bool = False  # from another process (cluster mode): not relayed again


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Add (or re-cursor) a connection's subscription; catch-up follows at once."""

    outbox: Outbox
    since: int | None
    supports_batch: bool
    draw: bool = False  # the connection asked for the factor overlay's draw_delta messages


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove a connection's subscription."""

    outbox: Outbox


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send one system message to every subscriber of the series."""

    message: dict[str, Any]
    remote: bool = False  # from another process (cluster mode): not relayed again


@dataclass(frozen=True, slots=True)
class DrawChanged:
    """Send one ``draw_delta`` message to the subscribers that asked for the overlay."""

    message: dict[str, Any]
    remote: bool = False  # from another process (cluster mode): not relayed again


@dataclass(frozen=True, slots=True)
class Crash:
    """Make the receiving actor fail (debug API: proves supervision works)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """A child finished ``on_start``."""

    series_id: str | None
    kind: str
    generation: int


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A child died of an exception."""

    series_id: str | None
    kind: str
    generation: int
    error: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic supervisor wake-up: liveness checks and due restarts."""

    now: float


# -- live feed


@dataclass(frozen=True, slots=True)
class AcquireFeed:
    """A subscriber wants the series followed live; answers or raises CapacityExceeded."""

    series: SeriesId


@dataclass(frozen=True, slots=True)
class ReleaseFeed:
    """A subscriber of a followed series went away."""

    series_id: str


@dataclass(frozen=True, slots=True)
class PinFeed:
    """Follow a series for the life of the process (whitelist)."""

    series: SeriesId


@dataclass(frozen=True, slots=True)
class StartGlobal:
    """Start a process-wide child (e.g. one market's stream connections)."""

    kind: str
    # A ChildStart (link -> started actor ref); its link type is not named here because the
    # plumbing module imports these messages.
    start: Callable[..., ActorRef]


@dataclass(frozen=True, slots=True)
class AddStream:
    """Route an exchange stream to a feed actor and subscribe to it upstream."""

    stream: str
    feed: ActorRef


@dataclass(frozen=True, slots=True)
class RemoveStream:
    """Stop routing and unsubscribe an exchange stream.

    With ``feed``, only while the stream still routes to that feed: a stopped feed's late
    removal never takes the stream from the feed started after it.
    """

    stream: str
    feed: ActorRef | None = None


@dataclass(frozen=True, slots=True)
class DropAllStreams:
    """Cluster mode, on fencing: close every upstream connection of the market at once.

    Told straight to the stream actors, not through the supervisor and the feeds, which may be
    waiting on the Postgres the process lost; the feeds' later removals are no-ops.
    """


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """A stream connection's socket is open with ``streams`` subscribed by its URL."""

    connection_id: int
    generation: int
    streams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """A stream connection's socket failed or closed."""

    connection_id: int
    generation: int
    error: str


@dataclass(frozen=True, slots=True)
class KlineReceived:
    """A decoded kline frame for the receiving feed."""

    update: KlineUpdate


@dataclass(frozen=True, slots=True)
class StreamResumed:
    """The feed's stream is live again: fill whatever closed while it was down."""


@dataclass(frozen=True, slots=True)
class FillTail:
    """Fetch the closed candles the store lacks, up to the tail limit, over REST."""


@dataclass(frozen=True, slots=True)
class ContinueFactors:
    """Fold the next chunk of stored candles (the factor actor tells itself between chunks)."""


@dataclass(frozen=True, slots=True)
class FoldPending:
    """Fold the candles that arrived since the last fold (the factor actor's timer tells it)."""


# -- top markets


@dataclass(frozen=True, slots=True)
class GetTopMarkets:
    """Answer the top-markets payload into ``reply`` (a pykka future), fetching if needed."""

    market: str
    quote_asset: str
    limit: int
    force: bool
    client: str
    reply: pykka.Future[Any]


@dataclass(frozen=True, slots=True)
class MarketFetched:
    """A fetch job of one market ended: parsed parts (None when not fetched) or an error."""

    market: str
    job_id: int
    infos: dict[str, MarketInfo] | None
    rows: list[object] | None
    error: str | None


@dataclass(frozen=True, slots=True)
class WatchTopMarkets:
    """Feed an SSE client's stream from the shared poller of its (market, quote, limit)."""

    stream: MarketStream


@dataclass(frozen=True, slots=True)
class UnwatchTopMarkets:
    """An SSE client left; its poller stops when it was the last one."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PollTopMarkets:
    """A poller's interval elapsed (told by its timer)."""

    key: tuple[str, str, int]


# -- replay packages and coverage jobs


@dataclass(frozen=True, slots=True)
class RunReplayJob:
    """Run a replay job (a package build or a coverage fill) once a build slot is free.

    ``work`` is called in its own greenlet; it returns when done.
    """

    job_id: str
    work: Callable[[], object]


@dataclass(frozen=True, slots=True)
class ReplayJobEnded:
    """A replay job's work returned (``error`` is its failure text, None on success)."""

    job_id: str
    error: str | None


# -- cluster mode (several processes on one Postgres)


@dataclass(frozen=True, slots=True)
class WantLeases:
    """The series this process would follow live if it held their leases (supervisor -> leases)."""

    series_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class LeasesChanged:
    """The series whose lease this process now holds, with their fencing epochs.

    Empty when it fenced itself. The epoch changes only when the lease moved (a claim), so an
    owner whose epoch changed lost the series in between.
    """

    owned: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class FactorCatchUp:
    """Another process wrote the series without the candles in the hint: read the store."""


@dataclass(frozen=True, slots=True)
class HintReceived:
    """A notification from the listener: another (or this) process wrote or released a series,
    or another one relays a forming candle, a draw delta or a system message."""

    hint: AnyHint


@dataclass(frozen=True, slots=True)
class WrittenHere:
    """This process committed a write (its store actor -> fan-out), with the hint sent for it.

    The local hub has the candles already; the fan-out only moves its position, and the hint
    coming back through Postgres is dropped before it reaches the fan-out (it would be a
    duplicate delivery, or for a batch too big to inline, a read of the store).
    """

    hint: Hint


@dataclass(frozen=True, slots=True)
class CheckHeads:
    """Compare every followed series' write sequence with what was delivered (periodic)."""


@dataclass(frozen=True, slots=True)
class ListenerConnected:
    """The listener (re)connected: notifications may have been lost, resync everything."""


# -- freqtrade backtests (asked by the runtime facade; see actors/backtest.py)


@dataclass(frozen=True, slots=True)
class RunBacktest:
    """Queue a backtest; answers the queued BacktestJob, later sets ``reply_to`` to the result."""

    request: BacktestRequest
    reply_to: pykka.Future[BacktestResult] | None = None
    # Called in the job's thread before freqtrade runs, with a function reporting progress
    # (a dict shown as the job's ``progress``); an UpstreamError ends the job as
    # ``exchange_unreachable``. The runtime fetches and exports missing candles here.
    prepare: Callable[[Callable[[dict[str, Any]], None]], None] | None = None


@dataclass(frozen=True, slots=True)
class GetBacktest:
    """Answer the BacktestJob with this id, or None."""

    job_id: str


@dataclass(frozen=True, slots=True)
class ListBacktests:
    """Answer running and queued jobs, then the last finished ones, newest first."""


@dataclass(frozen=True, slots=True)
class ListStrategies:
    """Run ``freqtrade list-strategies`` in a thread; sets ``reply_to`` to the sorted names.

    The ask answers None at once; ``reply_to`` gets the names or an exception.
    """

    reply_to: pykka.Future[list[str]]
    recursive: bool = True


@dataclass(frozen=True, slots=True)
class GetPairTimeframes:
    """Answer ``{pair, trading_mode, datadir, available_timeframes}`` (a directory listing)."""

    pair: str


@dataclass(frozen=True, slots=True)
class ExportCandles:
    """Write stored candles as freqtrade's data file for the pair; answers the file path.

    Runs in the actor (a pandas write of a few thousand rows); ``pair`` is as the request
    gives it, the trading mode comes from the base config.
    """

    pair: str
    timeframe: str
    candles: tuple[Candle, ...]
    merge: bool = False  # keep the rows of an existing file, adding the new ones


@dataclass(frozen=True, slots=True)
class BacktestProgressed:
    """A run reported progress (told by the run's thread)."""

    job_id: str
    progress: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BacktestFinished:
    """A run ended (told by the run's thread)."""

    job_id: str
    result: BacktestResult


@dataclass(frozen=True, slots=True)
class StrategiesListed:
    """A ``list-strategies`` child ended (told by its thread)."""
