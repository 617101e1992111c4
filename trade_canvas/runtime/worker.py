"""The gunicorn worker: gevent's, with bounds on what one client can hold.

gevent serves every connection in a greenlet from a pool of ``worker_connections``; left as is,
one client could fill the pool with requests it never finishes (a slow-loris) and starve
everyone, ``/api/health`` included. This worker adds:

- a read deadline: a request's headers and body must arrive within
  TRADE_CANVAS_HTTP_READ_TIMEOUT_S of its first byte (for a new connection: of its opening),
  else it is answered 408 and closed. Between keep-alive requests the idle wait is gunicorn's
  ``keepalive``;
- a per-peer cap: one client address holds at most TRADE_CANVAS_MAX_CONNECTIONS_PER_PEER HTTP
  connections; one more is answered 429 and closed at once. A connection that becomes a
  WebSocket session leaves the count: sessions are long-lived by design (the benchmarks hold
  thousands from one address), pass the access checks, and have their own send limits;
- JSON for the answers gunicorn writes itself (a malformed request line, headers too large, a
  bad chunk: 400, 414, 431, ...), as for every other error;
- after an error answer to a request that has a body, the connection closes: the body may be
  unread, and reading it to the end would let a client keep the connection busy.
"""

from __future__ import annotations

import http
import logging
import socket
import time
from typing import Any, Callable, Iterable, NoReturn

import orjson
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker

# Only pure modules here: gunicorn's master imports this module to find the worker class,
# and the rest of the package must load in the worker, after gevent has patched the stdlib.
from trade_canvas.config import Settings
from trade_canvas.errors import RequestTimeout

logger = logging.getLogger(__name__)

# Most specific first: gunicorn's errors are one hierarchy under ParseException.
_STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (RequestTimeout, 408),
    (http_errors.InvalidResponseHeader, 500),
    (http_errors.InvalidResponseHeaderName, 500),
    (http_errors.ConfigurationProblem, 500),
    (http_errors.LimitRequestLine, 414),
    (http_errors.LimitRequestHeaders, 431),
    (http_errors.ExpectationFailed, 417),
    (http_errors.UnsupportedTransferCoding, 501),
    (http_errors.ForbiddenProxyRequest, 403),
    (http_errors.ParseException, 400),
)


def json_response(status: int, detail: str) -> bytes:
    """Return a complete HTTP/1.1 answer ``{"detail": detail}`` that closes the connection."""
    body = orjson.dumps({"detail": detail})
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def error_answer(exc: BaseException) -> tuple[int, str]:
    """Return the status and detail for an error raised while reading a request."""
    for error_class, status in _STATUS_BY_ERROR:
        if isinstance(exc, error_class):
            if status >= 500:
                return status, "internal_error"
            return status, str(exc)[:300] or http.HTTPStatus(status).phrase.lower()
    return 500, "internal_error"


_TOO_MANY_CONNECTIONS = json_response(429, "too many connections from your address")


class PeerCounts:
    """Open HTTP connections per client address, refused past ``limit`` (0: never)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}
        self.refused = 0

    def enter(self, peer: str) -> bool:
        """Count a new connection of ``peer``; False (not counted) when it has too many."""
        count = self.counts.get(peer, 0)
        if self.limit and count >= self.limit:
            self.refused += 1
            return False
        self.counts[peer] = count + 1
        return True

    def leave(self, peer: str) -> None:
        """Forget one connection of ``peer``."""
        count = self.counts.get(peer, 0) - 1
        if count > 0:
            self.counts[peer] = count
        else:
            self.counts.pop(peer, None)


class ClientSocket:
    """A client connection whose requests must arrive within ``timeout_s`` each.

    Only ``recv`` is changed (gunicorn's parser and request bodies read through it); everything
    else goes to the real socket. ``deadline`` is None while the connection waits between
    keep-alive requests; the next request's first byte starts a new one.
    """

    def __init__(self, sock: Any, timeout_s: float, release: Callable[[], None]) -> None:
        self.raw = sock
        self.timeout_s = timeout_s
        self.deadline: float | None = time.monotonic() + timeout_s
        self.received = False  # bytes of the current request arrived
        self.close_after = False  # close once the current answer is written
        self._held: bytes | None = None  # an answer head waiting for its body (see sendall)
        self._release: Callable[[], None] | None = release

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.deadline is None:
            data: bytes = self.raw.recv(size, flags)
            if data:
                self.deadline = time.monotonic() + self.timeout_s
                self.received = True
            return data
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._expire()
        self.raw.settimeout(remaining)
        try:
            data = self.raw.recv(size, flags)
        except socket.timeout:
            self._expire()
        finally:
            self.raw.settimeout(None)
        self.received = self.received or bool(data)
        return data

    def sendall(self, data: bytes, flags: int = 0) -> None:
        """Send ``data``; an answer's head waits for its body, so both leave in one write.

        gunicorn writes the head and the body of every answer with a ``sendall`` each: two
        system calls (and two buffer-size queries in gevent's ``sendall``) where one does. Only
        a head announcing a Content-Length is held (its body follows at once); streamed answers
        (SSE, chunked) and everything else go out as they come. ``flush`` sends a held head
        whose body never came (an empty answer) once the request is done.
        """
        held, self._held = self._held, None
        if held is not None:
            data = held + data
        elif _is_sized_head(data):
            self._held = data
            return
        sent = self.raw.send(data, flags)  # usually all of it: no buffer-size query
        if sent < len(data):
            self.raw.sendall(data[sent:], flags)

    def flush(self) -> None:
        """Send a held answer head."""
        held, self._held = self._held, None
        if held is not None:
            self.raw.sendall(held)

    def _expire(self) -> NoReturn:
        self.close_after = True
        raise RequestTimeout(f"request not received within {self.timeout_s:g} s")

    def request_done(self) -> None:
        """The answer went out: wait for the next request without a deadline."""
        self.deadline = None
        self.received = False

    def release(self) -> None:
        """Leave the per-peer count (once)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def linger_close(sock: Any, timeout_s: float = 1.0, limit: int = 256 * 1024) -> None:
    """Half-close, read what the client still sends (bounded), then close.

    Closing a socket with unread input makes the kernel send a reset, and the client may then
    lose the answer just written (a 413 to a large upload, a 414 to a long request line).
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        while limit > 0 and time.monotonic() < deadline:
            data = sock.recv(min(65536, limit))
            if not data:
                break
            limit -= len(data)
    except OSError:
        pass
    finally:
        util.close(sock)


def _is_sized_head(data: bytes) -> bool:
    """Whether ``data`` is a complete answer head with a Content-Length (a body follows)."""
    return (data[:7] == b"HTTP/1." and data[-4:] == b"\r\n\r\n" and len(data) < 8192
            and b"\r\ncontent-length:" in data.lower())


def _has_body(environ: dict[str, Any]) -> bool:
    if environ.get("CONTENT_LENGTH", "") not in ("", "0"):
        return True
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _close_after(sock: ClientSocket, start_response: Callable[..., Any]) -> None:
    sock.close_after = True
    # gunicorn's start_response is its Response's method; force_close makes the answer say
    # "Connection: close" (gunicorn ignores that header when the application sets it).
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()


def _guarded(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if not isinstance(sock, ClientSocket):
            return app(environ, start_response)
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            # A session owns the real socket (no request deadline) and is not counted; a
            # refused upgrade is answered and closed, so it cannot dodge the count.
            _close_after(sock, start_response)
            sock.release()
            environ["gunicorn.socket"] = sock.raw
            try:
                return app(environ, start_response)
            except StopIteration:
                # The session ended (its close frame is written): let the client's close reply
                # and any unread input arrive, so the close is not cut short by a reset.
                linger_close(sock.raw)
                raise
        if not _has_body(environ):
            return app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status[:1] in ("4", "5"):
                _close_after(sock, start_response)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wsgi


class Worker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker with read deadlines, a per-peer cap and JSON error answers."""

    read_timeout_s: float = Settings.http_read_timeout_s
    peers = PeerCounts(0)

    def load_wsgi(self) -> None:
        from trade_canvas.runtime.boot import current_runtime

        super().load_wsgi()  # boots the runtime (get_app)
        runtime = current_runtime()
        settings = runtime.settings if runtime is not None else Settings()
        self.read_timeout_s = settings.http_read_timeout_s
        self.peers = PeerCounts(settings.max_connections_per_peer)
        self.wsgi = _guarded(self.wsgi)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        peer = str(addr[0]) if isinstance(addr, tuple) else ""
        if not self.peers.enter(peer):
            if self.peers.refused % 1000 == 1:  # a flood is logged, not every connection of it
                logger.warning("refused a connection from %s: %d open already "
                               "(TRADE_CANVAS_MAX_CONNECTIONS_PER_PEER; %d refused so far)",
                               peer, self.peers.limit, self.peers.refused)
            try:
                util.write_nonblock(client, _TOO_MANY_CONNECTIONS)
            except OSError:
                pass
            util.close(client)
            return
        sock = ClientSocket(client, self.read_timeout_s, lambda: self.peers.leave(peer))
        try:
            super().handle(listener, sock, addr)
        finally:
            sock.release()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        try:
            keep_alive: bool = super().handle_request(listener_name, req, sock, addr)
        finally:
            if isinstance(sock, ClientSocket):
                sock.flush()
        if isinstance(sock, ClientSocket):
            if sock.close_after:
                sock.release()  # answered: a lingering close holds no slot of the client's
                linger_close(sock.raw)
                raise StopIteration()  # gunicorn's way to close after the answer
            sock.request_done()
        return keep_alive

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, RequestTimeout) and not getattr(client, "received", True):
            util.close(client)  # a connection that never sent a byte: no answer, no log
            return
        status, detail = error_answer(exc)
        peer = addr[0] if isinstance(addr, tuple) else addr
        if status >= 500:
            logger.error("error reading a request from %s", peer, exc_info=exc)
        else:
            logger.info("bad request from %s: %s %s", peer, status, detail)
        try:
            util.write_nonblock(client, json_response(status, detail))
        except OSError:
            return
        if isinstance(client, ClientSocket):
            client.release()
        linger_close(getattr(client, "raw", client))
