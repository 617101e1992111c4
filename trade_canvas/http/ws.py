"""WebSocket ``/ws/market``: upgrade, framing, and the client message protocol.

Falcon has no WebSocket support under WSGI, so ``dispatch_websockets`` routes upgrade requests
around it to ``MarketSocket``, which takes the raw socket from gunicorn's environ through
simple-websocket. Each connection runs a reader loop (client commands) and a writer greenlet
draining its ``Outbox``; every frame, error replies included, goes through the outbox so one
writer owns the socket.

permessage-deflate is not negotiated: compressing every frame separately for each of thousands
of subscribers costs far more CPU than the bandwidth it saves on small candle messages.

Every write to the socket has a deadline (``TRADE_CANVAS_WS_WRITE_TIMEOUT_S``): a client that
stops reading fills the kernel buffer, and an unbounded ``sendall`` would then hold the socket
lock forever, so the library's pings (and with them its reads) would stop and the session would
never end. A write past its deadline drops the client; nothing is written after a close frame.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import orjson
import simple_websocket

from trade_canvas.actors.subscriber import Frame, encode
from trade_canvas.errors import TradeCanvasError
from trade_canvas.http.access import Access
from trade_canvas.http.errors import DetailError
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import MAX_EPOCH_SECONDS, SeriesId, parse_series_id

logger = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
PING_INTERVAL_S = 25.0
# Deadline of the writes after the server closed the outbox (the last queued frames, an error,
# the close frame): a client dropped for not reading must not hold its session for long.
GOODBYE_TIMEOUT_S = 1.0


class BadRequest(Exception):
    """A client message the server cannot act on; the socket stays open."""


@dataclass(frozen=True, slots=True)
class SubscribeCommand:
    series: SeriesId
    since: int | None
    supports_batch: bool
    draw: bool = False


@dataclass(frozen=True, slots=True)
class UnsubscribeCommand:
    series_id: str


def parse_client_message(data: str | bytes) -> SubscribeCommand | UnsubscribeCommand | None:
    """Decode one client frame; None for an unsubscribe that names nothing usable.

    Raises:
        BadRequest: with the message sent back to the client.
    """
    if isinstance(data, bytes):
        raise BadRequest("binary frames are not supported; send JSON text")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid json") from None
    if not isinstance(message, dict):
        raise BadRequest("invalid message envelope")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise BadRequest("missing message type")
    if kind == "subscribe":
        return _subscribe(message)
    if kind == "unsubscribe":
        series_id = message.get("series_id")
        if not isinstance(series_id, str) or not series_id.strip():
            return None
        try:
            return UnsubscribeCommand(parse_series_id(series_id).text)
        except TradeCanvasError:
            return None
    raise BadRequest(f"unknown message type: {kind}")


def _subscribe(message: dict[str, Any]) -> SubscribeCommand:
    series_id = message.get("series_id")
    if not isinstance(series_id, str) or not series_id.strip():
        raise BadRequest("missing series_id")
    try:
        series = parse_series_id(series_id)
    except TradeCanvasError as exc:
        raise BadRequest(str(exc)) from None
    since = message.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                              or not 0 <= since <= MAX_EPOCH_SECONDS):
        raise BadRequest(f"invalid since (an integer in 0..{MAX_EPOCH_SECONDS})")
    batch = message.get("supports_batch")
    if batch is not None and not isinstance(batch, bool):
        raise BadRequest("invalid supports_batch")
    draw = message.get("draw")
    if draw is not None and not isinstance(draw, bool):
        raise BadRequest("invalid draw")
    return SubscribeCommand(series, since, bool(batch), bool(draw))


def _error(code: str, message: str, **extra: Any) -> Frame:
    return encode({"type": "error", "code": code, "message": message, **extra})


class _WholeFrameSocket:
    """Socket proxy whose ``send`` writes everything, one writer at a time, within a deadline.

    simple-websocket calls ``sock.send`` and ignores short writes, which corrupts frames as soon
    as a slow client fills the kernel buffer; the writer greenlet, the hub's direct writes and
    the library's own ping/pong replies also share the socket. Whole writes under a lock fix
    both. Each write is a loop of plain sends with the time left as timeout (gevent's
    ``sendall`` asks the kernel for the buffer size on every call, which costs as much as the
    write itself for small frames), so the lock is never held past ``timeout_s``.

    ``send`` is the library's path (handshake, pings, pongs, close frames); once it has written a
    close frame, every later write raises ``BrokenPipeError``, so no ping follows a close.
    """

    def __init__(self, sock: Any, timeout_s: float = 10.0) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.timeout_s = timeout_s
        self.finished = False  # a close frame went out
        self.upgraded = False  # past the HTTP handshake: writes are frames
        # Only gevent's socket.send takes a timeout; on any other socket every write is queued.
        self._can_send_now = type(sock).__module__.startswith("gevent")

    def send(self, data: bytes) -> int:
        """Write ``data`` (the library's frames) whole; see ``write``."""
        self.write(data, library=True)
        return len(data)

    def write(self, data: bytes, library: bool = False) -> None:
        """Write all of ``data`` before the deadline.

        Raises:
            OSError: the peer is gone, the socket is closed (``BrokenPipeError``) or the deadline
                passed (``TimeoutError``).
        """
        deadline = time.monotonic() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            raise TimeoutError("websocket write waited too long for the socket")
        try:
            if self.finished:
                raise BrokenPipeError("websocket already sent its close frame")
            self._write_before(memoryview(data), deadline)
            if library and self.upgraded and _has_close_frame(data):
                self.finished = True
        finally:
            self._lock.release()

    def _write_before(self, view: memoryview, deadline: float) -> None:
        # Non-blocking sends, waiting for room with the time left: gevent's own send(timeout)
        # only honours a timeout of 0.0, and a blocking send waits for the whole buffer.
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"websocket write took over {self.timeout_s:g}s")
            try:
                if self._can_send_now:
                    sent = self._sock.send(view, 0, 0.0)
                else:
                    sent = self._sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._wait_writable(left)
                continue
            view = view[sent:]

    def _wait_writable(self, timeout_s: float) -> None:
        if self._can_send_now:
            from gevent.socket import wait_write

            try:
                wait_write(self._sock.fileno(), timeout=timeout_s)
            except OSError as exc:  # gevent's socket.timeout: the loop reports the deadline
                if not isinstance(exc, TimeoutError):
                    raise
        else:
            select.select([], [self._sock], [], timeout_s)

    def send_now(self, data: bytes) -> int:
        """Write what the kernel takes without waiting; returns the bytes written (maybe 0)."""
        if not self._can_send_now or not self._lock.acquire(blocking=False):
            return 0
        if self.finished:
            self._lock.release()
            return 0
        try:
            # gevent's socket.send with timeout 0.0 raises instead of waiting for the buffer.
            return int(self._sock.send(data, 0, 0.0))
        except OSError:
            return 0  # full buffer or a dead peer: the writer will send or notice the error
        finally:
            self._lock.release()

    def shutdown_quietly(self) -> None:
        """Shut the socket down (wakes the library's reader); errors mean it already is."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _has_close_frame(data: bytes) -> bool:
    """Whether server frames (unmasked, as the library writes them) include a close frame."""
    at = 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at:at + 8], "big"), at + 8
        if opcode == 0x8:
            return True
        at += size
    return False


def upgrade(
    environ: dict[str, Any], write_timeout_s: float
) -> tuple[simple_websocket.Server, _WholeFrameSocket]:
    """Complete the WebSocket handshake on gunicorn's socket; returns the session and socket."""
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    sock = _WholeFrameSocket(environ["gunicorn.socket"], write_timeout_s)
    environ["gunicorn.socket"] = sock
    ws = simple_websocket.Server(
        environ, ping_interval=PING_INTERVAL_S, max_message_size=MAX_CLIENT_MESSAGE_BYTES
    )
    sock.upgraded = True
    return ws, sock


class MarketSocket:
    """One WebSocket session on /ws/market."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def serve(self, environ: dict[str, Any]) -> None:
        """Run the session until the client or the server closes it."""
        settings = self.runtime.settings
        ws, sock = upgrade(environ, settings.ws_write_timeout_s)
        outbox = self.runtime.open_connection()
        outbox.direct = sock.send_now
        budget = SubscribeBudget(settings.ws_max_subscriptions, settings.ws_subscribes_per_s)
        writer = threading.Thread(target=self._pump, args=(ws, sock, outbox), daemon=True)
        writer.start()
        try:
            # The writer wakes this loop (ws.event) when it ends, also after the server closed
            # the socket (slow consumer, write timeout, shutdown): else receive() waited forever.
            while not outbox.closed:
                data = ws.receive()
                if data is not None:
                    self._handle(outbox, data, budget)
        except simple_websocket.ConnectionClosed:
            pass
        finally:
            self.runtime.close_connection(outbox)
            writer.join(timeout=settings.ws_write_timeout_s + 1)
            sock.shutdown_quietly()  # ends the library's reader thread now, not at its next ping

    def _handle(self, outbox: Any, data: str | bytes, budget: SubscribeBudget) -> None:
        try:
            command = parse_client_message(data)
        except BadRequest as exc:
            outbox.offer([_error("bad_request", str(exc))])
            return
        try:
            if isinstance(command, SubscribeCommand):
                refused = budget.spend(command.series.text, outbox.subscriptions.series)
                if refused is not None:
                    outbox.offer([_error(*refused, series_id=command.series.text)])
                    return
                self.runtime.subscribe(
                    outbox, command.series, command.since, command.supports_batch, command.draw
                )
            elif isinstance(command, UnsubscribeCommand):
                self.runtime.unsubscribe(outbox, command.series_id)
        except TradeCanvasError as exc:
            series_id = command.series.text if isinstance(command, SubscribeCommand) else None
            outbox.offer([_error(error_code(exc), str(exc), series_id=series_id)])

    @staticmethod
    def _pump(ws: simple_websocket.Server, sock: _WholeFrameSocket, outbox: Any) -> None:
        # Frames arrive already framed for the wire (Frame.wire, shared by every subscriber);
        # everything pending goes out in one write with a deadline.
        try:
            while True:
                frames = outbox.take()
                if frames is None:
                    break
                if not ws.connected:
                    break
                if outbox.closed:
                    sock.timeout_s = min(sock.timeout_s, GOODBYE_TIMEOUT_S)
                sock.write(b"".join(frame.wire() for frame in frames))
                outbox.sent()
            code = {"slow_consumer": 1008, "server_shutdown": 1001}.get(outbox.close_code or "")
            if code is not None and ws.connected:
                sock.timeout_s = min(sock.timeout_s, GOODBYE_TIMEOUT_S)
                ws.close(code, outbox.close_code)
        except TimeoutError as exc:
            logger.warning("websocket #%d dropped: %s", outbox.id, exc)
        except (simple_websocket.ConnectionClosed, OSError):
            pass
        finally:
            outbox.close()
            ws.connected = False
            ws.event.set()


class SubscribeBudget:
    """One connection's subscribe limits: distinct series held, and subscribes per second.

    A token bucket: a connection may subscribe ``max_series`` times at once (opening a chart
    with many series), then ``per_second``. Each subscribe costs the hub a store read and a
    catch-up, so a client subscribing in a loop would otherwise slow ingest for everyone.
    """

    def __init__(
        self, max_series: int, per_second: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_series = max_series
        self.per_second = per_second
        self.clock = clock
        self.tokens = float(max_series)
        self.at = clock()

    def spend(self, series_id: str, held: set[str]) -> tuple[str, str] | None:
        """Count one subscribe; return ``(code, message)`` when it must be refused."""
        if series_id not in held and len(held) >= self.max_series:
            return "capacity", f"too_many_subscriptions: at most {self.max_series} per connection"
        now = self.clock()
        self.tokens = min(float(self.max_series), self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens < 1.0:
            return "rate_limited", f"more than {self.per_second:g} subscribes per second"
        self.tokens -= 1.0
        return None


def error_code(exc: TradeCanvasError) -> str:
    """Return the WebSocket error code of a domain error."""
    from trade_canvas.errors import CapacityExceeded, InvalidInput, Unavailable

    if isinstance(exc, InvalidInput):
        return "bad_request"
    if isinstance(exc, CapacityExceeded):
        return "capacity"
    if isinstance(exc, Unavailable):
        return "unavailable"
    return "error"


def dispatch_websockets(
    app: Callable[..., Iterable[bytes]], sockets: dict[str, MarketSocket],
    access: Access | None = None,
) -> Callable[..., Iterable[bytes]]:
    """Wrap a WSGI app so WebSocket upgrades on the given paths bypass it.

    An upgrade ``access`` refuses (Host, Origin, token) is answered with its JSON error and
    never becomes a session.
    """

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        handler = sockets.get(environ.get("PATH_INFO", ""))
        upgrade = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if handler is None or not upgrade or "gunicorn.socket" not in environ:
            return app(environ, start_response)
        if access is not None:
            try:
                access.check(environ, write=False, websocket=True)
            except DetailError as exc:
                headers = [("Content-Type", "application/json"), *(exc.headers or {}).items()]
                start_response(exc.status, headers)
                return [orjson.dumps({"detail": exc.detail})]
        handler.serve(environ)
        # The socket now belongs to the finished WebSocket session: gunicorn's async workers
        # treat StopIteration as "close the connection without writing a response".
        raise StopIteration()

    return wsgi
