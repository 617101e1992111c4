"""TopMarketsActor built unstarted: jobs, coalescing, TTLs, stale answers, force and pollers."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from trade_canvas.actors.markets import (
    INFO,
    TICKERS,
    ForceLimiter,
    TopMarketsActor,
    TopMarketsState,
)
from trade_canvas.actors.messages import GetTopMarkets, MarketFetched, UnwatchTopMarkets, WatchTopMarkets
from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.actors.subscriber import MarketStream
from trade_canvas.errors import CapacityExceeded, UpstreamError
from trade_canvas.exchanges.binance_markets import MarketInfo

INFOS = {"BTCUSDT": MarketInfo("BTCUSDT", "BTC", "USDT"), "ETHUSDT": MarketInfo("ETHUSDT", "ETH", "USDT")}
ROWS = [{"symbol": "BTCUSDT", "lastPrice": "1", "quoteVolume": "10", "priceChangePercent": "x"},
        {"symbol": "ETHUSDT", "lastPrice": "2", "quoteVolume": "20", "priceChangePercent": "1.5"}]


class Reply:
    def __init__(self) -> None:
        self.value: Any = None

    def set(self, value: Any) -> None:
        self.value = value

    def set_exception(self, exc_info: Any) -> None:
        self.value = exc_info[1]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup() -> tuple[TopMarketsActor, Clock, list[Callable[[], None]]]:
    clock = Clock()
    jobs: list[Callable[[], None]] = []
    link = ChildLink(ChildRecord(kind="top_markets", series_id=None, start=lambda link: None), None)
    actor = TopMarketsActor(None, TopMarketsState(), link, ticker_ttl_s=10, info_ttl_s=3600,  # type: ignore[arg-type]
                            clock=clock, wall=lambda: 1.0, spawn=jobs.append)
    actor._start_timer = lambda poller: None  # type: ignore[method-assign]
    return actor, clock, jobs


def ask(actor: TopMarketsActor, market: str = "spot", force: bool = False, client: str = "c") -> Reply:
    reply = Reply()
    actor.on_receive(GetTopMarkets(market, "USDT", 20, force, client, reply))
    return reply


def finish(actor: TopMarketsActor, job_id: int, error: str | None = None, parts=(INFO, TICKERS)) -> None:
    ok = error is None
    infos = INFOS if ok and INFO in parts else None
    rows = ROWS if ok else None
    actor.on_receive(MarketFetched("spot", job_id, infos, rows, error))


def test_force_limiter_counts_only_allowed_calls() -> None:
    limiter = ForceLimiter(2.0, max_keys=2)
    assert limiter.allow("a", 0.0) and not limiter.allow("a", 1.0) and not limiter.allow("a", 1.99)
    assert limiter.allow("a", 2.0) and limiter.allow("b", 2.0)
    assert limiter.allow("c", 4.5)  # prunes expired keys instead of growing without bound
    assert len(limiter._last) <= 2


def test_waiters_share_one_job(setup) -> None:
    actor, clock, jobs = setup
    replies = [ask(actor) for _ in range(5)]
    assert len(jobs) == 1 and all(r.value is None for r in replies)
    finish(actor, 1)
    assert [item["symbol_id"] for item in replies[0].value["items"]] == ["ETHUSDT", "BTCUSDT"]
    assert all(r.value["cached"] is False for r in replies)
    assert ask(actor).value["cached"] is True and len(jobs) == 1


def test_other_markets_do_not_wait(setup) -> None:
    actor, clock, jobs = setup
    ask(actor, "spot")
    futures = ask(actor, "futures")
    assert len(jobs) == 2 and futures.value is None


def test_ticker_ttl_refetches_tickers_only(setup) -> None:
    actor, clock, jobs = setup
    ask(actor)
    finish(actor, 1)
    clock.now += 10
    ask(actor)
    assert actor.state.markets["spot"].job.parts == frozenset({TICKERS})


def test_failure_serves_stale_then_waits_before_retrying(setup) -> None:
    actor, clock, jobs = setup
    ask(actor)
    finish(actor, 1)
    clock.now += 11
    stale = ask(actor)
    finish(actor, 2, error="HTTP 503")
    assert stale.value["stale"] is True and stale.value["cached"] is True
    assert stale.value["upstream_error"] == "HTTP 503"
    assert ask(actor).value["stale"] is True and len(jobs) == 2  # within the retry pause
    clock.now += 1
    ask(actor)
    assert len(jobs) == 3


def test_failure_without_cache_is_upstream_error(setup) -> None:
    actor, clock, jobs = setup
    reply = ask(actor)
    finish(actor, 1, error="boom")
    assert isinstance(reply.value, UpstreamError) and str(reply.value) == "upstream_error:boom"


def test_force_is_limited_per_client_and_market(setup) -> None:
    actor, clock, jobs = setup
    ask(actor, force=True)
    assert isinstance(ask(actor, force=True).value, CapacityExceeded)
    assert ask(actor, force=True, client="other").value is None
    clock.now += 2
    assert ask(actor, force=True).value is None


def test_a_request_arriving_during_a_narrower_job_gets_the_next_one(setup) -> None:
    actor, clock, jobs = setup
    ask(actor)
    finish(actor, 1)
    clock.now += 10  # tickers expired, exchangeInfo fresh
    ask(actor)
    clock.now += 0.5
    forced = ask(actor, force=True)
    assert len(jobs) == 2
    finish(actor, 2, parts=(TICKERS,))
    assert len(jobs) == 3 and forced.value is None
    finish(actor, 3)
    assert forced.value["cached"] is False


def test_streams_share_a_poller_and_get_changes_only(setup) -> None:
    actor, clock, jobs = setup
    one, two = MarketStream("spot", "USDT", 20, 1.0), MarketStream("spot", "USDT", 20, 0.5)
    actor.on_receive(WatchTopMarkets(one))
    actor.on_receive(WatchTopMarkets(two))
    assert len(jobs) == 1 and list(actor.pollers) == [("spot", "USDT", 20)]
    finish(actor, 1)
    assert one.take(0).kind == "top_markets" and two.take(0).kind == "top_markets"
    assert actor.pollers[("spot", "USDT", 20)].interval_s == 0.5
    actor._poll(("spot", "USDT", 20))  # fresh cache, same items: nothing sent
    assert one._queue.empty()
    actor.on_receive(UnwatchTopMarkets(one.id))
    actor.on_receive(UnwatchTopMarkets(two.id))
    assert actor.pollers == {} and actor.state.streams == {}
