"""FeedActor writes: the last-stored marker moves only when the store actor commits."""

from __future__ import annotations

import time
from typing import Any, Sequence

import pytest

from trade_canvas.actors import feed as feed_module
from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.actors.feed import FeedActor
from trade_canvas.actors.messages import (
    CandlesCommitted,
    KlineReceived,
    StoreCandles,
    StoreFailed,
)
from trade_canvas.actors.store import StoreActor
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.candles import Candle
from trade_canvas.errors import Unavailable
from trade_canvas.exchanges.binance import KlineUpdate
from trade_canvas.feed_demand import FeedJob
from trade_canvas.series import parse_series_id
from tests.fakes.store import MemoryCandleStore

S = parse_series_id("binance:spot:BTC/USDT:1m")


def c(t: int) -> Candle:
    return Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0)


def kline(t: int, closed: bool = True) -> KlineReceived:
    return KlineReceived(KlineUpdate("BTCUSDT", "1m", c(t), closed, t * 1000, t * 1000 + 59_999))


class Exchange(BinanceRest):
    """REST klines over a fixed list of closed candles (the real client's paging on top)."""

    def __init__(self, candles: Sequence[Candle]) -> None:
        super().__init__({})
        self.candles = list(candles)

    def klines(self, market: str, symbol: str, interval: str, start_ms: int | None = None,
               end_ms: int | None = None, limit: int | None = None) -> list[Candle]:
        rows = [x for x in self.candles
                if (start_ms is None or x.candle_time * 1000 >= start_ms)
                and (end_ms is None or x.candle_time * 1000 <= end_ms)]
        return rows[: limit or 1000]


class Inbox:
    """A stand-in actor ref that records what it is told."""

    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class OutageStore(MemoryCandleStore):
    """The in-memory store with a switchable outage, raising what the real stores raise."""

    down = False

    def upsert_candles(self, series_id: str, candles: Sequence[Candle]) -> None:
        if self.down:
            raise Unavailable("postgres store: upsert failed: connection refused")
        super().upsert_candles(series_id, candles)


def link(kind: str) -> ChildLink:
    return ChildLink(ChildRecord(kind=kind, series_id=S.text, start=lambda link: None), None)


def make_feed(store: MemoryCandleStore, refs: dict[str, Any], clock: Clock,
              exchange: Exchange | None = None) -> FeedActor:
    return FeedActor(
        S, FeedJob(S.text, pinned=True), exchange or Exchange([]), lambda: None, refs.get,
        store, link("feed"), tail_max=100, clock=clock,
    )


def test_marker_moves_only_on_commit_and_a_failed_batch_is_sent_again() -> None:
    store, inbox, clock = MemoryCandleStore(), Inbox(), Clock()
    feed = make_feed(store, {"store": inbox}, clock)
    feed.on_start()
    feed.filled = True
    feed.on_receive(kline(60))
    feed.on_receive(kline(120))  # waits: one write at a time
    [first] = inbox.told
    assert isinstance(first, StoreCandles) and [x.candle_time for x in first.candles] == [60]
    assert first.reply_to is feed.actor_ref and feed.last is None

    feed.on_receive(StoreFailed(first.batch, "Unavailable: down"))
    assert feed.last is None and len(inbox.told) == 1
    feed.on_receive(kline(180, closed=False))  # before the retry pause: nothing sent
    assert len(inbox.told) == 1
    clock.now += feed_module.STORE_RETRY_S
    feed.on_receive(kline(180, closed=False))
    second = inbox.told[-1]
    assert [x.candle_time for x in second.candles] == [60, 120]
    feed.on_receive(CandlesCommitted(first.batch))  # a late answer for the old batch: ignored
    assert feed.last is None
    feed.on_receive(CandlesCommitted(second.batch))
    assert feed.last == 120 and feed._status()["unstored"] == 0
    assert feed.counters["store_errors"] == 1


def test_unanswered_or_undeliverable_writes_are_retried() -> None:
    store, inbox, clock = MemoryCandleStore(), Inbox(), Clock()
    refs: dict[str, Any] = {}
    feed = make_feed(store, refs, clock)
    feed.on_start()
    feed.filled = True
    feed.on_receive(kline(60))  # no store actor (restarting): kept
    assert feed.last is None and feed._status()["unstored"] == 1
    refs["store"] = inbox
    clock.now += feed_module.STORE_RETRY_S
    feed.on_receive(kline(120))
    assert [x.candle_time for x in inbox.told[-1].candles] == [60, 120]
    clock.now += feed_module.STORE_ACK_TIMEOUT_S  # the store actor died with the message
    feed.on_receive(kline(180))
    clock.now += feed_module.STORE_RETRY_S
    feed.on_receive(kline(180, closed=False))
    assert [x.candle_time for x in inbox.told[-1].candles] == [60, 120, 180]


def test_store_actor_answers_an_outage_instead_of_dying() -> None:
    store, feed_inbox, hub = OutageStore(), Inbox(), Inbox()
    actor = StoreActor(S, store, {"hub": hub}.get, link("store"))
    store.down = True
    assert actor.on_receive(StoreCandles((c(60),), reply_to=feed_inbox, batch=7)) == 0
    assert feed_inbox.told == [StoreFailed(7, feed_inbox.told[0].error)]
    assert "connection refused" in feed_inbox.told[0].error and hub.told == []
    store.down = False
    actor.on_receive(StoreCandles((c(60),), reply_to=feed_inbox, batch=8))
    assert feed_inbox.told[-1] == CandlesCommitted(8) and len(hub.told) == 1
    store.down = True
    with pytest.raises(Unavailable):  # an asker (HTTP ingest) gets the error itself
        actor.on_receive(StoreCandles((c(120),)))


def test_outage_leaves_no_hole_with_started_actors() -> None:
    """The issue's scenario in small: candles closing during an outage all land once it ends."""
    exchange = Exchange([c(60 * i) for i in range(1, 40)])
    store, clock = OutageStore(), Clock()
    refs: dict[str, Any] = {}
    store_ref = StoreActor.start(S, store, refs.get, link("store"))
    refs["store"] = store_ref
    feed_ref = FeedActor.start(
        S, FeedJob(S.text, pinned=True), exchange, lambda: None, refs.get, store,
        link("feed"), tail_max=100, clock=clock,
    )
    for i in range(1, 40):
        store.down = 10 <= i < 25
        feed_ref.tell(kline(60 * i))
        clock.now += 0.4
        time.sleep(0.005)
    store.down = False
    deadline = time.monotonic() + 5
    while store.head_time(S.text) != 60 * 39 or len(store.read_tail(S.text, 100)) != 39:
        clock.now += 0.5
        feed_ref.tell(kline(60 * 40, closed=False))  # later frames carry the retry
        assert time.monotonic() < deadline, store.read_tail(S.text, 100)
        time.sleep(0.02)
    assert [x.candle_time for x in store.read_tail(S.text, 100)] == [60 * i for i in range(1, 40)]
    assert store_ref.is_alive()


MONTHLY = parse_series_id("binance:spot:BTC/USDT:1M")
MONTHS = [MONTHLY.timeframe.shift(1_704_067_200, k) for k in range(8)]  # 2024-01-01 .. 08-01


class NewestFirstExchange(Exchange):
    """Binance's paging: without ``start_ms`` the newest ``limit`` rows up to ``end_ms``."""

    def __init__(self, candles: Sequence[Candle]) -> None:
        super().__init__(candles)
        self.calls: list[tuple[int | None, int | None, int | None]] = []

    def klines(self, market: str, symbol: str, interval: str, start_ms: int | None = None,
               end_ms: int | None = None, limit: int | None = None) -> list[Candle]:
        assert interval == "1M"
        self.calls.append((start_ms, end_ms, limit))
        if start_ms is not None:
            return super().klines(market, symbol, interval, start_ms, end_ms, limit)
        rows = [x for x in self.candles if end_ms is None or x.candle_time * 1000 <= end_ms]
        return rows[-(limit or 500):]


def monthly_feed(store: MemoryCandleStore, refs: dict[str, Any], now: int,
                 exchange: Exchange, tail_max: int = 100) -> FeedActor:
    clock = Clock()
    clock.now = float(now)
    return FeedActor(
        MONTHLY, FeedJob(MONTHLY.text, pinned=True), exchange, lambda: None, refs.get, store,
        link("feed"), tail_max=tail_max, clock=clock,
    )


def test_monthly_tail_fill_asks_for_the_months_behind_and_keeps_the_closed_ones() -> None:
    store, inbox = MemoryCandleStore(), Inbox()
    store.upsert_candles(MONTHLY.text, [c(t) for t in MONTHS[:3]])  # Jan..Mar stored
    exchange = NewestFirstExchange([c(t) for t in MONTHS])  # August is still forming
    feed = monthly_feed(store, {"store": inbox}, MONTHS[7] + 9 * 86400, exchange)
    feed.on_start()
    assert feed._tail_limit() == 5 + 2  # Mar -> Aug is five months
    feed._fill_tail()
    feed._flush()
    assert [x.candle_time for x in inbox.told[-1].candles] == MONTHS[3:7]  # Apr..Jul
    assert exchange.calls == [(None, None, 7)]


def test_monthly_tail_fill_pages_back_with_a_small_page() -> None:
    store, inbox = MemoryCandleStore(), Inbox()
    exchange = NewestFirstExchange([c(t) for t in MONTHS])
    feed = monthly_feed(store, {"store": inbox}, MONTHS[7] + 86400, exchange, tail_max=5)
    feed.max_limit = 2
    feed.on_start()
    feed._fill_tail()
    feed._flush()
    assert [x.candle_time for x in inbox.told[-1].candles] == MONTHS[2:7]  # newest 5 closed


def test_monthly_gap_before_a_closed_frame_is_filled_month_by_month() -> None:
    store, inbox = MemoryCandleStore(), Inbox()
    store.upsert_candles(MONTHLY.text, [c(t) for t in MONTHS[:3]])
    exchange = NewestFirstExchange([c(t) for t in MONTHS])
    feed = monthly_feed(store, {"store": inbox}, MONTHS[6] + 3600, exchange)
    feed.max_limit = 1  # one month per request: every cursor step goes through the calendar
    feed.on_start()
    feed.filled = True
    frame = KlineUpdate("BTCUSDT", "1M", c(MONTHS[5]), True, MONTHS[5] * 1000,
                        MONTHS[6] * 1000 - 1)
    feed.on_receive(KlineReceived(frame))  # June closes; April and May are missing
    assert [x.candle_time for x in inbox.told[-1].candles] == MONTHS[3:6]
    assert [call[0] for call in exchange.calls] == [MONTHS[3] * 1000, MONTHS[4] * 1000]
    assert {call[1] for call in exchange.calls} == {MONTHS[4] * 1000}
    feed.on_receive(CandlesCommitted(inbox.told[-1].batch))
    feed.on_receive(KlineReceived(KlineUpdate("BTCUSDT", "1M", c(MONTHS[6]), True,
                                              MONTHS[6] * 1000, MONTHS[7] * 1000 - 1)))
    assert [x.candle_time for x in inbox.told[-1].candles] == [MONTHS[6]]  # July follows June
    assert len(exchange.calls) == 2
