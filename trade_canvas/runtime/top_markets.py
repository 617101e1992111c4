"""Top markets in the runtime: the TopMarketsActor's start under the supervisor, and its facade.

The actor is a process-wide child of the supervisor (kind ``top_markets``), restarted like any
other child; caches and open streams live in a ``TopMarketsState`` held here, so they survive a
restart. HTTP resources call ``runtime.top_markets.<method>``; only this facade waits, with an
explicit timeout, on the future the actor completes.
"""

from __future__ import annotations

import logging
from typing import Any

import pykka

from trade_canvas.actors.plumbing import ChildLink
from trade_canvas.actors.markets import TopMarketsActor, TopMarketsState
from trade_canvas.actors.subscriber import MarketStream
from trade_canvas.actors.messages import GetTopMarkets, StartGlobal, UnwatchTopMarkets, WatchTopMarkets
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.actors.supervisor import SeriesGroup
from trade_canvas.config import Settings
from trade_canvas.errors import Unavailable, UpstreamError

logger = logging.getLogger(__name__)

KIND = "top_markets"
START_TIMEOUT_S = 5.0


class TopMarkets:
    """Facade over the TopMarketsActor: one payload per call, or a stream of events."""

    def __init__(self, globals_group: SeriesGroup, state: TopMarketsState, timeout_s: float) -> None:
        self.globals_group = globals_group
        self.state = state
        self.timeout_s = timeout_s

    def _ref(self) -> pykka.ActorRef[Any]:
        ref = self.globals_group.ref(KIND)
        if ref is None:
            raise Unavailable("top markets actor is restarting; retry shortly")
        return ref

    def get(self, market: str, quote_asset: str, limit: int, force: bool, client: str) -> dict[str, Any]:
        """Return the top-markets payload of ``market``.

        Raises:
            CapacityExceeded: ``rate_limited``: a forced refresh came within 2 s of the last one.
            UpstreamError: Binance failed and nothing is cached.
            Unavailable: the actor is restarting or stopping.
        """
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        try:
            self._ref().tell(GetTopMarkets(market, quote_asset, limit, force, client, future))
        except pykka.ActorDeadError as exc:
            raise Unavailable("top markets actor is restarting; retry shortly") from exc
        try:
            return dict(future.get(timeout=self.timeout_s))
        except pykka.Timeout:
            raise UpstreamError(f"upstream_error:no answer from binance within {self.timeout_s:g}s") from None

    def open_stream(self, market: str, quote_asset: str, limit: int, interval_s: float) -> MarketStream:
        """Start receiving the events of (market, quote, limit) on a new stream."""
        stream = MarketStream(market, quote_asset, limit, interval_s)
        try:
            self._ref().tell(WatchTopMarkets(stream))
        except pykka.ActorDeadError as exc:
            raise Unavailable("top markets actor is restarting; retry shortly") from exc
        return stream

    def close_stream(self, stream: MarketStream) -> None:
        """Stop a stream; its poller stops when it was the last one."""
        stream.close()
        ref = self.globals_group.ref(KIND)
        if ref is None:
            return  # a restarting actor skips closed streams when it rebuilds its pollers
        try:
            ref.tell(UnwatchTopMarkets(stream.id))
        except pykka.ActorDeadError:
            pass

    def close_streams(self) -> None:
        """End every open stream (shutdown: SSE responses must not hold the graceful period)."""
        self.state.close_streams()


def start_top_markets(
    settings: Settings, rest: BinanceRest, supervisor: pykka.ActorRef[Any], globals_group: SeriesGroup
) -> TopMarkets:
    """Start the actor as the supervisor's process-wide child ``top_markets``; return the facade."""
    state = TopMarketsState()

    def start(link: ChildLink) -> pykka.ActorRef[Any]:
        return TopMarketsActor.start(
            rest, state, link,
            info_ttl_s=settings.binance_exchangeinfo_ttl_s,
            ticker_ttl_s=settings.binance_ticker_ttl_s,
        )

    # Asked, not told: the child's ref is in place when boot returns, so the first request works.
    supervisor.ask(StartGlobal(KIND, start), timeout=START_TIMEOUT_S)
    return TopMarkets(globals_group, state, timeout_s=2 * settings.binance_rest_timeout_s + 5.0)
