"""Settings: one frozen object built from the environment by ``load_settings``.

Variable names are the earlier backend's runbook names, so existing env files keep working.
Unlike the original, a bad value is never silently replaced by a default: the boot stops with
one message naming every bad variable.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from trade_canvas.errors import ConfigError
from trade_canvas.series import parse_series_id

PREFIX = "TRADE_CANVAS_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _int(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}")
        return value

    return parse


def _float(minimum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum:g}")
        return value

    return parse


def _str(text: str) -> str:
    return text.strip()


def _url(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("http://", "https://", "ws://", "wss://")):
        raise ValueError("expected an http(s):// or ws(s):// URL")
    return value


def _origins(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in {"text", "json"}:
        raise ValueError("expected text or json")
    return value


def _schema(text: str) -> str:
    value = text.strip()
    if not value or not (value[0].isalpha() or value[0] == "_") or not all(
        ch.isalnum() or ch == "_" for ch in value
    ):
        raise ValueError("expected an identifier matching ^[A-Za-z_][A-Za-z0-9_]*$")
    return value


def _token(text: str) -> str:
    value = text.strip()
    if value and len(value) < 16:
        raise ValueError("must be at least 16 characters (or empty: no token)")
    if any(not "!" <= ch <= "~" for ch in value):
        raise ValueError("must be printable ASCII without blanks")
    return value


def _hosts(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def _header_name(text: str) -> str:
    value = text.strip()
    if value and not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in value):
        raise ValueError("expected an HTTP header name such as X-Forwarded-For")
    return value


def setting(
    name: str, parse: Callable[[str], Any], default: Any, doc: str, *, secret: bool = False
) -> Any:
    """Declare a field read from ``TRADE_CANVAS_<name>``; a secret is never shown."""
    return field(default=default, repr=not secret,
                 metadata={"env": PREFIX + name, "parse": parse, "doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Every setting of the process; defaults sit beside their fields."""

    # -- core
    db_path: str = setting("DB_PATH", _str, "data/market.db",
                           "SQLite file of the embedded store (created if missing)")
    whitelist_path: str = setting("WHITELIST_PATH", _str, "config/market_whitelist.json",
                                  "JSON file `{\"series_ids\": [...]}` of pinned series")
    cors_origins: tuple[str, ...] = setting(
        "CORS_ORIGINS", _origins, ("http://localhost:5173", "http://127.0.0.1:5173"),
        "comma-separated origins allowed by CORS")
    market_ws_catchup_limit: int = setting("MARKET_WS_CATCHUP_LIMIT", _int(100, 20000), 5000,
                                           "most candles replayed to a new WebSocket subscriber")
    enable_debug_api: bool = setting("ENABLE_DEBUG_API", _bool, False,
                                     "forming-candle ingest and debug routes")
    enable_dev_api: bool = setting("ENABLE_DEV_API", _bool, False, "/api/dev/* routes")
    market_forming_min_interval_ms: int = setting(
        "MARKET_FORMING_MIN_INTERVAL_MS", _int(0), 250,
        "least time between two forming updates of one candle sent to subscribers")
    ws_send_queue_max: int = setting(
        "WS_SEND_QUEUE_MAX", _int(1), 1000,
        "messages a WebSocket client may fall behind before it is dropped as slow_consumer")
    ws_send_buffer_mb: int = setting(
        "WS_SEND_BUFFER_MB", _int(1, 4096), 8,
        "MiB a WebSocket client may have pending (catch-ups included) before it is dropped as "
        "slow_consumer; a subscribe whose catch-up does not fit is refused (rate_limited)")
    ws_write_timeout_s: float = setting(
        "WS_WRITE_TIMEOUT_S", _float(0.1), 10.0,
        "a write to a WebSocket client that takes longer drops the client")
    ws_max_subscriptions: int = setting(
        "WS_MAX_SUBSCRIPTIONS", _int(1, 100_000), 200,
        "series one WebSocket connection may follow at once; also its subscribe burst")
    ws_subscribes_per_s: float = setting(
        "WS_SUBSCRIBES_PER_S", _float(0.1), 20.0,
        "subscribes per second one connection may sustain after its burst; more get rate_limited")
    series_idle_ttl_s: float = setting(
        "SERIES_IDLE_TTL_S", _float(0.1), 300.0,
        "a series' actors stop after this long with no subscriber, no feed and no write")
    max_series: int = setting(
        "MAX_SERIES", _int(0), 2000,
        "series with running actors at once (0 = unlimited); past it, new series answer 503")
    read_cache_mb: int = setting("READ_CACHE_MB", _int(0, 4096), 64,
                                 "memory for encoded candle-read responses (0 disables the cache)")
    log_level: str = setting("LOG_LEVEL", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting("LOG_FORMAT", _log_format, "text",
                              "text (one escaped line per event) or json (one JSON object a line)")
    ingest_timeout_s: float = setting("INGEST_TIMEOUT_S", _float(0.1), 10.0,
                                      "how long an HTTP write waits for the store actor")
    # -- security and limits (README "Security")
    api_token: str = setting(
        "API_TOKEN", _token, "",
        "when set, writes, runs, debug routes and WebSockets need `Authorization: Bearer <token>`",
        secret=True)
    api_token_reads: bool = setting(
        "API_TOKEN_READS", _bool, False,
        "reads need the token too (except /api/health and /api/ready)")
    allow_unauthenticated: bool = setting(
        "ALLOW_UNAUTHENTICATED", _bool, False,
        "serve on a non-loopback address without API_TOKEN (logged as a warning)")
    allowed_hosts: tuple[str, ...] = setting(
        "ALLOWED_HOSTS", _hosts, (),
        "comma-separated Host names accepted on a loopback bind besides localhost and loopback IPs")
    trusted_proxy_header: str = setting(
        "TRUSTED_PROXY_HEADER", _header_name, "",
        "header naming the client behind your reverse proxy (e.g. X-Forwarded-For; last entry)")
    write_rate_per_s: float = setting(
        "WRITE_RATE_PER_S", _float(0.0), 20000.0,
        "write requests per second one client may make (token bucket; 0 = no limit)")
    write_burst: int = setting("WRITE_BURST", _int(1), 20000,
                               "write requests one client may make at once above the rate")
    max_connections_per_peer: int = setting(
        "MAX_CONNECTIONS_PER_PEER", _int(0), 256,
        "HTTP connections one address may hold (WebSocket sessions excluded; 0 = no cap)")
    http_read_timeout_s: float = setting(
        "HTTP_READ_TIMEOUT_S", _float(0.5), 30.0,
        "seconds a client has to send a whole request (headers and body)")
    # -- chart app reads: health lamp, debug tab, replay packages
    enable_kline_health_v2: bool = setting(
        "ENABLE_KLINE_HEALTH_V2", _bool, False,
        "GET /api/market/health (the chart's K-line lamp); the debug API also opens it")
    kline_health_backfill_recent_seconds: int = setting(
        "KLINE_HEALTH_BACKFILL_RECENT_SECONDS", _int(5), 120,
        "a history fill this recent shows the lamp yellow (backfill_recent) instead of red")
    enable_runtime_metrics: bool = setting(
        "ENABLE_RUNTIME_METRICS", _bool, False,
        "GET /api/market/debug/metrics (with the debug API)")
    debug_event_buffer: int = setting(
        "DEBUG_EVENT_BUFFER", _int(10, 100_000), 2000,
        "recent backend events kept for WS /ws/debug (debug API)")
    enable_replay_v1: bool = setting("ENABLE_REPLAY_V1", _bool, True,
                                     "replay package routes /api/replay/* (prepare is always on)")
    enable_replay_ensure_coverage: bool = setting(
        "ENABLE_REPLAY_ENSURE_COVERAGE", _bool, True,
        "POST /api/replay/ensure_coverage fetches missing history over REST")
    artifacts_dir: str = setting(
        "ARTIFACTS_DIR", _str, "data/artifacts",
        "directory of the replay package cache (replay_package_v1/<key>/)")
    replay_max_builds: int = setting("REPLAY_MAX_BUILDS", _int(1, 16), 2,
                                     "replay packages built at once; more wait in turn")
    replay_cache_mb: int = setting("REPLAY_CACHE_MB", _int(1, 100_000), 512,
                                   "disk kept for replay packages; the oldest are deleted first")
    replay_cache_ttl_s: int = setting("REPLAY_CACHE_TTL_S", _int(60), 86400,
                                      "replay packages older than this are deleted")
    # -- live feed (Binance)
    enable_whitelist_ingest: bool = setting(
        "ENABLE_WHITELIST_INGEST", _bool, False, "follow the whitelist series live (pinned)")
    enable_ondemand_ingest: bool = setting(
        "ENABLE_ONDEMAND_INGEST", _bool, False, "a WebSocket subscribe starts following the series")
    ondemand_idle_ttl_s: int = setting("ONDEMAND_IDLE_TTL_S", _int(1), 60,
                                       "seconds an unsubscribed on-demand feed lives on")
    ondemand_max_jobs: int = setting("ONDEMAND_MAX_JOBS", _int(0), 8,
                                     "most on-demand feeds at once (0 = unlimited)")
    binance_spot_base_url: str = setting("BINANCE_SPOT_BASE_URL", _url, "https://api.binance.com",
                                         "Binance spot REST base URL")
    binance_futures_base_url: str = setting(
        "BINANCE_FUTURES_BASE_URL", _url, "https://fapi.binance.com",
        "Binance USD-M futures REST base URL")
    binance_spot_ws_url: str = setting("BINANCE_SPOT_WS_URL", _url, "wss://stream.binance.com:9443",
                                       "Binance spot WebSocket base URL")
    binance_futures_ws_url: str = setting("BINANCE_FUTURES_WS_URL", _url, "wss://fstream.binance.com",
                                          "Binance USD-M futures WebSocket base URL")
    market_auto_tail_backfill_max_candles: int = setting(
        "MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES", _int(1, 100_000), 2000,
        "closed candles fetched over REST when a feed starts or reconnects")
    binance_ws_silence_timeout_s: float = setting(
        "BINANCE_WS_SILENCE_TIMEOUT_S", _float(1.0), 30.0,
        "reconnect a stream connection that sent no frame for this long")
    binance_ws_streams_per_connection: int = setting(
        "BINANCE_WS_STREAMS_PER_CONNECTION", _int(1, 1024), 200,
        "streams multiplexed on one connection (Binance allows 1024 spot, 200 futures)")
    binance_rest_timeout_s: float = setting("BINANCE_REST_TIMEOUT_S", _float(0.5), 10.0,
                                            "timeout of one REST request")
    # -- top markets
    binance_exchangeinfo_ttl_s: float = setting(
        "BINANCE_EXCHANGEINFO_TTL_S", _float(1.0), 3600.0,
        "seconds a market's exchangeInfo is reused by /api/market/top_markets")
    binance_ticker_ttl_s: float = setting(
        "BINANCE_TICKER_TTL_S", _float(1.0), 10.0,
        "seconds a market's 24h tickers are reused by /api/market/top_markets (and its stream)")
    # -- postgres
    enable_pg_store: bool = setting("ENABLE_PG_STORE", _bool, False,
                                    "store candles in Postgres instead of SQLite")
    postgres_dsn: str = setting("POSTGRES_DSN", _str, "", "libpq DSN, e.g. postgresql://u@host/db")
    postgres_schema: str = setting("POSTGRES_SCHEMA", _schema, "public", "schema for our tables")
    postgres_connect_timeout_s: float = setting("POSTGRES_CONNECT_TIMEOUT_S", _float(0.1), 5.0,
                                                "connect timeout")
    postgres_pool_min_size: int = setting("POSTGRES_POOL_MIN_SIZE", _int(0), 1, "pool minimum")
    postgres_pool_max_size: int = setting("POSTGRES_POOL_MAX_SIZE", _int(1), 10, "pool maximum")
    # -- many processes on one Postgres (README "Running several processes")
    workers: int = setting(
        "WORKERS", _int(1, 64), 1,
        "server processes (gunicorn workers); more than 1 needs the Postgres store and turns "
        "cluster mode on")
    cluster: bool = setting(
        "CLUSTER", _bool, False,
        "cluster mode on the Postgres store (series leases, cross-process fan-out), for several "
        "servers on one database; WORKERS>1 turns it on too")
    postgres_listen_dsn: str = setting(
        "POSTGRES_LISTEN_DSN", _str, "",
        "cluster mode: a direct (session) DSN for the notification listener and the lease "
        "control connection, when POSTGRES_DSN goes through a transaction-mode pooler such as "
        "PgBouncer (empty: POSTGRES_DSN)", secret=True)
    cluster_node_name: str = setting(
        "CLUSTER_NODE_NAME", _str, "",
        "this process's name in /api/runtime/cluster (empty: host:pid)")
    cluster_tick_s: float = setting(
        "CLUSTER_TICK_S", _float(0.05), 0.5,
        "seconds between two lease renewals (heartbeat, renew, reap, claim)")
    cluster_lease_ttl_s: float = setting(
        "CLUSTER_LEASE_TTL_S", _float(0.2), 3.0,
        "a series lease not renewed for this long may be claimed by another process "
        "(at least 4 ticks); the owner stops its feeds one tick earlier")
    cluster_resync_s: float = setting(
        "CLUSTER_RESYNC_S", _float(0.1), 2.0,
        "seconds between two checks of every followed series' write sequence (repairs lost "
        "notifications)")
    cluster_processes_per_ip: int = setting(
        "CLUSTER_PROCESSES_PER_IP", _int(0, 1024), 0,
        "server processes sharing this host's public IP: Binance's per-IP REST weight and "
        "connection budgets are divided by it (0: WORKERS in cluster mode, else 1)")
    # -- factors
    factor_pivot_window_major: int = setting(
        "PIVOT_WINDOW_MAJOR", _int(1), 50, "major pivot half-window, in candles")
    factor_pivot_window_minor: int = setting(
        "PIVOT_WINDOW_MINOR", _int(1), 5, "minor pivot half-window, in candles")
    enable_factor_fingerprint_rebuild: bool = setting(
        "ENABLE_FACTOR_FINGERPRINT_REBUILD", _bool, True,
        "recompute a series' factors when their logic or parameters changed")
    factor_rebuild_keep_candles: int = setting(
        "FACTOR_REBUILD_KEEP_CANDLES", _int(100), 2000,
        "newest stored candles a rebuild recomputes from (candles are never deleted)")
    factor_logic_version: str = setting(
        "FACTOR_LOGIC_VERSION", _str, "", "free text mixed into the fingerprint; change to rebuild")
    factor_coalesce_ms: int = setting(
        "FACTOR_COALESCE_MS", _int(0, 1000), 10,
        "least time between two factor folds of one series; candles arriving sooner are folded "
        "together (0: fold every write at once)")
    # -- backtest (freqtrade); relative paths resolve against FREQTRADE_ROOT at boot
    freqtrade_root: str = setting(
        "FREQTRADE_ROOT", _str, ".",
        "base of the relative freqtrade paths and the child's working directory "
        "(default: the server's working directory, the repository root under dev_backend.sh)")
    freqtrade_config: str = setting("FREQTRADE_CONFIG", _str, "freqtrade_user_data/config.json",
                                    "base freqtrade config a backtest's minimal config starts from")
    freqtrade_userdir: str = setting("FREQTRADE_USERDIR", _str, "freqtrade_user_data",
                                     "freqtrade user directory (strategies/, data/, results)")
    freqtrade_datadir: str = setting(
        "FREQTRADE_DATADIR", _str, "",
        "candle files; empty: the config's datadir, else <userdir>/data (must be in the userdir)")
    freqtrade_bin: str = setting(
        "FREQTRADE_BIN", _str, "freqtrade",
        "freqtrade executable: runs backtests when offline markets are off; shown in hints")
    freqtrade_strategy_path: str = setting(
        "FREQTRADE_STRATEGY_PATH", _str, "",
        "extra strategy directory; empty: freqtrade's <userdir>/strategies only")
    freqtrade_offline_markets: bool = setting(
        "FREQTRADE_OFFLINE_MARKETS", _bool, True,
        "run freqtrade with synthesized Binance markets, never touching the network")
    freqtrade_subprocess_timeout_s: float = setting(
        "FREQTRADE_SUBPROCESS_TIMEOUT_S", _float(0.1), 120.0,
        "a freqtrade child still running after this long is killed (with its process group)")
    backtest_require_trades: bool = setting(
        "BACKTEST_REQUIRE_TRADES", _bool, False, "a backtest without trades answers 422 no_trades")
    backtest_max_concurrent: int = setting("BACKTEST_MAX_CONCURRENT", _int(1, 64), 1,
                                           "freqtrade backtests running at once")
    backtest_queue_size: int = setting(
        "BACKTEST_QUEUE_SIZE", _int(0, 1000), 4,
        "backtests waiting for a slot; one more answers 429 (0: refuse while all slots run)")
    backtest_fetch_missing: bool = setting(
        "BACKTEST_FETCH_MISSING", _bool, False,
        "a run over a timerange first fetches the closed candles the store lacks over REST")
    backtest_keep_results: int = setting("BACKTEST_KEEP_RESULTS", _int(1, 1000), 50,
                                         "finished backtests kept in the store for the results API")

    def env_name(self, field_name: str) -> str:
        """Return the variable that sets ``field_name``."""
        return str(Settings.__dataclass_fields__[field_name].metadata["env"])


def known_names() -> list[str]:
    """Return every recognised ``TRADE_CANVAS_*`` variable name."""
    return [f.metadata["env"] for f in fields(Settings)]


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from ``environ``.

    Raises:
        ConfigError: listing every variable with a bad value.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        name = f.metadata["env"]
        if name not in environ:
            continue
        try:
            values[f.name] = f.metadata["parse"](environ[name])
        except ValueError as exc:
            shown = "***" if f.metadata["secret"] else repr(environ[name])
            problems.append(f"{name}={shown}: {exc}")
    settings = Settings(**values)
    if settings.enable_pg_store and not settings.postgres_dsn:
        problems.append("TRADE_CANVAS_POSTGRES_DSN: required when TRADE_CANVAS_ENABLE_PG_STORE=1")
    problems += cluster_problems(settings)
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return settings


def session_dsn(settings: Settings) -> str:
    """Return the DSN of cluster mode's session connections (listener, lease control)."""
    return settings.postgres_listen_dsn or settings.postgres_dsn


def cluster_mode(settings: Settings) -> bool:
    """Whether this process shares its series with others (leases and cross-process fan-out)."""
    return settings.enable_pg_store and (settings.cluster or settings.workers > 1)


def processes_per_ip(settings: Settings) -> int:
    """Return how many processes share this one's per-IP Binance budgets (at least 1)."""
    if settings.cluster_processes_per_ip:
        return settings.cluster_processes_per_ip
    return settings.workers if cluster_mode(settings) else 1


def cluster_problems(settings: Settings) -> list[str]:
    """Return why the cluster settings cannot run (empty when they can)."""
    problems = []
    if settings.workers > 1 and not settings.enable_pg_store:
        problems.append(
            f"TRADE_CANVAS_WORKERS={settings.workers} needs TRADE_CANVAS_ENABLE_PG_STORE=1: "
            "the SQLite store serves one process")
    if settings.cluster and not settings.enable_pg_store:
        problems.append("TRADE_CANVAS_CLUSTER=1 needs TRADE_CANVAS_ENABLE_PG_STORE=1: the SQLite "
                        "store serves one process")
    if settings.cluster_lease_ttl_s < 4 * settings.cluster_tick_s:
        problems.append(
            f"TRADE_CANVAS_CLUSTER_LEASE_TTL_S={settings.cluster_lease_ttl_s:g}: must be at least "
            f"4 x TRADE_CANVAS_CLUSTER_TICK_S ({4 * settings.cluster_tick_s:g})")
    return problems


def unknown_names(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Return ``(name, closest known name)`` for each unrecognised TRADE_CANVAS_* variable."""
    known = known_names()
    extra = set(IGNORED_NAMES)
    result = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in known and name not in extra:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            result.append((name, close[0] if close else None))
    return result


# Variables our own tooling reads outside the server process.
IGNORED_NAMES = (
    "TRADE_CANVAS_TEST_POSTGRES_DSN",
    "TRADE_CANVAS_DEMO_EXCHANGE_PORT",
    "TRADE_CANVAS_DEMO_WHITELIST_PATH",
    "TRADE_CANVAS_DEMO_DB_PATH",
)


@functools.lru_cache(maxsize=1024)  # asked on every request, with few distinct names
@functools.lru_cache(maxsize=256)  # asked twice per request with the same few names
def is_loopback(name: str) -> bool:
    """Whether a host name or address (as bound, or as a Host header names it) is loopback."""
    name = name.strip().lower().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def load_whitelist(path: str) -> tuple[str, ...]:
    """Read the whitelist file; a missing file is an empty whitelist.

    Raises:
        ConfigError: unreadable JSON, wrong shape, or an invalid series id.
    """
    if not os.path.exists(path):
        return ()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"TRADE_CANVAS_WHITELIST_PATH={path}: cannot read: {exc}") from exc
    items = data.get("series_ids") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f"TRADE_CANVAS_WHITELIST_PATH={path}: expected {{\"series_ids\": [...]}}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"TRADE_CANVAS_WHITELIST_PATH={path}: bad entry {item!r}")
        try:
            text = parse_series_id(item).text
        except Exception as exc:
            raise ConfigError(f"TRADE_CANVAS_WHITELIST_PATH={path}: {exc}") from exc
        if text not in result:
            result.append(text)
    return tuple(result)
