"""Who may call what: the API token, the Host and Origin checks, and the per-client write rate.

One ``Access`` policy is applied to WSGI environs, so HTTP requests (``AccessMiddleware``, after
the CORS layer has answered preflights) and WebSocket upgrades (``dispatch_websockets``) are
judged by the same rules:

- Host: a server listening on a loopback address answers only requests whose Host is
  ``localhost``, a loopback IP or one of TRADE_CANVAS_ALLOWED_HOSTS (421 otherwise). A web page
  that rebinds its own DNS name to 127.0.0.1 still sends its own name, so it is refused.
- Origin: writes and WebSocket upgrades that carry an ``Origin`` must come from a configured
  CORS origin or from the server's own origin (403 otherwise); clients that send no Origin
  (scripts, curl, other servers) are not browsers and pass. Browsers enforce CORS on reads.
- Token: with TRADE_CANVAS_API_TOKEN set, writes, runs, debug routes and WebSocket upgrades
  (and reads too with TRADE_CANVAS_API_TOKEN_READS) need ``Authorization: Bearer <token>``;
  GET requests and upgrades may pass ``?token=`` instead, for browsers' WebSocket and
  EventSource, which cannot set headers. Compared in constant time (401 otherwise).
- Rate: every client has a token bucket for writes (429 with Retry-After when empty), keyed on
  its address, or on TRADE_CANVAS_TRUSTED_PROXY_HEADER's last entry behind a reverse proxy.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit

import falcon

from trade_canvas.config import Settings, is_loopback
from trade_canvas.http.errors import DetailError

OPEN_PATHS = frozenset({"/api/health", "/api/ready"})  # probes never need the token
FORCED_PATHS = frozenset({"/api/market/top_markets"})  # ?force=1 makes these a write
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TRUE = frozenset({"1", "true", "yes", "on"})


def host_name(host: str) -> str:
    """Return the name part of a Host header value (no port, no IPv6 brackets), lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_write(method: str, path: str, query_string: str) -> bool:
    """Whether a request changes state or starts work: writes, and ``?force=1`` reads."""
    if method in WRITE_METHODS:
        return True
    if path in FORCED_PATHS:
        force = parse_qs(query_string).get("force", [""])[-1]
        return force.strip().lower() in _TRUE
    return False


class RateLimiter:
    """Token buckets per client: ``rate`` requests per second, ``burst`` at once.

    Idle clients are forgotten once more than ``max_clients`` are tracked (a refilled bucket
    holds no state worth keeping), so the table cannot grow without bound.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, updated at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Spend one token; return 0.0, or the seconds until one is available (nothing spent)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, updated = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - updated) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_clients:
                self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        if len(self._buckets) > self.max_clients:
            self._buckets.clear()  # a flood of distinct clients: start everyone afresh


class Access:
    """The access policy of one process, judged on WSGI environs."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.token_digest = _digest(settings.api_token) if settings.api_token else None
        self.token_reads = settings.api_token_reads
        self.origins = frozenset(settings.cors_origins)
        self.allowed_hosts = frozenset(settings.allowed_hosts)
        header = settings.trusted_proxy_header
        self.proxy_key = "HTTP_" + header.upper().replace("-", "_") if header else None
        self.limiter = RateLimiter(settings.write_rate_per_s, settings.write_burst, clock)

    def client(self, environ: Mapping[str, Any]) -> str:
        """Return the key that identifies the client of a request."""
        if self.proxy_key is not None:
            entries = [e.strip() for e in str(environ.get(self.proxy_key, "")).split(",")]
            entries = [e for e in entries if e]
            if entries:
                return entries[-1]  # the one our own proxy appended
        return str(environ.get("REMOTE_ADDR") or "")

    def check(self, environ: Mapping[str, Any], *, write: bool, websocket: bool = False) -> None:
        """Raise the error a request gets, or return if it may proceed.

        Raises:
            DetailError: 421 wrong Host, 403 foreign Origin, 401 missing or wrong token,
                429 write rate exceeded.
        """
        self._check_host(environ)
        if write or websocket:
            self._check_origin(environ)
        path = str(environ.get("PATH_INFO", "")).rstrip("/")
        if self.token_digest is not None and (
            write or websocket or (self.token_reads and path not in OPEN_PATHS)
        ):
            query_allowed = websocket or environ.get("REQUEST_METHOD") == "GET"
            self._check_token(environ, query_allowed=query_allowed)
        if write:
            wait = self.limiter.take(self.client(environ))
            if wait > 0:
                raise DetailError(429, "too many write requests; retry later",
                                  headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def _check_host(self, environ: Mapping[str, Any]) -> None:
        # SERVER_NAME is the address the server listens on (gunicorn fills it from the socket).
        if not is_loopback(str(environ.get("SERVER_NAME", ""))):
            return
        host = environ.get("HTTP_HOST")
        if host is None:
            return  # HTTP/1.0 without Host: not a browser
        name = host_name(str(host))
        if not (is_loopback(name) or name in self.allowed_hosts):
            raise DetailError(421, f"host not allowed: {str(host)[:100]!r}; a server on a "
                                   "loopback address answers localhost, loopback addresses and "
                                   "TRADE_CANVAS_ALLOWED_HOSTS")

    def _check_origin(self, environ: Mapping[str, Any]) -> None:
        origin = environ.get("HTTP_ORIGIN")
        if origin is None or origin in self.origins:
            return
        host = str(environ.get("HTTP_HOST", "")).strip().lower()
        if host and urlsplit(str(origin)).netloc.lower() == host:
            return  # same origin: the page was served by this server (or its proxy)
        raise DetailError(403, f"origin not allowed: {str(origin)[:100]!r} (see "
                               "TRADE_CANVAS_CORS_ORIGINS)")

    def _check_token(self, environ: Mapping[str, Any], *, query_allowed: bool) -> None:
        assert self.token_digest is not None
        given = None
        scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            given = value.strip()
        elif query_allowed:
            given = parse_qs(str(environ.get("QUERY_STRING", ""))).get("token", [None])[-1]
        if given is None or not hmac.compare_digest(_digest(given), self.token_digest):
            raise DetailError(401, "missing or wrong API token (Authorization: Bearer <token>)",
                              headers={"WWW-Authenticate": "Bearer"})


def _digest(token: str) -> bytes:
    # Comparing digests keeps the comparison's time independent of the token's length too.
    return hashlib.sha256(token.encode()).digest()


class AccessMiddleware:
    """Falcon middleware applying ``Access`` to every routed request."""

    def __init__(self, access: Access) -> None:
        self.access = access

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.client = self.access.client(req.env)
        self.access.check(req.env, write=is_write(req.method, req.path, req.query_string))
