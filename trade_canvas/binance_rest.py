"""Binance REST over HTTP: one client, one shared request-weight limiter per host, klines ranges.

Every REST caller (feed tail and gap fills, history fills, the ``backfill`` command, markets,
top markets) goes through the same ``RestLimiter`` of a host, so no feature can spend another's
budget or get the IP banned: requests wait for weight in the current minute, and a 429/418 with
Retry-After blocks the whole host until then. ``klines_range`` is the one place that pages
klines over a time range and retries a failed page.

This module does network I/O, so it is not part of the pure ``exchanges/`` package: the wire
format (request paths, response parsing, limits) stays in ``exchanges/binance.py`` and this
module only sends what the codec builds.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, TypeVar
from urllib.parse import urlsplit

from trade_canvas.candles import Candle
from trade_canvas.config import Settings, processes_per_ip
from trade_canvas.errors import TradeCanvasError, Unavailable, UpstreamError
from trade_canvas.exchanges import binance
from trade_canvas.series import SeriesId

logger = logging.getLogger(__name__)

USER_AGENT = "trade_canvas/0.1"
ATTEMPTS = 4  # tries of one klines page before the caller gets UpstreamError
MAX_RETRY_WAIT_S = 30.0
T = TypeVar("T")


class RateLimited(Unavailable):
    """The exchange asked us to back off (429/418) or the local budget is spent for too long."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RestLimiter:
    """Request weight budget per minute plus a ban clock, for one host.

    Binance counts weight per IP. With ``processes`` server processes behind one IP (cluster
    mode, ``TRADE_CANVAS_CLUSTER_PROCESSES_PER_IP``) each spends at most its share of the
    budget, so together they stay under it; the server's count of the IP's weight
    (``X-MBX-USED-WEIGHT-1M``) is held against the whole IP's budget, so a process never spends
    what the others (or another program on the IP) already used.
    """

    def __init__(
        self,
        weight_per_minute: int,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        headroom: float = 0.8,
        max_wait_s: float = 30.0,
        processes: int = 1,
    ) -> None:
        self.processes = max(1, processes)
        self.ip_budget = max(1, int(weight_per_minute * headroom))
        self.budget = max(1, self.ip_budget // self.processes)  # this process's share
        self.ip_used = 0  # the IP's weight this minute, as far as we know (ours included)
        self.clock = clock
        self.sleep = sleep
        self.max_wait_s = max_wait_s
        self.window = -1
        self.used = 0
        self.banned_until = 0.0
        self.requests = 0
        self.bans = 0
        self._lock = threading.Lock()

    def acquire(self, weight: int) -> None:
        """Wait until ``weight`` fits; raise RateLimited if that would take over ``max_wait_s``."""
        while True:
            with self._lock:
                now = self.clock()
                wait = self._wait_for(now, weight)
                if wait <= 0:
                    self.used += weight
                    self.ip_used += weight
                    self.requests += 1
                    return
            if wait > self.max_wait_s:
                raise RateLimited(f"rest budget exhausted; retry in {wait:.0f}s", wait)
            self.sleep(wait)

    def _wait_for(self, now: float, weight: int) -> float:
        if now < self.banned_until:
            return self.banned_until - now
        minute = int(now // 60)
        if minute != self.window:
            self.window, self.used, self.ip_used = minute, 0, 0
        fits = self.used + weight <= self.budget and self.ip_used + weight <= self.ip_budget
        if fits or self.used == 0:
            return 0.0
        return (minute + 1) * 60 - now

    def observe_used_weight(self, used: int) -> None:
        """Adopt the server's count of the IP's weight this minute (X-MBX-USED-WEIGHT-1M).

        With one process per IP that count is this process's too (other programs on the IP
        spend our budget); with several, it is held against the IP's budget only.
        """
        with self._lock:
            self.ip_used = max(self.ip_used, used)
            if self.processes == 1:
                self.used = max(self.used, used)

    def ban(self, seconds: float) -> None:
        """Refuse every request to this host for ``seconds``."""
        with self._lock:
            self.banned_until = max(self.banned_until, self.clock() + seconds)
            self.bans += 1

    def snapshot(self) -> dict[str, float | int]:
        """Return counters for the status endpoint."""
        with self._lock:
            return {"budget_per_minute": self.budget, "used_this_minute": self.used,
                    "ip_budget_per_minute": self.ip_budget, "ip_used_this_minute": self.ip_used,
                    "processes_per_ip": self.processes,
                    "banned_for_s": max(0.0, round(self.banned_until - self.clock(), 1)),
                    "requests": self.requests, "bans": self.bans}


class BinanceRest:
    """GET requests to Binance spot/futures REST, limited per host."""

    def __init__(
        self, base_urls: dict[str, str], timeout_s: float = 10.0, processes_per_ip: int = 1
    ) -> None:
        """Build a client for ``{market: base url}``; one limiter per distinct host.

        ``processes_per_ip``: processes sharing the IP's budgets; each limiter spends a share.
        """
        self.base_urls = base_urls
        self.timeout_s = timeout_s
        self.limiters: dict[str, RestLimiter] = {}
        for market, url in base_urls.items():
            host = urlsplit(url).netloc
            limits = binance.limits_for(market)
            if host not in self.limiters:
                self.limiters[host] = RestLimiter(limits.request_weight_per_minute,
                                                  processes=processes_per_ip)

    @classmethod
    def from_settings(cls, settings: Settings) -> BinanceRest:
        """Build the client of the configured spot and futures base URLs."""
        return cls({"spot": settings.binance_spot_base_url,
                    "futures": settings.binance_futures_base_url},
                   timeout_s=settings.binance_rest_timeout_s,
                   processes_per_ip=processes_per_ip(settings))

    def limiter(self, market: str) -> RestLimiter:
        """Return the limiter of a market's host."""
        return self.limiters[urlsplit(self.base_urls[market]).netloc]

    def get(self, market: str, request: binance.RestRequest) -> bytes:
        """Send one GET; returns the body.

        Raises:
            RateLimited: 429/418 (the host is then paused for Retry-After) or budget exhausted.
            UpstreamError: network failure, 4xx/5xx.
        """
        limiter = self.limiter(market)
        limiter.acquire(request.weight)
        url = self.base_urls[market] + request.path_with_query
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                used = resp.headers.get("X-MBX-USED-WEIGHT-1M")
                if used and used.isdigit():
                    limiter.observe_used_weight(int(used))
                return bytes(resp.read())
        except urllib.error.HTTPError as err:
            raise self._http_error(limiter, request, err) from None
        except (urllib.error.URLError, OSError) as exc:
            raise UpstreamError(f"{request.path}: {exc}") from None

    def _http_error(
        self, limiter: RestLimiter, request: binance.RestRequest, err: urllib.error.HTTPError
    ) -> Exception:
        body = err.read()
        if err.code in (418, 429):
            retry = _retry_after(err.headers.get("Retry-After"), 120.0 if err.code == 418 else 10.0)
            limiter.ban(retry)
            logger.warning("binance answered %d on %s; pausing the host for %.0fs",
                           err.code, request.path, retry)
            return RateLimited(f"binance rate limit ({err.code}); retry in {retry:.0f}s", retry)
        error = binance.parse_error_body(body)
        detail = f"{error.code} {error.msg}" if error else body[:200].decode(errors="replace")
        return UpstreamError(f"{request.path}: HTTP {err.code}: {detail}")

    def klines(
        self, market: str, symbol: str, interval: str,
        start_ms: int | None = None, end_ms: int | None = None, limit: int | None = None,
    ) -> list[Candle]:
        """Fetch one page of klines (open-time inclusive bounds)."""
        request = binance.klines_request(market, symbol, interval, start_ms, end_ms, limit)
        return binance.parse_klines(self.get(market, request))

    def klines_range(
        self, series: SeriesId, start: int, end: int, *, limit: int | None = None,
        attempts: int = ATTEMPTS, on_error: Callable[[Exception], None] = lambda exc: None,
    ) -> list[Candle]:
        """Fetch the candles of a Binance series with open times in ``[start, end]``.

        Pages forward from ``start`` (``limit`` rows a request, the market's maximum by
        default) until ``end`` or a short page; each page is retried with backoff.

        Raises:
            UpstreamError: a page failed ``attempts`` times (``on_error`` saw each failure).
        """
        market, symbol = series.market, binance.to_binance_symbol(series.symbol)
        interval = binance.check_interval(series.timeframe)
        limit = limit or binance.limits_for(market).klines_max_limit
        what = f"klines {market} {symbol} {interval}"
        result: list[Candle] = []
        cursor = start
        while cursor <= end:
            page = retrying(
                lambda: self.klines(market, symbol, interval, cursor * 1000, end * 1000, limit),
                f"{what} {cursor}..{end}", attempts, on_error)
            result.extend(c for c in page if start <= c.candle_time <= end)
            if len(page) < limit:
                break  # Binance sends a full page unless the range has no more rows
            cursor = series.timeframe.next_open(page[-1].candle_time)
        return result


def retrying(
    call: Callable[[], T], what: str, attempts: int = ATTEMPTS,
    on_error: Callable[[Exception], None] = lambda exc: None,
) -> T:
    """Run a REST call, waiting out rate limits and backing off on upstream errors.

    Raises:
        UpstreamError: the call failed ``attempts`` times.
    """
    reason: Exception = UpstreamError("no attempt")
    for attempt in range(attempts):
        try:
            return call()
        except RateLimited as exc:
            wait, reason = exc.retry_after_s, exc
        except TradeCanvasError as exc:
            wait, reason = 0.5 * 2**attempt, exc
        on_error(reason)
        if attempt < attempts - 1:
            logger.warning("%s failed (attempt %d: %s); retrying in %.1fs", what, attempt + 1,
                           reason, wait)
            time.sleep(min(wait, MAX_RETRY_WAIT_S))
    raise UpstreamError(f"exchange unreachable: {what} failed {attempts} times ({reason})")


def _retry_after(value: str | None, default: float) -> float:
    try:
        return max(1.0, float(value)) if value else default
    except ValueError:
        return default
