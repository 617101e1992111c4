"""FeedActor: follows one series on Binance and keeps its stored candles complete.

Live kline frames come from the market's ``StreamConnections``. Forming updates go to the hub
(which throttles them); each closed candle goes to the store actor, which publishes it after the
write. Whenever the stream (re)starts, and whenever a closed candle does not follow the last one,
the missing closed candles are fetched over REST first, so subscribers see every candle once,
in order. Duplicate and out-of-order frames (older than the last closed candle) are dropped.

Writes are acknowledged: the feed sends one ``StoreCandles`` at a time with itself as
``reply_to`` and moves its last-stored marker only on ``CandlesCommitted``. Candles that arrive
meanwhile wait in a backlog; a ``StoreFailed`` (store outage), a store actor that is restarting,
or no answer within ``STORE_ACK_TIMEOUT_S`` puts the batch back in front of the backlog, sent
again with the next frame after ``STORE_RETRY_S``. So a store outage delays candles but leaves
no hole, and nothing newer is published before the older candles are durable. A backlog longer
than two REST tails is dropped and refilled over REST from the stored head instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pykka

from trade_canvas.actors.plumbing import ChildLink, RefLookup, report_failure, tell
from trade_canvas.actors.messages import (
    AddStream,
    CandlesCommitted,
    Crash,
    KlineReceived,
    PublishForming,
    RemoveStream,
    StoreCandles,
    StoreFailed,
    StreamResumed,
)
from trade_canvas.binance_rest import BinanceRest, retrying
from trade_canvas.candles import Candle, dedupe_sorted
from trade_canvas.errors import UpstreamError
from trade_canvas.exchanges import binance
from trade_canvas.feed_demand import FeedJob
from trade_canvas.series import SeriesId, expected_latest_closed_time
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

REST_ATTEMPTS = 5
STORE_RETRY_S = 1.0  # pause after a failed write before the backlog is sent again
STORE_ACK_TIMEOUT_S = 30.0  # a write neither committed nor refused by then counts as failed


class FeedActor(pykka.ThreadingActor):
    """Live Binance klines plus REST hole filling for one series."""

    def __init__(
        self,
        series: SeriesId,
        job: FeedJob,
        rest: BinanceRest,
        streams: Callable[[], pykka.ActorRef[Any] | None],
        lookup: RefLookup,
        store: CandleStore,
        link: ChildLink,
        *,
        tail_max: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.series = series
        self.job = job
        self.rest = rest
        self.streams = streams
        self.lookup = lookup
        self.store = store
        self.link = link
        self.tail_max = tail_max
        self.clock = clock
        self.timeframe = series.timeframe
        self.market = series.market
        self.symbol = binance.to_binance_symbol(series.symbol)
        self.interval = binance.check_interval(series.timeframe)
        self.stream = binance.series_stream(series)
        self.max_limit = binance.limits_for(self.market).klines_max_limit
        self.last: int | None = None  # newest candle time the store committed for this feed
        self.backlog: list[Candle] = []  # closed candles not yet sent to the store, sorted
        self.inflight: tuple[Candle, ...] = ()  # the one batch the store has not answered yet
        self.inflight_at = 0.0
        self.batch = 0
        self.retry_at = 0.0
        self.filled = False
        self.holes: list[tuple[int, int]] = []  # ranges a REST fill could not fetch yet
        self.counters = {"closed": 0, "forming": 0, "duplicates": 0, "filled": 0, "rest_errors": 0,
                         "store_errors": 0}
        # The latest history fill, for the K-line health lamp (GET /api/market/health).
        self.fill: dict[str, Any] | None = None
        link.record.extra = self._status

    def _status(self) -> dict[str, Any]:
        return {"pinned": self.job.pinned, "refcount": self.job.refcount,
                "idle_since": self.job.idle_since, "stream": self.stream,
                "last_closed_time": self.last, "unfilled_holes": len(self.holes),
                "unstored": len(self.backlog) + len(self.inflight),
                "fill": self.fill, **self.counters}

    def on_start(self) -> None:
        self.last = self.store.head_time(self.series.text)
        tell(self.streams(), AddStream(self.stream, self.actor_ref))
        self.link.started()

    def on_stop(self) -> None:
        tell(self.streams(), RemoveStream(self.stream, self.actor_ref))

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case KlineReceived():
                self._kline(message.update)
                return self._flush()
            case StreamResumed():
                self._fill_tail()
                return self._flush()
            case CandlesCommitted():
                return self._committed(message.batch)
            case StoreFailed():
                return self._store_failed(message.batch, message.error)
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        return None

    def _kline(self, update: binance.KlineUpdate) -> None:
        candle = update.candle
        tip = self._tip()
        if tip is not None and candle.candle_time <= tip:
            if update.closed:
                self.counters["duplicates"] += 1
            return
        if not update.closed:
            self.counters["forming"] += 1
            tell(self.lookup("hub"), PublishForming(candle))
            return
        if not self.filled:
            self._fill_tail()
        tip = self._tip()
        if tip is not None and candle.candle_time <= tip:
            return
        batch = self._retry_holes()
        if tip is not None and candle.candle_time > self.timeframe.next_open(tip):
            batch += self._fetch_range(self.timeframe.next_open(tip),
                                       self.timeframe.previous_open(candle.candle_time))
        self.counters["closed"] += 1
        self._queue([*batch, candle])

    def _tip(self) -> int | None:
        """Return the newest candle time stored, being stored or waiting to be."""
        times = [t for t in (self.last,) if t is not None]
        times += [part[-1].candle_time for part in (self.backlog, self.inflight) if part]
        return max(times) if times else None

    def _queue(self, candles: list[Candle]) -> None:
        if candles:
            self.backlog = dedupe_sorted([*self.backlog, *candles])

    def _flush(self) -> None:
        """Send the backlog as the next write, unless one is unanswered or a retry is not due."""
        now = self.clock()
        if self.inflight:
            if now - self.inflight_at < STORE_ACK_TIMEOUT_S:
                return
            self._store_failed(self.batch, f"no answer in {STORE_ACK_TIMEOUT_S:g}s")
        if not self.backlog or now < self.retry_at:
            return
        if len(self.backlog) > 2 * self.tail_max:
            # The store was down for longer than a REST tail covers: refetch from the stored
            # head (the newest ``tail_max``) instead of holding an ever-growing backlog.
            logger.warning("feed %s: dropping %d unstored candles; refilling from the store head",
                           self.series.text, len(self.backlog))
            self.backlog, self.filled = [], False
            return
        self.batch += 1
        self.inflight, self.inflight_at, self.backlog = tuple(self.backlog), now, []
        message = StoreCandles(self.inflight, reply_to=self.actor_ref, batch=self.batch,
                               source="feed")
        if not tell(self.lookup("store"), message):
            self._store_failed(self.batch, "store actor is restarting")

    def _committed(self, batch: int) -> None:
        if batch != self.batch or not self.inflight:
            return  # the late answer to a batch already given up on and requeued
        self.last = max(self.inflight[-1].candle_time, self.last or 0)
        self.inflight = ()
        self._flush()

    def _store_failed(self, batch: int, error: str) -> None:
        if batch != self.batch or not self.inflight:
            return
        self.counters["store_errors"] += 1
        logger.warning("feed %s: storing %d candles failed (%s); retrying in %.1fs",
                       self.series.text, len(self.inflight), error, STORE_RETRY_S)
        self.backlog = dedupe_sorted([*self.inflight, *self.backlog])
        self.inflight = ()
        self.retry_at = self.clock() + STORE_RETRY_S

    def _rest(self, call: Callable[[], list[Candle]], what: str) -> list[Candle] | None:
        """Run a REST call with the client's retries; None once they are spent."""
        try:
            return call()
        except UpstreamError:
            logger.error("feed %s: %s failed %d times; will retry later", self.series.text, what,
                         REST_ATTEMPTS)
            return None

    def _rest_error(self, exc: Exception) -> None:
        self.counters["rest_errors"] += 1
    def _retry_holes(self) -> list[Candle]:
        holes, self.holes = self.holes, []
        found: list[Candle] = []
        for start, end in holes:
            found += self._fetch_range(start, end)
        return found

    def _fill_tail(self) -> None:
        """Store the closed candles between the last stored one and now (at most ``tail_max``)."""
        self._note_fill("running", "tail_coverage")
        candles = self._rest(
            lambda: retrying(self._tail_candles, f"feed {self.series.text}: tail fill",
                             REST_ATTEMPTS, self._rest_error), "tail fill")
        if candles is None:
            self._note_fill("failed", "tail_coverage", "rest requests kept failing")
            return
        self.filled = True
        self.counters["filled"] += len(candles)
        self._queue(candles)
        self._note_fill("succeeded", "tail_coverage")
        if candles:
            logger.info("feed %s: filled %d candles (%d..%d)", self.series.text, len(candles),
                        candles[0].candle_time, candles[-1].candle_time)

    def _note_fill(self, state: str, reason: str, error: str | None = None) -> None:
        now = int(self.clock())
        if state == "running" or self.fill is None:
            behind = expected_latest_closed_time(now, self.timeframe) - (self._tip() or 0)
            # Seconds for the health lamp: a month's nominal width is close enough there.
            missing = min(max(0, behind), self.tail_max * self.timeframe.seconds)
            self.fill = {"state": state, "started_at": now, "start_missing_seconds": missing}
        self.fill = {**self.fill, "state": state, "updated_at": now, "reason": reason,
                     "note": None, "error": error}

    def _tail_candles(self) -> list[Candle]:
        page = self.rest.klines(self.market, self.symbol, self.interval, limit=self._tail_limit())
        if not page:
            return []
        collected = page[:-1]  # the newest row is the candle still forming
        tip = self._tip()
        start = None if tip is None else self.timeframe.next_open(tip)
        while (
            len(page) >= 2
            and len(collected) < self.tail_max
            and (start is None or collected[0].candle_time > start)
        ):
            end_ms = collected[0].candle_time * 1000 - 1
            page = self.rest.klines(self.market, self.symbol, self.interval, end_ms=end_ms,
                                    limit=self.max_limit)
            if not page:
                break
            collected = page + collected
        kept = [c for c in collected if start is None or c.candle_time >= start]
        return kept[-self.tail_max:]

    def _tail_limit(self) -> int:
        tip = self._tip()
        if tip is None:
            return min(self.max_limit, self.tail_max + 1)
        behind = self.timeframe.steps_between(tip, int(self.clock())) + 2
        return max(2, min(self.max_limit, behind, self.tail_max + 1))

    def _fetch_range(self, start: int, end: int) -> list[Candle]:
        """Fetch closed candles with open times in ``[start, end]`` (the hole before a frame)."""
        result = self._rest(
            lambda: self.rest.klines_range(self.series, start, end, limit=self.max_limit,
                                           attempts=REST_ATTEMPTS, on_error=self._rest_error),
            f"gap fill {start}..{end}")
        if result is None:
            self.holes.append((start, end))
            return []
        self.counters["filled"] += len(result)
        logger.info("feed %s: gap %d..%d filled with %d candles", self.series.text, start, end,
                    len(result))
        return result
