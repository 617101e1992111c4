"""The replay exchange server: Binance's public REST and WebSocket API over recorded data.

One gevent ``pywsgi`` server on one port; the first path segment picks the market::

    spot     REST  http://HOST:PORT/spot     + /api/v3/klines | exchangeInfo | ticker/24hr | ping | time
             WS    ws://HOST:PORT/spot       + /ws/<stream> | /ws | /stream?streams=a/b | /stream
    futures  REST  http://HOST:PORT/futures  + /fapi/v1/klines | exchangeInfo | ticker/24hr | ping | time
             WS    ws://HOST:PORT/futures    + the same WS paths
    admin          http://HOST:PORT/_replay/state | /_replay/clock | /_replay/faults | /_replay/reset

So a client configured with REST base ``http://HOST:PORT/spot`` and WS base
``ws://HOST:PORT/spot`` builds exactly the paths it builds for Binance. Replay time (see
``market.py``) is what clients see as "now".

WebSocket: the upgrade is handled here with wsproto on the connection's own gevent socket
rather than with simple-websocket's ``Server(environ)`` (which the app's ``http/ws.py`` uses).
Fault injection needs the raw connection: a drop must close TCP without a close frame, a
silent feed must keep answering pings, garbage must go out as sent; simple-websocket owns a
reader thread, answers pings on its own and, under gevent, works on a ``dup()`` of the socket
that pywsgi keeps open behind it. One greenlet per connection writes (market frames, replies,
pongs); a second one only reads, so the socket never has two writers.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import signal
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

import gevent
import orjson
from gevent import pywsgi
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

from trade_canvas.errors import InvalidInput
from trade_canvas.exchanges.binance import KLINE_INTERVALS, limits_for
from trade_canvas.replay import market as mk
from trade_canvas.replay.faults import (
    Action,
    Drop,
    FaultRunner,
    RestFault,
    Send,
    parse_rest_fault,
    parse_ws_fault,
)

logger = logging.getLogger(__name__)

MARKET_PREFIXES = ("spot", "futures")
REST_PREFIX = {"spot": "/api/v3", "futures": "/fapi/v1"}
TICK_S = 0.02
StartResponse = Callable[..., Any]
Response = tuple[int, list[tuple[str, str]], bytes]


@dataclass(slots=True)
class ReplayState:
    """Mutable server state shared by every request greenlet (one OS thread, no locks)."""

    market: mk.ReplayMarket
    clock: mk.ReplayClock
    initial: mk.ReplayClock
    counters: Counter[str] = field(default_factory=Counter)
    rest_fault: RestFault | None = None
    rest_fault_left: int = 0
    sessions: dict[int, StreamSession] = field(default_factory=dict)
    next_id: int = 1
    weight: dict[str, tuple[int, int]] = field(default_factory=dict)

    def now_ms(self) -> int:
        """Return replay time now."""
        return self.clock.now_ms(time.monotonic())


# --- loading ---------------------------------------------------------------------------------


def load_market(anchor_ms: int, synthesize_listed: bool = False) -> mk.ReplayMarket:
    """Load the packaged recordings, rebased so every symbol starts on ``anchor_ms``'s day.

    With ``synthesize_listed`` every listed TRADING symbol without a recording replays a
    synthetic path derived from a recorded one (see ``market.synthesize_listed``).
    """
    data = resources.files("trade_canvas.replay") / "data"
    datasets = []
    for entry in sorted(data.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".csv.gz"):
            market, symbol, interval = entry.name[: -len(".csv.gz")].split("_")
            text = gzip.decompress(entry.read_bytes()).decode()
            datasets.append(mk.parse_kline_csv(text, market, symbol, interval))
    info = {m: orjson.loads((data / f"{m}_exchangeInfo.json").read_bytes()) for m in MARKET_PREFIXES}
    tickers = {m: orjson.loads((data / f"{m}_ticker_24hr.json").read_bytes()) for m in MARKET_PREFIXES}
    if synthesize_listed:
        datasets += mk.synthesize_listed(datasets, info)
    return mk.ReplayMarket(mk.rebase(datasets, anchor_ms), info, tickers)


# --- HTTP plumbing ---------------------------------------------------------------------------


def _json(status: int, body: object, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return status, [("Content-Type", "application/json"), *headers], orjson.dumps(body)


def _binance_error(status: int, code: int, msg: str) -> Response:
    return _json(status, {"code": code, "msg": msg})


def make_app(state: ReplayState) -> Callable[[dict[str, Any], StartResponse], list[bytes]]:
    """Return the WSGI application serving REST, WebSocket upgrades and the admin API."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        prefix, _, rest = path.lstrip("/").partition("/")
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket" and prefix in MARKET_PREFIXES:
            run_websocket(state, environ, prefix, "/" + rest)
            return []  # the socket is closed; nothing may be written after the session
        if prefix == "_replay":
            status, headers, body = handle_admin(state, environ, rest)
        elif prefix in MARKET_PREFIXES:
            status, headers, body = handle_rest(state, environ, prefix, "/" + rest)
        else:
            status, headers, body = _json(404, {"code": -1, "msg": f"unknown path {path}"})
        start_response(f"{status} {_REASONS.get(status, 'Status')}", headers)
        return [body]

    return app


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            418: "I'm a teapot", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _query(environ: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return {name: values[-1] for name, values in parsed.items()}


# --- REST ------------------------------------------------------------------------------------


def handle_rest(state: ReplayState, environ: dict[str, Any], market: str, path: str) -> Response:
    """Answer one Binance REST request of ``market`` (after any armed REST fault)."""
    state.counters["rest_requests"] += 1
    state.counters[f"rest {market} {path}"] += 1
    fault = _take_rest_fault(state)
    if fault is not None:
        return _fault_response(fault)
    api, _, name = path.rpartition("/")
    if api not in (REST_PREFIX[market], REST_PREFIX[market] + "/ticker"):
        return _json(404, {"code": -1, "msg": f"unknown path {path} for {market}"})
    if environ.get("REQUEST_METHOD") != "GET":
        return _json(405, {"code": -1, "msg": "only GET is served"})
    handler = _REST_ROUTES.get(name if api == REST_PREFIX[market] else "ticker/" + name)
    if handler is None:
        return _json(404, {"code": -1, "msg": f"unknown path {path} for {market}"})
    weight, response = handler(state, market, _query(environ))
    status, headers, body = response
    return status, [*headers, ("X-MBX-USED-WEIGHT-1M", str(_use_weight(state, market, weight)))], body


def _use_weight(state: ReplayState, market: str, weight: int) -> int:
    minute = int(time.time() // 60)
    seen_minute, used = state.weight.get(market, (minute, 0))
    used = (used if seen_minute == minute else 0) + weight
    state.weight[market] = (minute, used)
    return used


def _take_rest_fault(state: ReplayState) -> RestFault | None:
    if state.rest_fault is None or state.rest_fault_left <= 0:
        return None
    state.rest_fault_left -= 1
    state.counters["rest_faults_served"] += 1
    fault = state.rest_fault
    if state.rest_fault_left == 0:
        state.rest_fault = None
    return fault


def _fault_response(fault: RestFault) -> Response:
    if fault.status in (418, 429):
        msg = ("Way too many requests; IP banned." if fault.status == 418
               else "Too many requests; current limit is 6000 request weight per minute.")
        body = {"code": -1003, "msg": msg}
        return _json(fault.status, body, [("Retry-After", str(fault.retry_after))])
    body = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
    return _json(fault.status, body)


class _ParamError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _mandatory(query: dict[str, str], name: str) -> str:
    value = query.get(name, "").strip()
    if not value:
        raise _ParamError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value


def _optional_int(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 20:
        raise _ParamError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(value)


def _symbol(state: ReplayState, market: str, query: dict[str, str]) -> str:
    symbol = _mandatory(query, "symbol").upper()
    if not state.market.knows(market, symbol):
        raise _ParamError(-1121, "Invalid symbol.")
    return symbol


def _klines(state: ReplayState, market: str, query: dict[str, str]) -> tuple[int, Response]:
    limits = limits_for(market)
    try:
        symbol, interval = _symbol(state, market, query), _mandatory(query, "interval")
        if interval not in KLINE_INTERVALS:
            raise _ParamError(-1120, "Invalid interval.")
        start, end = _optional_int(query, "startTime"), _optional_int(query, "endTime")
        limit = _optional_int(query, "limit")
        limit = limits.klines_default_limit if limit is None else limit
        if not 1 <= limit <= limits.klines_max_limit:
            raise _ParamError(-1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            raise _ParamError(-1023, "Start time is greater than end time.")
    except _ParamError as exc:
        return 2, _binance_error(400, exc.code, exc.msg)
    series = state.market.series(market, symbol, interval)
    if series is None:
        return 2, _json(200, [])
    rows = mk.visible_klines(series, state.now_ms(), start, end, limit)
    return 2, _json(200, [mk.rest_row(series, kline) for kline in rows])


def _exchange_info(state: ReplayState, market: str, query: dict[str, str]) -> tuple[int, Response]:
    return (20 if market == "spot" else 1), _json(200, state.market.exchange_info(market, state.now_ms()))


def _ticker(state: ReplayState, market: str, query: dict[str, str]) -> tuple[int, Response]:
    rows = state.market.tickers(market, state.now_ms())
    if "symbol" not in query:
        return (80 if market == "spot" else 40), _json(200, rows)
    try:
        symbol = _symbol(state, market, query)
    except _ParamError as exc:
        return 2, _binance_error(400, exc.code, exc.msg)
    row = next((r for r in rows if r["symbol"] == symbol), None)
    if row is None:
        return 2, _binance_error(400, -1121, "Invalid symbol.")
    return 2, _json(200, row)


def _ping(state: ReplayState, market: str, query: dict[str, str]) -> tuple[int, Response]:
    return 1, _json(200, {})


def _time(state: ReplayState, market: str, query: dict[str, str]) -> tuple[int, Response]:
    return 1, _json(200, {"serverTime": state.now_ms()})


_REST_ROUTES: dict[str, Callable[[ReplayState, str, dict[str, str]], tuple[int, Response]]] = {
    "klines": _klines,
    "exchangeInfo": _exchange_info,
    "ticker/24hr": _ticker,
    "ping": _ping,
    "time": _time,
}


# --- admin -----------------------------------------------------------------------------------


def handle_admin(state: ReplayState, environ: dict[str, Any], name: str) -> Response:
    """Serve ``/_replay/<name>``: state (GET), clock, faults, reset (POST, JSON bodies)."""
    method = environ.get("REQUEST_METHOD")
    if name == "state" and method == "GET":
        return _json(200, describe_state(state, environ.get("HTTP_HOST", "127.0.0.1")))
    if name not in ("clock", "faults", "reset") or method != "POST":
        return _json(404, {"error": f"unknown admin route {method} /_replay/{name}"})
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = orjson.loads(environ["wsgi.input"].read(length) or b"{}")
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        result = {"clock": set_clock, "faults": arm_faults, "reset": reset}[name](state, body)
    except (InvalidInput, orjson.JSONDecodeError, ValueError) as exc:
        return _json(400, {"error": str(exc)})
    return _json(200, result)


def _clock_view(state: ReplayState) -> dict[str, Any]:
    clock = state.clock
    return {"now_ms": state.now_ms(), "speed": clock.speed, "paused": clock.paused, "epoch": clock.epoch}


def set_clock(state: ReplayState, body: dict[str, Any]) -> dict[str, Any]:
    """Apply ``speed``, ``paused``, then ``set_ms`` (jump: frames skipped) or ``advance_ms``."""
    wall, clock = time.monotonic(), state.clock
    speed, paused = body.get("speed", clock.speed), body.get("paused", clock.paused)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed <= 0:
        raise InvalidInput("speed must be a number > 0")
    if not isinstance(paused, bool):
        raise InvalidInput("paused must be a boolean")
    clock = clock.rebased(wall, speed=float(speed), paused=paused)
    if "set_ms" in body:
        clock = clock.jumped(wall, _non_negative(body, "set_ms"))
    if "advance_ms" in body:
        clock = clock.advanced(wall, _non_negative(body, "advance_ms"))
    state.clock = clock
    return _clock_view(state)


def _non_negative(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be an integer >= 0")
    return value


def arm_faults(state: ReplayState, body: dict[str, Any]) -> dict[str, Any]:
    """Arm ``rest`` and/or ``ws`` faults, or ``clear`` them all (which also ends silences)."""
    if body.get("clear"):
        state.rest_fault, state.rest_fault_left = None, 0
        for session in state.sessions.values():
            session.runner.clear()
    armed: dict[str, Any] = {}
    if "rest" in body:
        fault = parse_rest_fault(body["rest"])
        state.rest_fault, state.rest_fault_left = fault, fault.count
        armed["rest"] = {"status": fault.status, "count": fault.count}
    if "ws" in body:
        specs = body["ws"] if isinstance(body["ws"], list) else [body["ws"]]
        ws_faults = [parse_ws_fault(spec) for spec in specs]
        target = body.get("connection")
        sessions = [s for s in state.sessions.values() if target is None or s.id == target]
        for session in sessions:
            for ws_fault in ws_faults:
                session.runner.arm(ws_fault)
        state.counters["ws_faults_armed"] += len(ws_faults) * len(sessions)
        armed["ws"] = {"kinds": [f.kind for f in ws_faults], "connections": [s.id for s in sessions]}
    return {"armed": armed}


def reset(state: ReplayState, body: dict[str, Any]) -> dict[str, Any]:
    """Close every stream connection, clear faults and counters, restart the clock."""
    for session in list(state.sessions.values()):
        session.close_requested = True
    state.rest_fault, state.rest_fault_left = None, 0
    state.counters.clear()
    wall = time.monotonic()
    state.clock = mk.ReplayClock(
        state.initial.replay_ms, wall, state.initial.speed, state.initial.paused, state.clock.epoch + 1
    )
    return {"clock": _clock_view(state)}


def describe_state(state: ReplayState, host: str) -> dict[str, Any]:
    """Return the clock, base URLs, counters, armed faults and open connections."""
    counters = dict(state.counters)
    counters["ws_connections_open"] = len(state.sessions)
    markets = {
        market: {
            "rest_base_url": f"http://{host}/{market}",
            "ws_base_url": f"ws://{host}/{market}",
            "symbols_with_data": state.market.data_symbols(market),
        }
        for market in MARKET_PREFIXES
    }
    rest_fault = None
    if state.rest_fault is not None:
        rest_fault = {"status": state.rest_fault.status, "left": state.rest_fault_left}
    return {
        "clock": _clock_view(state),
        "markets": markets,
        "counters": counters,
        "rest_fault": rest_fault,
        "connections": [session.describe() for session in state.sessions.values()],
    }


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
        streams = [s for s in _query(environ).get("streams", "").split("/") if s]
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


# --- entry point -----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="replay-exchange",
        description="Serve recorded Binance market data as a live spot + USD-M futures exchange.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port (printed)")
    parser.add_argument("--speed", type=float, default=1.0, help="replayed seconds per wall second")
    parser.add_argument(
        "--anchor", default="recorded",
        help="'recorded' (2020-01-01, BTCUSDT's real dates), 'now' (today), or unix ms",
    )
    parser.add_argument("--start-ms", type=int, default=None,
                        help="replay time at start (default: anchor + 1 day of history; 'now' anchor: now)")
    parser.add_argument("--paused", action="store_true", help="start with the clock paused")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--synthesize-listed", action="store_true",
        help="every listed TRADING symbol without a recording replays a synthetic path "
        "derived from a recorded one (for load tests needing many distinct streams)",
    )
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be > 0")
    return args


def _timeline(args: argparse.Namespace) -> tuple[int, int]:
    if args.anchor == "recorded":
        anchor = mk.DEFAULT_ANCHOR_MS
        start = anchor + mk.DAY_MS
    elif args.anchor == "now":
        now = int(time.time() * 1000)
        anchor = now // mk.DAY_MS * mk.DAY_MS - mk.DAY_MS
        start = now
    else:
        anchor = int(args.anchor)
        start = anchor + mk.DAY_MS
    return anchor, (args.start_ms if args.start_ms is not None else start)


def main(argv: list[str] | None = None) -> int:
    """Run the replay exchange until SIGINT/SIGTERM; return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    anchor, start = _timeline(args)
    clock = mk.ReplayClock(start, time.monotonic(), args.speed, args.paused)
    state = ReplayState(load_market(anchor, args.synthesize_listed), clock, clock)
    server = pywsgi.WSGIServer((args.host, args.port), make_app(state), log=None)
    server.start()
    host, port = server.address[0], server.address[1]
    print(f"replay exchange listening on http://{host}:{port}", flush=True)
    for market in MARKET_PREFIXES:
        print(f"  {market}: REST http://{host}:{port}/{market}  WS ws://{host}:{port}/{market}", flush=True)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
