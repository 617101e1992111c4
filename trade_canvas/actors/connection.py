"""StreamConnections: one actor per market multiplexing every followed series' kline stream.

The original opened one socket per series. Here streams share combined-stream connections
(``/stream?streams=a/b``), added and removed with live SUBSCRIBE/UNSUBSCRIBE frames, and a
connection is only opened when the others are full (Binance caps streams per connection, method
frames per second and connections per IP). Each connection has a reader greenlet that decodes
frames and tells the owning feed actor directly, so data frames never queue behind this actor.

Lost connections reconnect with exponential backoff and jitter; a connection that sends nothing
for ``silence_timeout_s`` is closed and reconnected by the watchdog; Binance's 24 h disconnect is
just another reconnect. After every (re)connect, each feed on it is told ``StreamResumed`` so it
fills the hole over REST.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pykka
import websocket

from trade_canvas.actors.plumbing import ChildLink, report_failure, tell
from trade_canvas.actors.messages import (
    AddStream,
    ConnectionLost,
    ConnectionOpened,
    DropAllStreams,
    KlineReceived,
    RemoveStream,
    StreamResumed,
    Tick,
)
from trade_canvas.exchanges import binance

logger = logging.getLogger(__name__)

_ids = itertools.count(1)
STABLE_AFTER_S = 60.0
MAX_PARAMS_PER_FRAME = 100


class ConnectBudget:
    """Connection attempts allowed in a sliding window (Binance: 300 per 5 minutes per IP).

    We keep to 80 % of the limit so a burst of reconnects after a network blip can never get the
    IP refused; attempts over the budget are postponed, not dropped. ``share`` returns one
    process's part of that when several processes connect from one IP.
    """

    HEADROOM = 0.8

    @classmethod
    def share(cls, per_ip_limit: int, processes: int = 1) -> ConnectBudget:
        """Return the budget of one of ``processes`` processes sharing an IP's ``per_ip_limit``."""
        return cls(int(per_ip_limit * cls.HEADROOM) // max(1, processes))

    def __init__(self, limit: int, window_s: float = 300.0) -> None:
        self.limit = max(1, limit)
        self.window_s = window_s
        self.attempts: collections.deque[float] = collections.deque()

    def wait_s(self, now: float) -> float:
        """Return how long to wait before the next attempt (0: go now)."""
        while self.attempts and now - self.attempts[0] >= self.window_s:
            self.attempts.popleft()
        if len(self.attempts) < self.limit:
            return 0.0
        return self.attempts[0] + self.window_s - now

    def spend(self, now: float) -> None:
        """Record one attempt."""
        self.attempts.append(now)


@dataclass(eq=False)
class Connection:
    """One combined-stream socket and the streams it should carry."""

    id: int = field(default_factory=lambda: next(_ids))
    wanted: set[str] = field(default_factory=set)
    subscribed: set[str] = field(default_factory=set)
    state: str = "connecting"
    dialed: tuple[str, ...] = ()  # the streams named in the URL of the current attempt
    generation: int = 0
    ws: websocket.WebSocket | None = None
    opened_at: float | None = None
    last_frame_at: float | None = None
    last_event_ms: int | None = None
    last_method_at: float = 0.0
    reconnects: int = 0
    attempts: int = 0
    next_attempt_at: float | None = None
    frames: int = 0
    malformed: int = 0
    request_ids: Any = field(default_factory=lambda: itertools.count(1))

    def view(self, now: float) -> dict[str, Any]:
        lag = None if self.last_event_ms is None else round(now - self.last_event_ms / 1000, 3)
        return {"id": self.id, "state": self.state, "streams": len(self.wanted),
                "subscribed": len(self.subscribed), "last_frame_at": self.last_frame_at,
                "lag_s": lag, "reconnects": self.reconnects, "frames": self.frames,
                "malformed": self.malformed}


class StreamConnections(pykka.ThreadingActor):
    """Owns every kline-stream connection of one market."""

    def __init__(
        self,
        market: str,
        ws_base_url: str,
        link: ChildLink,
        *,
        streams_per_connection: int,
        silence_timeout_s: float,
        clock: Callable[[], float] = time.time,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        tick_s: float = 0.25,
        processes_per_ip: int = 1,
        upstream: dict[str, frozenset[str]] | None = None,
    ) -> None:
        super().__init__()
        # Shared with the cluster lease actor, which reads it without asking: the streams this
        # market holds upstream (dialed, subscribed, or not unsubscribed yet). A series is
        # handed to another process only once its stream is gone from here.
        self.upstream = upstream if upstream is not None else {}
        self.market = market
        self.ws_base_url = ws_base_url.rstrip("/")
        self.link = link
        limits = binance.limits_for(market)
        self.per_connection = min(streams_per_connection, limits.streams_per_connection)
        self.method_interval_s = 1.0 / limits.incoming_messages_per_second
        self.budget = ConnectBudget.share(limits.connections_per_5_minutes_per_ip, processes_per_ip)
        self.silence_timeout_s = silence_timeout_s
        self.clock = clock
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.tick_s = tick_s
        self.routes: dict[str, pykka.ActorRef[Any]] = {}
        self.connections: dict[int, Connection] = {}
        self._stopping = threading.Event()
        link.record.extra = self._status
        link.release = self.on_stop

    def _status(self) -> dict[str, Any]:
        now = self.clock()
        return {"market": self.market, "streams": len(self.routes),
                "connections": [c.view(now) for c in list(self.connections.values())]}

    def on_start(self) -> None:
        threading.Thread(target=self._ticker, name=f"streams-{self.market}-tick", daemon=True).start()
        self.link.started()

    def on_stop(self) -> None:
        self._stopping.set()
        for conn in self.connections.values():
            conn.state = "closed"
            _close(conn.ws)

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case AddStream():
                self._add(message.stream, message.feed)
            case RemoveStream():
                if message.feed is None or self.routes.get(message.stream) in (None, message.feed):
                    self._remove(message.stream)
            case DropAllStreams():
                self._drop_all()
            case ConnectionOpened():
                self._opened(message)
            case ConnectionLost():
                self._lost(message)
            case Tick():
                self._tick(message.now)
        self._publish()
        return None

    def _publish(self) -> None:
        streams: set[str] = set()
        for conn in self.connections.values():
            if conn.state == "connecting":
                streams.update(conn.dialed)
            streams.update(conn.subscribed)
        held = frozenset(streams)
        if held != self.upstream.get(self.market):
            self.upstream[self.market] = held

    def _ticker(self) -> None:
        while not self._stopping.wait(self.tick_s):
            try:
                self.actor_ref.tell(Tick(self.clock()))
            except pykka.ActorDeadError:
                return

    def _add(self, stream: str, feed: pykka.ActorRef[Any]) -> None:
        self.routes[stream] = feed
        if any(stream in conn.wanted for conn in self.connections.values()):
            return
        conn = next((c for c in self.connections.values() if len(c.wanted) < self.per_connection), None)
        if conn is None:
            conn = Connection()
            self.connections[conn.id] = conn
            conn.wanted.add(stream)
            self._connect(conn)
            return
        conn.wanted.add(stream)

    def _drop_all(self) -> None:
        if self.connections:
            logger.warning("%s: every upstream stream dropped (%d connections): this process "
                           "fenced itself", self.market, len(self.connections))
        for conn in self.connections.values():
            conn.state = "closed"
            _close(conn.ws)
        self.connections.clear()
        self.routes.clear()

    def _remove(self, stream: str) -> None:
        self.routes.pop(stream, None)
        for conn in list(self.connections.values()):
            if stream not in conn.wanted:
                continue
            conn.wanted.discard(stream)
            if not conn.wanted:
                conn.state = "closed"
                _close(conn.ws)
                del self.connections[conn.id]
            elif conn.state == "open":
                # At once when the method budget allows, not at the next tick: in cluster mode
                # another process may subscribe the stream as soon as this one's lease moves.
                self._methods(conn, self.clock())

    def _connect(self, conn: Connection) -> None:
        now = self.clock()
        wait = self.budget.wait_s(now)
        if wait > 0:
            conn.state, conn.next_attempt_at = "reconnecting", now + wait
            logger.warning("%s: connection budget spent; connection #%d waits %.0fs",
                           self.market, conn.id, wait)
            return
        self.budget.spend(now)
        conn.generation += 1
        conn.state = "connecting"
        conn.next_attempt_at = None
        streams = tuple(sorted(conn.wanted))
        conn.dialed = streams
        url = binance.stream_url(self.market, streams, self.ws_base_url)
        if len(streams) == 1:  # always use the combined endpoint so frames name their stream
            url = f"{self.ws_base_url}/stream?streams={streams[0]}"
        args = (conn, conn.generation, url, streams)
        threading.Thread(target=self._read, args=args, name=f"stream-{conn.id}", daemon=True).start()

    def _read(self, conn: Connection, generation: int, url: str, streams: tuple[str, ...]) -> None:
        try:
            ws = websocket.create_connection(url, timeout=10, enable_multithread=True)
            ws.settimeout(None)
        except Exception as exc:  # any failure to connect is retried with backoff
            self._tell(ConnectionLost(conn.id, generation, f"connect failed: {exc}"))
            return
        conn.ws = ws
        self._tell(ConnectionOpened(conn.id, generation, streams))
        error = "closed by peer"
        try:
            while conn.generation == generation and conn.state != "closed":
                raw = ws.recv()
                if not raw:
                    break
                self._route(conn, raw)
        except Exception as exc:  # the socket is gone whatever the reason; reconnect
            error = f"{type(exc).__name__}: {exc}"
        _close(ws)
        self._tell(ConnectionLost(conn.id, generation, error))

    def _route(self, conn: Connection, raw: str | bytes) -> None:
        conn.last_frame_at = self.clock()
        conn.frames += 1
        event = binance.decode_frame(raw)
        if isinstance(event, binance.KlineUpdate):
            conn.last_event_ms = event.event_time_ms
            tell(self.routes.get(event.stream or ""), KlineReceived(event))
        elif isinstance(event, binance.MalformedFrame):
            conn.malformed += 1
        elif isinstance(event, binance.ErrorFrame):
            logger.warning("%s stream connection #%d error frame: %s", self.market, conn.id, event.msg)

    def _tell(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass

    def _opened(self, message: ConnectionOpened) -> None:
        conn = self.connections.get(message.connection_id)
        if conn is None or conn.generation != message.generation:
            return
        now = self.clock()
        conn.state, conn.opened_at, conn.last_frame_at = "open", now, now
        conn.subscribed = set(message.streams)
        if conn.reconnects:
            logger.info("%s stream connection #%d reconnected (%d streams)",
                        self.market, conn.id, len(conn.subscribed))
        for stream in message.streams:
            tell(self.routes.get(stream), StreamResumed())

    def _lost(self, message: ConnectionLost) -> None:
        conn = self.connections.get(message.connection_id)
        if conn is None or conn.generation != message.generation or conn.state == "closed":
            return
        now = self.clock()
        if conn.opened_at is not None and now - conn.opened_at >= STABLE_AFTER_S:
            conn.attempts = 0
        conn.attempts += 1
        conn.reconnects += 1
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (conn.attempts - 1))
        delay *= random.uniform(0.5, 1.0)
        conn.state, conn.ws, conn.opened_at = "reconnecting", None, None
        conn.subscribed = set()
        conn.next_attempt_at = now + delay
        logger.warning("%s stream connection #%d lost (%s); reconnecting in %.1fs",
                       self.market, conn.id, message.error, delay)

    def _tick(self, now: float) -> None:
        for conn in list(self.connections.values()):
            if conn.state == "reconnecting" and now >= (conn.next_attempt_at or now):
                self._connect(conn)
            elif conn.state == "open":
                self._watch(conn, now)

    def _watch(self, conn: Connection, now: float) -> None:
        if conn.last_frame_at is not None and now - conn.last_frame_at > self.silence_timeout_s:
            logger.warning("%s stream connection #%d silent for %.0fs; reconnecting",
                           self.market, conn.id, now - conn.last_frame_at)
            conn.last_frame_at = now
            _close(conn.ws)
            return
        self._methods(conn, now)

    def _methods(self, conn: Connection, now: float) -> None:
        """Send one SUBSCRIBE or UNSUBSCRIBE frame if one is due and the budget allows.

        Unsubscribes go first: a stream this process gives up may be subscribed by another
        process of the cluster as soon as the series' lease moves.
        """
        if now - conn.last_method_at < self.method_interval_s:
            return
        add = sorted(conn.wanted - conn.subscribed)[:MAX_PARAMS_PER_FRAME]
        drop = sorted(conn.subscribed - conn.wanted)[:MAX_PARAMS_PER_FRAME]
        frame = None
        if drop:
            frame = binance.unsubscribe_frame(drop, next(conn.request_ids))
            conn.subscribed.difference_update(drop)
            add = []
        elif add:
            frame = binance.subscribe_frame(add, next(conn.request_ids))
            conn.subscribed.update(add)
        if frame is None or conn.ws is None:
            return
        conn.last_method_at = now
        try:
            conn.ws.send(frame)
        except Exception as exc:  # the reader notices the broken socket and reconnects
            logger.warning("%s stream connection #%d send failed: %s", self.market, conn.id, exc)
        for stream in add:
            tell(self.routes.get(stream), StreamResumed())


def _close(ws: websocket.WebSocket | None) -> None:
    if ws is None:
        return
    try:
        ws.abort()  # type: ignore[no-untyped-call]  # websocket-client is not annotated
        ws.close(timeout=0.5)
    except Exception:  # closing a broken socket may fail in many ways; it is closed either way
        pass
