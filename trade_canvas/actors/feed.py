"""FeedActor: follows one series on Binance and keeps its stored candles complete.

Live kline frames come from the market's ``StreamConnections``. Forming updates go to the hub
(which throttles them); each closed candle goes to the store actor, which publishes it after the
write. Whenever the stream (re)starts, and whenever a closed candle does not follow the last one,
the missing closed candles are fetched over REST first, so subscribers see every candle once,
in order. Duplicate and out-of-order frames (older than the last closed candle) are dropped.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pykka

from trade_canvas.actors.child import ChildLink, report_failure
from trade_canvas.actors.messages import (
    AddStream,
    Crash,
    KlineReceived,
    PublishForming,
    RemoveStream,
    StoreCandles,
    StreamResumed,
)
from trade_canvas.actors.rest import BinanceRest, RateLimited
from trade_canvas.actors.store import RefLookup, tell
from trade_canvas.candles import Candle, dedupe_sorted
from trade_canvas.errors import TradeCanvasError
from trade_canvas.exchanges import binance
from trade_canvas.lifecycle import FeedJob
from trade_canvas.series import SeriesId, expected_latest_closed_time
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

REST_ATTEMPTS = 5


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
        self.step = series.timeframe.seconds
        self.market = series.market
        self.symbol = binance.to_binance_symbol(series.symbol)
        self.interval = binance.check_interval(series.timeframe)
        self.stream = binance.series_stream(series)
        self.max_limit = binance.limits_for(self.market).klines_max_limit
        self.last: int | None = None
        self.filled = False
        self.holes: list[tuple[int, int]] = []  # ranges a REST fill could not fetch yet
        self.counters = {"closed": 0, "forming": 0, "duplicates": 0, "filled": 0, "rest_errors": 0}
        # The latest history fill, for the K-line health lamp (GET /api/market/health).
        self.fill: dict[str, Any] | None = None
        link.record.extra = self._status

    def _status(self) -> dict[str, Any]:
        return {"pinned": self.job.pinned, "refcount": self.job.refcount,
                "idle_since": self.job.idle_since, "stream": self.stream,
                "last_closed_time": self.last, "unfilled_holes": len(self.holes),
                "fill": self.fill, **self.counters}

    def on_start(self) -> None:
        self.last = self.store.head_time(self.series.text)
        tell(self.streams(), AddStream(self.stream, self.actor_ref))
        self.link.started()

    def on_stop(self) -> None:
        tell(self.streams(), RemoveStream(self.stream))

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case KlineReceived():
                return self._kline(message.update)
            case StreamResumed():
                return self._fill_tail()
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        return None

    def _kline(self, update: binance.KlineUpdate) -> None:
        candle = update.candle
        if self.last is not None and candle.candle_time <= self.last:
            if update.closed:
                self.counters["duplicates"] += 1
            return
        if not update.closed:
            self.counters["forming"] += 1
            tell(self.lookup("hub"), PublishForming(candle))
            return
        if not self.filled:
            self._fill_tail()
        if self.last is not None and candle.candle_time <= self.last:
            return
        batch = self._retry_holes()
        if self.last is not None and candle.candle_time > self.last + self.step:
            batch += self._fetch_range(self.last + self.step, candle.candle_time - self.step)
        self.counters["closed"] += 1
        self._store([*batch, candle])

    def _store(self, candles: list[Candle]) -> None:
        candles = dedupe_sorted(candles)
        if not candles:
            return
        tell(self.lookup("store"), StoreCandles(tuple(candles)))
        self.last = max(candles[-1].candle_time, self.last or 0)

    def _rest(self, call: Callable[[], list[Candle]], what: str) -> list[Candle] | None:
        """Run a REST call, retrying rate limits and upstream errors with backoff."""
        for attempt in range(REST_ATTEMPTS):
            try:
                return call()
            except RateLimited as exc:
                wait, reason = exc.retry_after_s, exc
            except TradeCanvasError as exc:
                wait, reason = 0.5 * 2**attempt, exc
            self.counters["rest_errors"] += 1
            logger.warning("feed %s: %s failed (attempt %d: %s); retrying in %.1fs",
                           self.series.text, what, attempt + 1, reason, wait)
            time.sleep(min(wait, 30.0))
        logger.error("feed %s: %s failed %d times; will retry later", self.series.text, what,
                     REST_ATTEMPTS)
        return None

    def _retry_holes(self) -> list[Candle]:
        holes, self.holes = self.holes, []
        found: list[Candle] = []
        for start, end in holes:
            found += self._fetch_range(start, end)
        return found

    def _fill_tail(self) -> None:
        """Store the closed candles between the last stored one and now (at most ``tail_max``)."""
        self._note_fill("running", "tail_coverage")
        candles = self._rest(self._tail_candles, "tail fill")
        if candles is None:
            self._note_fill("failed", "tail_coverage", "rest requests kept failing")
            return
        self.filled = True
        self.counters["filled"] += len(candles)
        self._store(candles)
        self._note_fill("succeeded", "tail_coverage")
        if candles:
            logger.info("feed %s: filled %d candles (%d..%d)", self.series.text, len(candles),
                        candles[0].candle_time, candles[-1].candle_time)

    def _note_fill(self, state: str, reason: str, error: str | None = None) -> None:
        now = int(self.clock())
        if state == "running" or self.fill is None:
            behind = expected_latest_closed_time(now, self.series.timeframe) - (self.last or 0)
            missing = min(max(0, behind), self.tail_max * self.step)
            self.fill = {"state": state, "started_at": now, "start_missing_seconds": missing}
        self.fill = {**self.fill, "state": state, "updated_at": now, "reason": reason,
                     "note": None, "error": error}

    def _tail_candles(self) -> list[Candle]:
        page = self.rest.klines(self.market, self.symbol, self.interval, limit=self._tail_limit())
        if not page:
            return []
        collected = page[:-1]  # the newest row is the candle still forming
        start = None if self.last is None else self.last + self.step
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
        if self.last is None:
            return min(self.max_limit, self.tail_max + 1)
        behind = int((self.clock() - self.last) // self.step) + 2
        return max(2, min(self.max_limit, behind, self.tail_max + 1))

    def _fetch_range(self, start: int, end: int) -> list[Candle]:
        """Fetch closed candles with open times in ``[start, end]`` (the hole before a frame)."""
        result = self._rest(lambda: self._pages(start, end), f"gap fill {start}..{end}")
        if result is None:
            self.holes.append((start, end))
            return []
        self.counters["filled"] += len(result)
        logger.info("feed %s: gap %d..%d filled with %d candles", self.series.text, start, end,
                    len(result))
        return result

    def _pages(self, start: int, end: int) -> list[Candle]:
        result: list[Candle] = []
        cursor = start
        while cursor <= end:
            page = self.rest.klines(self.market, self.symbol, self.interval,
                                    start_ms=cursor * 1000, end_ms=end * 1000, limit=self.max_limit)
            if not page:
                break
            result.extend(page)
            cursor = page[-1].candle_time + self.step
        return [c for c in result if start <= c.candle_time <= end]
