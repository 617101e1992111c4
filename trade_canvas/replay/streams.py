"""Stream connections of the replay exchange: the WebSocket upgrade, each connection's session
(subscriptions, market frames, pings, armed faults) and Binance's method frames.

WebSocket: the upgrade is handled here with wsproto on the connection's own gevent socket
rather than with simple-websocket's ``Server(environ)`` (which the app's ``http/ws.py`` uses).
Fault injection needs the raw connection: a drop must close TCP without a close frame, a
silent feed must keep answering pings, garbage must go out as sent; simple-websocket owns a
reader thread, answers pings on its own and, under gevent, works on a ``dup()`` of the socket
that pywsgi keeps open behind it. One greenlet per connection writes (market frames, replies,
pongs); a second one only reads, so the socket never has two writers.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import gevent
import orjson
from gevent.queue import Empty, Queue
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    TextMessage,
)
from wsproto.events import Request as WsRequest

from trade_canvas.exchanges.binance import limits_for
from trade_canvas.replay import market as mk
from trade_canvas.replay.faults import Action, Drop, FaultRunner, Send

if TYPE_CHECKING:  # the server owns the state and imports this module
    from trade_canvas.replay.server import ReplayState

logger = logging.getLogger(__name__)

TICK_S = 0.02


# --- WebSocket -------------------------------------------------------------------------------


def _handshake_bytes(environ: dict[str, Any]) -> bytes:
    target = environ.get("PATH_INFO", "/")
    if environ.get("QUERY_STRING"):
        target += "?" + environ["QUERY_STRING"]
    lines = [f"GET {target} HTTP/1.1"]
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            lines.append(f"{key[5:].replace('_', '-').title()}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def run_websocket(state: ReplayState, environ: dict[str, Any], market: str, path: str) -> None:
    """Accept the upgrade and run one stream connection until it ends."""
    combined = path.startswith("/stream")
    if combined:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        streams = [s for s in query.get("streams", [""])[-1].split("/") if s]
    elif path == "/ws" or path.startswith("/ws/"):
        streams = [s for s in path[len("/ws/"):].split("/") if s]
    else:
        return _reject(environ)
    connection = WSConnection(ConnectionType.SERVER)
    connection.receive_data(_handshake_bytes(environ))
    if not any(isinstance(event, WsRequest) for event in connection.events()):
        return _reject(environ)
    rfile = environ["wsgi.input"]
    sock = rfile.raw._sock  # pywsgi exposes no socket; simple-websocket reads it the same way
    sock.sendall(connection.send(AcceptConnection()))
    session = StreamSession(state, market, combined, sock, rfile, connection)
    for stream in streams:
        session.subscribe(stream)
    session.run()


def _reject(environ: dict[str, Any]) -> None:
    sock = environ["wsgi.input"].raw._sock
    sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class StreamSession:
    """One client stream connection: its subscriptions, faults and the writer loop."""

    def __init__(
        self,
        state: ReplayState,
        market: str,
        combined: bool,
        sock: socket.socket,
        rfile: Any,
        connection: WSConnection,
    ) -> None:
        self.state, self.market, self.combined = state, market, combined
        self.sock, self.rfile, self.connection = sock, rfile, connection
        self.id = state.next_id
        state.next_id += 1
        self.streams: list[str] = []
        self.last_ms: dict[str, int] = {}
        self.epoch = state.clock.epoch
        self.runner = FaultRunner()
        self.inbox: Queue[Event | None] = Queue()
        self.open = True
        self.close_requested = False
        self.frames_sent = 0
        self.received: deque[float] = deque()
        self.next_ping = time.monotonic() + limits_for(market).server_ping_interval_s
        self.partial_text = ""
        state.sessions[self.id] = self
        state.counters["ws_connections_total"] += 1

    def describe(self) -> dict[str, Any]:
        """Return this connection for the state endpoint."""
        return {
            "id": self.id, "market": self.market, "combined": self.combined,
            "streams": list(self.streams), "frames_sent": self.frames_sent,
            "silent": self.runner.silent, "faults": self.runner.describe(),
        }

    def subscribe(self, stream: str) -> None:
        """Add a stream; its frames start with the next event after now (no backlog)."""
        if stream not in self.last_ms:
            self.streams.append(stream)
            self.last_ms[stream] = self.state.now_ms()
            self.state.counters["subscriptions_total"] += 1

    def unsubscribe(self, stream: str) -> None:
        """Drop a stream if subscribed."""
        if stream in self.last_ms:
            self.streams.remove(stream)
            del self.last_ms[stream]
            self.state.counters["unsubscriptions_total"] += 1

    def run(self) -> None:
        """Write market frames and replies until the client, a fault or a reset ends it."""
        reader = gevent.spawn(self._read_loop)
        try:
            while self.open:
                self._perform(self.runner.due_now())
                self._drain_inbox()
                if self.close_requested and self.open:
                    self._close(1000, "replay reset")
                if self.open:
                    self._emit_market()
                    self._maybe_ping()
        except OSError:
            logger.debug("connection %s: socket error", self.id)
        finally:
            self.open = False
            _shutdown(self.sock)
            reader.join(timeout=1)
            reader.kill(block=False)
            self.state.sessions.pop(self.id, None)

    def _read_loop(self) -> None:
        try:
            while True:
                data = self.rfile.read1(65536)
                if not data:
                    break
                self.connection.receive_data(data)
                for event in self.connection.events():
                    self.inbox.put(event)
        except Exception:  # noqa: BLE001  boundary: any read/protocol error ends the connection
            logger.debug("connection %s: read ended", self.id, exc_info=True)
        finally:
            self.inbox.put(None)

    def _drain_inbox(self) -> None:
        try:
            event = self.inbox.get(timeout=TICK_S)
            while True:
                self._handle_event(event)
                event = self.inbox.get_nowait()
        except Empty:
            pass

    def _handle_event(self, event: Event | None) -> None:
        if not self.open:
            return
        if event is None:
            self.open = False
        elif isinstance(event, Ping):
            self._write(self.connection.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._write(self.connection.send(event.response()))
            self.open = False
        elif isinstance(event, TextMessage):
            self.partial_text += event.data
            if event.message_finished:
                text, self.partial_text = self.partial_text, ""
                self._handle_text(text)

    def _handle_text(self, text: str) -> None:
        self.state.counters["ws_messages_received"] += 1
        wall = time.monotonic()
        self.received.append(wall)
        while self.received and self.received[0] < wall - 1:
            self.received.popleft()
        if len(self.received) > limits_for(self.market).incoming_messages_per_second:
            self._close(1008, "Too many requests")
            return
        reply = handle_method(self, text)
        if not self.runner.silent:
            self._send_text(orjson.dumps(reply).decode())

    def _emit_market(self) -> None:
        clock = self.state.clock
        now = clock.now_ms(time.monotonic())
        if clock.epoch != self.epoch:
            self.epoch = clock.epoch
            self.last_ms = {stream: now for stream in self.streams}
        due = []
        for index, stream in enumerate(self.streams):
            series = _stream_series(self.state.market, self.market, stream)
            if series is not None:
                for event in mk.stream_events(series, self.last_ms[stream], now):
                    due.append((event.event_ms, index, stream, series, event))
            self.last_ms[stream] = max(self.last_ms[stream], now)
        due.sort(key=lambda item: (item[0], item[1]))
        for _, _, stream, series, event in due:
            frame = mk.kline_frame(series, event)
            payload = {"stream": stream, "data": frame} if self.combined else frame
            self._perform(self.runner.process(orjson.dumps(payload).decode(), not event.closed))
            if not self.open:
                return

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if not self.open:
                return
            if isinstance(action, Send):
                self._send_text(action.text)
                self.frames_sent += 1
                self.state.counters["frames_sent"] += 1
            elif isinstance(action, Drop):
                self.state.counters["ws_drops"] += 1
                if action.clean:
                    self._close(1001, "replay fault")
                self.open = False
                _shutdown(self.sock)

    def _maybe_ping(self) -> None:
        wall = time.monotonic()
        if wall >= self.next_ping:
            self.next_ping = wall + limits_for(self.market).server_ping_interval_s
            self._write(self.connection.send(Ping(b"replay")))

    def _send_text(self, text: str) -> None:
        self._write(self.connection.send(TextMessage(data=text)))

    def _close(self, code: int, reason: str) -> None:
        try:
            self._write(self.connection.send(CloseConnection(code=code, reason=reason)))
        except Exception:  # noqa: BLE001  wsproto refuses when the close already started
            logger.debug("connection %s: close not sent", self.id)
        self.open = False

    def _write(self, data: bytes) -> None:
        self.sock.sendall(data)


def _stream_series(market: mk.ReplayMarket, market_name: str, stream: str) -> mk.Series | None:
    symbol, _, kind = stream.partition("@")
    if not kind.startswith("kline_"):
        return None
    return market.series(market_name, symbol.upper(), kind[len("kline_"):])


# --- method frames ---------------------------------------------------------------------------


def _method_error(code: int, msg: str, request_id: object) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": request_id}


def handle_method(session: StreamSession, text: str) -> dict[str, Any]:
    """Apply one SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS frame; return Binance's reply."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _method_error(3, "Invalid JSON: expected value at line 1 column 1", None)
    if not isinstance(message, dict):
        return _method_error(2, "Invalid request: request must be an object", None)
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id < 0:
        return _method_error(2, "Invalid request: request ID must be an unsigned integer", None)
    method = message.get("method")
    if method == "LIST_SUBSCRIPTIONS":
        return {"result": list(session.streams), "id": request_id}
    if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
        return _method_error(
            2, f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, "
            "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`", request_id)
    params = message.get("params")
    if not isinstance(params, list) or not all(isinstance(p, str) and "@" in p for p in params):
        return _method_error(2, "Invalid request: missing field `params` or invalid stream name", request_id)
    if method == "UNSUBSCRIBE":
        for stream in params:
            session.unsubscribe(stream)
        return {"result": None, "id": request_id}
    limit = limits_for(session.market).streams_per_connection
    if len(set(session.streams) | set(params)) > limit:
        return _method_error(2, f"Invalid request: too many streams (max {limit})", request_id)
    for stream in params:
        session.subscribe(stream)
    return {"result": None, "id": request_id}
