"""Top markets resources: the ranked list, and its Server-Sent Events stream.

The stream body is an iterator over one ``MarketStream`` queue, fed by the shared poller of its
(market, quote, limit) in the TopMarketsActor. Under gevent the blocking ``take`` yields to other
greenlets; a disconnected client is noticed at the next write (an event or the ping every
``interval_s``), when the server closes the body and the stream is unregistered.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import falcon

from trade_canvas.actors.subscriber import MarketStream, StreamEvent
from trade_canvas.http.errors import DetailError
from trade_canvas.http.media import query_bool, query_float, query_int
from trade_canvas.runtime.system import Runtime
from trade_canvas.runtime.top_markets import TopMarkets as TopMarketsFacade

MARKETS = ("spot", "futures")


@dataclass(frozen=True, slots=True)
class Query:
    """The validated filters shared by both endpoints."""

    market: str
    quote_asset: str
    limit: int


def read_query(req: falcon.Request) -> Query:
    """Validate ``exchange``, ``market``, ``quote_asset`` and ``limit`` (422, then 400)."""
    market = req.get_param("market")
    if market not in MARKETS:
        raise DetailError(422, "market is required: spot or futures")
    quote = (req.get_param("quote_asset") or "USDT").strip().upper()
    if not 1 <= len(quote) <= 12:
        raise DetailError(422, "quote_asset must be 1..12 characters")
    limit = query_int(req, "limit", default=20, minimum=1, maximum=200)
    assert limit is not None
    if req.get_param("exchange", default="binance") != "binance":
        raise DetailError(400, "unsupported exchange")
    return Query(market, quote, limit)


def format_event(event: StreamEvent) -> bytes:
    """Return the SSE text of an event (``id`` only on ``top_markets`` events)."""
    head = f"id: {event.event_id}\n" if event.event_id is not None else ""
    return f"{head}event: {event.kind}\ndata: ".encode() + event.data + b"\n\n"


def format_ping(unix_s: float) -> bytes:
    """Return the keep-alive comment sent every interval."""
    return f": ping {int(unix_s)}\n\n".encode()


def sse_events(
    stream: MarketStream,
    interval_s: float,
    max_events: int,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> Iterator[bytes]:
    """Yield events as they arrive and a ping every ``interval_s``; end after ``max_events``."""
    sent = 0
    next_ping = clock() + interval_s
    while True:
        try:
            event = stream.take(timeout=max(0.0, next_ping - clock()))
        except queue.Empty:
            yield format_ping(wall())
            next_ping = clock() + interval_s
            continue
        if event is None:
            return
        yield format_event(event)
        sent += 1
        if max_events and sent >= max_events:
            return


class SseBody:
    """The WSGI body of a stream: unregisters the stream when the server closes it.

    A class rather than a bare generator: a generator closed before its first ``next`` (client
    gone at once) never runs its ``finally``, and the poller would keep running for nobody.
    """

    def __init__(self, events: Iterator[bytes], on_close: Callable[[], None]) -> None:
        self.events = events
        self.on_close = on_close

    def __iter__(self) -> SseBody:
        return self

    def __next__(self) -> bytes:
        return next(self.events)

    def close(self) -> None:
        """Stop the event iterator and release the stream (called once by the WSGI server)."""
        try:
            close = getattr(self.events, "close", None)
            if close is not None:
                close()
        finally:
            self.on_close()


def _facade(runtime: Runtime) -> TopMarketsFacade:
    if runtime.top_markets is None:
        raise DetailError(503, "top markets are not running")
    return runtime.top_markets


class TopMarkets:
    """GET /api/market/top_markets: tradable symbols ranked by 24h quote volume."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = read_query(req)
        force = query_bool(req, "force", False)
        facade = _facade(self.runtime)
        # The client as the access layer identified it (behind a trusted proxy: the header).
        client = getattr(req.context, "client", None) or req.remote_addr or ""
        resp.media = facade.get(query.market, query.quote_asset, query.limit, force, client)


class TopMarketsStream:
    """GET /api/market/top_markets/stream: the list as SSE, an event whenever it changes."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = read_query(req)
        interval_s = query_float(req, "interval_s", default=2.0, minimum=0.2, maximum=30.0)
        max_events = query_int(req, "max_events", default=0, minimum=0, maximum=1000)
        assert max_events is not None
        facade = _facade(self.runtime)
        stream = facade.open_stream(query.market, query.quote_asset, query.limit, interval_s)
        resp.content_type = "text/event-stream; charset=utf-8"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        events = sse_events(stream, interval_s, max_events)
        resp.stream = SseBody(events, lambda: facade.close_stream(stream))
