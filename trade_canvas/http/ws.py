"""WebSocket ``/ws/market``: upgrade, framing, and the client message protocol.

Falcon has no WebSocket support under WSGI, so ``dispatch_websockets`` routes upgrade requests
around it to ``MarketSocket``, which takes the raw socket from gunicorn's environ through
simple-websocket. Each connection runs a reader loop (client commands) and a writer greenlet
draining its ``Outbox``; every frame, error replies included, goes through the outbox so one
writer owns the socket.

permessage-deflate is not negotiated: compressing every frame separately for each of thousands
of subscribers costs far more CPU than the bandwidth it saves on small candle messages.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import orjson
import simple_websocket

from trade_canvas.actors.hub import Frame, encode
from trade_canvas.errors import TradeCanvasError
from trade_canvas.http.access import Access
from trade_canvas.http.errors import DetailError
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import MAX_EPOCH_SECONDS, SeriesId, parse_series_id

logger = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
PING_INTERVAL_S = 25.0


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
    """Socket proxy whose ``send`` writes everything, one writer at a time.

    simple-websocket calls ``sock.send`` and ignores short writes, which corrupts frames as soon
    as a slow client fills the kernel buffer; the writer greenlet, the hub's direct writes and
    the library's own ping/pong replies also share the socket. Whole writes under a lock fix
    both. ``send`` tries one plain send first: gevent's ``sendall`` asks the kernel for the
    buffer size on every call, which costs as much as the write itself for small frames.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        # Only gevent's socket.send takes a timeout; on any other socket every write is queued.
        self._can_send_now = type(sock).__module__.startswith("gevent")

    def send(self, data: bytes) -> int:
        with self._lock:
            sent = self._sock.send(data)
            if sent < len(data):
                self._sock.sendall(memoryview(data)[sent:])
        return len(data)

    def send_now(self, data: bytes) -> int:
        """Write what the kernel takes without waiting; returns the bytes written (maybe 0)."""
        if not self._can_send_now or not self._lock.acquire(blocking=False):
            return 0
        try:
            # gevent's socket.send with timeout 0.0 raises instead of waiting for the buffer.
            return int(self._sock.send(data, 0, 0.0))
        except OSError:
            return 0  # full buffer or a dead peer: the writer will send or notice the error
        finally:
            self._lock.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class MarketSocket:
    """One WebSocket session on /ws/market."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def serve(self, environ: dict[str, Any]) -> None:
        """Run the session until the client or the server closes it."""
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        sock = _WholeFrameSocket(environ["gunicorn.socket"])
        environ["gunicorn.socket"] = sock
        ws = simple_websocket.Server(
            environ, ping_interval=PING_INTERVAL_S, max_message_size=MAX_CLIENT_MESSAGE_BYTES
        )
        outbox = self.runtime.open_connection()
        outbox.direct = sock.send_now
        writer = threading.Thread(target=self._pump, args=(ws, outbox), daemon=True)
        writer.start()
        try:
            while not outbox.closed:
                data = ws.receive()
                if data is not None:
                    self._handle(outbox, data)
        except simple_websocket.ConnectionClosed:
            pass
        finally:
            self.runtime.close_connection(outbox)
            writer.join(timeout=5)

    def _handle(self, outbox: Any, data: str | bytes) -> None:
        try:
            command = parse_client_message(data)
        except BadRequest as exc:
            outbox.offer([_error("bad_request", str(exc))])
            return
        try:
            if isinstance(command, SubscribeCommand):
                self.runtime.subscribe(
                    outbox, command.series, command.since, command.supports_batch, command.draw
                )
            elif isinstance(command, UnsubscribeCommand):
                self.runtime.unsubscribe(outbox, command.series_id)
        except TradeCanvasError as exc:
            series_id = command.series.text if isinstance(command, SubscribeCommand) else None
            outbox.offer([_error(error_code(exc), str(exc), series_id=series_id)])

    @staticmethod
    def _pump(ws: simple_websocket.Server, outbox: Any) -> None:
        # Frames arrive already framed for the wire (Frame.wire, shared by every subscriber);
        # everything pending goes out in one write through the socket's locked sendall.
        try:
            while True:
                frames = outbox.take()
                if frames is None:
                    break
                if not ws.connected:
                    break
                ws.sock.send(b"".join(frame.wire() for frame in frames))
                outbox.sent()
            code = {"slow_consumer": 1008, "server_shutdown": 1001}.get(outbox.close_code or "")
            if code is not None and ws.connected:
                ws.close(code, outbox.close_code)
        except (simple_websocket.ConnectionClosed, OSError):
            pass
        finally:
            outbox.close()


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
