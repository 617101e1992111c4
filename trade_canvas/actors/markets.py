"""TopMarketsActor: the one owner of Binance's top-markets data (exchangeInfo + 24h tickers).

Every ``/api/market/top_markets`` request and every SSE stream of it ends up here, so upstream
traffic is decided in one place:

* **Caches.** Per market, the parsed exchangeInfo (TTL ``BINANCE_EXCHANGEINFO_TTL_S``) and the
  ticker rows (TTL ``BINANCE_TICKER_TTL_S``). A ranked list is memoised per (quote, limit)
  until the next ticker fetch.
* **No stampede, and the actor never blocks on HTTP.** A request the cache cannot answer becomes
  a ``Waiter`` of the market's one in-flight ``Job``. Starting a job spawns a worker (a thread,
  i.e. a greenlet under gevent) that does the blocking ``BinanceRest.get`` calls and ``tell``\\ s
  ``MarketFetched`` back; the actor then answers every waiter of that job from the one result.
  While a job runs, the actor keeps serving other markets, fresh-cache hits and streams, and
  new waiters whose needs the running job covers join it; the others queue for the next job.
  So concurrent requests for a market cost one upstream call, and spot never waits on futures.
* **Stale on error.** A failed job keeps the old cache and marks answers ``stale`` (with the
  error text); without any cache the answer is ``UpstreamError("upstream_error:...")``. For
  ``retry_after_failure_s`` after a failure, non-forced requests are answered from that outcome
  instead of calling again: an outage must not turn into a retry storm that spends the host's
  shared request weight (the feed's backfills use the same ``RestLimiter``).
* **force.** Bypasses both caches, limited per ``"<client>:<market>"`` to one per 2 s
  (``ForceLimiter``; a rejected attempt does not reset the clock).
* **Shared pollers for SSE.** Streams with the same (market, quote, limit) share one ``Poller``:
  one timer tells ``PollTopMarkets`` every (smallest subscriber) interval, the poll goes through
  the same cache/job path, and the encoded event is offered to each stream's bounded queue only
  when that stream has not seen these items yet. Hundreds of streams thus cost one cache lookup
  per interval and one upstream call per market per ticker TTL. The last stream leaving stops
  the timer. A stream whose queue is full is closed (slow client), never waited on.

Caches and the open streams live in ``TopMarketsState``, owned by the runtime, so a restarted
actor keeps its caches, re-creates pollers for the open streams and retries requests that were
waiting on a job lost with the old incarnation.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import orjson
import pykka

from trade_canvas.actors.plumbing import ChildLink, report_failure
from trade_canvas.actors.messages import (
    GetTopMarkets,
    MarketFetched,
    PollTopMarkets,
    UnwatchTopMarkets,
    WatchTopMarkets,
)
from trade_canvas.actors.subscriber import MarketStream, StreamEvent
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.errors import CapacityExceeded, Unavailable, UpstreamError
from trade_canvas.exchanges import binance, binance_markets

logger = logging.getLogger(__name__)

INFO = "info"
TICKERS = "tickers"
StreamKey = tuple[str, str, int]
Result = dict[str, Any] | Exception
_SORTED = orjson.OPT_SORT_KEYS


def encode_sorted(value: Any) -> bytes:
    """Encode compact JSON with sorted keys (the SSE data format, and change detection)."""
    return orjson.dumps(value, option=_SORTED)


class ForceLimiter:
    """At most one call per ``interval_s`` per key; rejected calls do not reset the clock."""

    def __init__(self, interval_s: float = 2.0, max_keys: int = 10_000) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        """Return whether a call under ``key`` may run at ``now`` (and count it if so)."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        if len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
        self._last[key] = now
        return True


@dataclass(frozen=True, slots=True)
class Waiter:
    """Someone (a request or a poller) waiting for a market's payload."""

    quote_asset: str
    limit: int
    force: bool
    deliver: Callable[[Result], None]
    needs: frozenset[str] = frozenset()


@dataclass(eq=False)
class Job:
    """A market's one in-flight upstream fetch and the waiters it will answer."""

    id: int
    parts: frozenset[str]
    waiters: list[Waiter]


@dataclass(eq=False)
class MarketCache:
    """Cached upstream data of one market and its fetch bookkeeping."""

    infos: dict[str, binance_markets.MarketInfo] | None = None
    infos_at: float = -math.inf
    rows: list[object] | None = None
    rows_at: float = -math.inf
    error: str | None = None
    failed_at: float = -math.inf
    job: Job | None = None
    waiting: list[Waiter] = field(default_factory=list)
    ranked: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(eq=False)
class TopMarketsState:
    """Caches and open streams: outlive actor restarts (owned by the runtime)."""

    markets: dict[str, MarketCache] = field(default_factory=dict)
    streams: dict[int, MarketStream] = field(default_factory=dict)

    def close_streams(self) -> None:
        """Close every open stream (shutdown)."""
        for stream in list(self.streams.values()):
            stream.close()


@dataclass(eq=False)
class Poller:
    """The shared poll loop of every stream with one (market, quote, limit)."""

    key: StreamKey
    streams: dict[int, MarketStream] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    interval_s: float = 2.0
    busy: bool = False
    items: bytes | None = None
    last: StreamEvent | None = None
    error: StreamEvent | None = None


def _spawn(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="top-markets-fetch", daemon=True).start()


def resolve(future: Any, result: Result) -> None:
    """Complete a pykka future with a payload or an exception."""
    if isinstance(result, Exception):
        future.set_exception((type(result), result, None))
    else:
        future.set(result)


class TopMarketsActor(pykka.ThreadingActor):
    """Caches Binance exchangeInfo and tickers per market; answers requests and feeds streams."""

    def __init__(
        self,
        rest: BinanceRest,
        state: TopMarketsState,
        link: ChildLink,
        *,
        info_ttl_s: float = 3600.0,
        ticker_ttl_s: float = 10.0,
        force_interval_s: float = 2.0,
        retry_after_failure_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        spawn: Callable[[Callable[[], None]], None] = _spawn,
    ) -> None:
        super().__init__()
        self.rest = rest
        self.state = state
        self.link = link
        link.release = self._stop_pollers
        self.info_ttl_s = info_ttl_s
        self.ticker_ttl_s = ticker_ttl_s
        self.retry_after_failure_s = retry_after_failure_s
        self.force_limiter = ForceLimiter(force_interval_s)
        self.clock = clock
        self.wall = wall
        self.spawn = spawn
        self.pollers: dict[StreamKey, Poller] = {}
        self._job_ids = itertools.count(1)

    # -- lifecycle

    def on_start(self) -> None:
        for market, cache in self.state.markets.items():
            self._retry_lost_job(market, cache)
        for stream in list(self.state.streams.values()):
            if stream.closed:
                self.state.streams.pop(stream.id, None)
            else:
                self._attach(stream)
        self.link.started()

    def on_stop(self) -> None:
        self._stop_pollers()
        self.state.close_streams()
        self.state.streams.clear()
        gone = Unavailable("server_shutting_down")
        for cache in self.state.markets.values():
            waiters = cache.waiting + (cache.job.waiters if cache.job else [])
            cache.job, cache.waiting = None, []
            for waiter in waiters:
                waiter.deliver(gone)

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case GetTopMarkets():
                return self._request(message)
            case MarketFetched():
                return self._fetched(message)
            case WatchTopMarkets():
                return self._watch(message.stream)
            case UnwatchTopMarkets():
                return self._unwatch(message.stream_id)
            case PollTopMarkets():
                return self._poll(message.key)
        logger.warning("top markets actor ignored %r", message)
        return None

    # -- requests, caches and jobs

    def _request(self, message: GetTopMarkets) -> None:
        def deliver(result: Result) -> None:
            resolve(message.reply, result)

        key = f"{message.client}:{message.market}"
        if message.force and not self.force_limiter.allow(key, self.clock()):
            return deliver(CapacityExceeded("rate_limited"))
        waiter = Waiter(message.quote_asset, message.limit, message.force, deliver)
        return self._want(message.market, waiter)

    def _cache(self, market: str) -> MarketCache:
        return self.state.markets.setdefault(market, MarketCache())

    def _needs(self, cache: MarketCache, force: bool, now: float) -> frozenset[str]:
        if force:
            return frozenset((INFO, TICKERS))
        if now - cache.failed_at < self.retry_after_failure_s:
            return frozenset()  # answer from the recent failure (stale or error) without calling
        needs = set()
        if cache.infos is None or now - cache.infos_at >= self.info_ttl_s:
            needs.add(INFO)
        if cache.rows is None or now - cache.rows_at >= self.ticker_ttl_s:
            needs.add(TICKERS)
        return frozenset(needs)

    def _want(self, market: str, waiter: Waiter) -> None:
        cache = self._cache(market)
        needs = self._needs(cache, waiter.force, self.clock())
        if not needs:
            return waiter.deliver(self._answer(market, cache, waiter, fetched=False))
        waiter = replace(waiter, needs=needs)
        if cache.job is not None and needs <= cache.job.parts:
            cache.job.waiters.append(waiter)
            return None
        cache.waiting.append(waiter)
        return self._start_job(market, cache)

    def _start_job(self, market: str, cache: MarketCache) -> None:
        if cache.job is not None or not cache.waiting:
            return
        parts = frozenset().union(*(waiter.needs for waiter in cache.waiting))
        job = Job(next(self._job_ids), parts, cache.waiting)
        cache.job, cache.waiting = job, []
        logger.debug("top markets: fetching %s %s (job %d)", market, sorted(parts), job.id)
        ref = self.actor_ref
        self.spawn(lambda: self._fetch(ref, market, job.id, parts))

    def _retry_lost_job(self, market: str, cache: MarketCache) -> None:
        if cache.job is not None:
            cache.waiting = cache.job.waiters + cache.waiting
            cache.job = None
        self._start_job(market, cache)

    def _fetch(self, ref: pykka.ActorRef[Any], market: str, job_id: int, parts: frozenset[str]) -> None:
        # Runs on a worker, never on the actor: the HTTP calls block (cooperatively under gevent).
        infos = rows = None
        error: str | None = None
        try:
            if INFO in parts:
                body = self.rest.get(market, binance.exchange_info_request(market))
                infos = binance_markets.parse_exchange_info(body, market)
            body = self.rest.get(market, binance.ticker_24hr_request(market))
            rows = binance_markets.parse_ticker_rows(body)
        except Exception as exc:  # boundary: any failure is reported to the actor, never raised
            error = str(exc) or type(exc).__name__
        try:
            ref.tell(MarketFetched(market, job_id, infos, rows, error))
        except pykka.ActorDeadError:
            logger.debug("top markets: actor gone before job %d of %s reported", job_id, market)

    def _fetched(self, message: MarketFetched) -> None:
        cache = self._cache(message.market)
        job = cache.job
        if job is None or job.id != message.job_id:
            return
        cache.job = None
        self._store(message, cache)
        for waiter in job.waiters:
            waiter.deliver(self._answer(message.market, cache, waiter, message.error is None))
        waiting, cache.waiting = cache.waiting, []
        for waiter in waiting:
            self._want(message.market, replace(waiter, needs=frozenset()))

    def _store(self, message: MarketFetched, cache: MarketCache) -> None:
        now = self.clock()
        if message.infos is not None:
            cache.infos, cache.infos_at = message.infos, now
        if message.rows is not None:
            cache.rows, cache.rows_at = message.rows, now
            cache.ranked.clear()
        if message.error is None:
            cache.error, cache.failed_at = None, -math.inf
            return
        cache.error, cache.failed_at = message.error, now
        logger.warning("top markets: binance %s failed: %s", message.market, message.error)

    def _answer(self, market: str, cache: MarketCache, waiter: Waiter, fetched: bool) -> Result:
        if cache.infos is None or cache.rows is None:
            return UpstreamError(f"upstream_error:{cache.error or 'no data'}")
        payload: dict[str, Any] = {
            "exchange": "binance",
            "market": market,
            "quote_asset": waiter.quote_asset,
            "limit": waiter.limit,
            "generated_at_ms": int(self.wall() * 1000),
            "cached": not fetched and not waiter.force,
            "stale": cache.error is not None,
            "items": self._ranked(market, cache, waiter.quote_asset, waiter.limit),
        }
        if cache.error is not None:
            payload["upstream_error"] = cache.error
        return payload

    def _ranked(self, market: str, cache: MarketCache, quote: str, limit: int) -> list[dict[str, Any]]:
        items = cache.ranked.get((quote, limit))
        if items is None:
            assert cache.infos is not None and cache.rows is not None
            ranked = binance_markets.rank_top_markets(cache.infos, cache.rows, market, quote, limit)
            items = cache.ranked[(quote, limit)] = [item.to_dict() for item in ranked]
        return items

    # -- streams

    def _watch(self, stream: MarketStream) -> None:
        if stream.closed:
            return
        self.state.streams[stream.id] = stream
        self._attach(stream)

    def _attach(self, stream: MarketStream) -> None:
        poller = self.pollers.get(stream.key)
        if poller is None:
            poller = self.pollers[stream.key] = Poller(stream.key, interval_s=stream.interval_s)
            poller.streams[stream.id] = stream
            self._start_timer(poller)
            logger.info("top markets poller %s started", "/".join(map(str, stream.key)))
            return self._poll(stream.key)
        poller.streams[stream.id] = stream
        poller.interval_s = min(poller.interval_s, stream.interval_s)
        if poller.last is not None:
            self._send(poller, stream, poller.last, poller.items)
        if poller.error is not None:
            self._offer(poller, stream, poller.error)
        return None

    def _start_timer(self, poller: Poller) -> None:
        ref = self.actor_ref

        def run() -> None:
            while not poller.stop.wait(poller.interval_s):
                try:
                    ref.tell(PollTopMarkets(poller.key))
                except pykka.ActorDeadError:
                    return

        threading.Thread(target=run, name="top-markets-poller", daemon=True).start()

    def _unwatch(self, stream_id: int) -> None:
        stream = self.state.streams.pop(stream_id, None)
        if stream is None:
            return
        stream.close()
        poller = self.pollers.get(stream.key)
        if poller is None or poller.streams.pop(stream_id, None) is None:
            return
        if poller.streams:
            poller.interval_s = min(s.interval_s for s in poller.streams.values())
            return
        poller.stop.set()
        del self.pollers[stream.key]
        logger.info("top markets poller %s stopped", "/".join(map(str, stream.key)))

    def _stop_pollers(self) -> None:
        for poller in self.pollers.values():
            poller.stop.set()
        self.pollers.clear()

    def _poll(self, key: StreamKey) -> None:
        poller = self.pollers.get(key)
        if poller is None or poller.busy:
            return
        poller.busy = True
        market, quote, limit = key
        self._want(market, Waiter(quote, limit, False, lambda result: self._publish(poller, result)))

    def _publish(self, poller: Poller, result: Result) -> None:
        poller.busy = False
        if poller.stop.is_set():
            return
        if isinstance(result, Exception):
            return self._publish_error(poller, str(result))
        items = encode_sorted(result["items"])
        poller.items = items
        poller.last = StreamEvent("top_markets", result["generated_at_ms"], encode_sorted(result))
        poller.error = None
        for stream in list(poller.streams.values()):
            self._send(poller, stream, poller.last, items)
        if result["stale"]:
            self._publish_error(poller, f"upstream_error:{result['upstream_error']}")
        return None

    def _publish_error(self, poller: Poller, message: str) -> None:
        data = {"at_ms": int(self.wall() * 1000), "message": message, "type": "error"}
        poller.error = StreamEvent("error", None, encode_sorted(data))
        for stream in list(poller.streams.values()):
            self._offer(poller, stream, poller.error)

    def _send(self, poller: Poller, stream: MarketStream, event: StreamEvent, items: bytes | None) -> None:
        if stream.sent_items != items and self._offer(poller, stream, event):
            stream.sent_items = items

    def _offer(self, poller: Poller, stream: MarketStream, event: StreamEvent) -> bool:
        if stream.offer(event):
            return True
        logger.info("top markets stream %d closed (client left or too slow)", stream.id)
        self._unwatch(stream.id)
        return False
