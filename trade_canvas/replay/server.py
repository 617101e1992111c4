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

WebSocket upgrades are handed to ``streams.py``, which runs each stream connection.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

import gevent
import orjson
from gevent import pywsgi

from trade_canvas.errors import InvalidInput
from trade_canvas.exchanges.binance import KLINE_INTERVALS, limits_for
from trade_canvas.replay import market as mk
from trade_canvas.replay.faults import RestFault, parse_rest_fault, parse_ws_fault
from trade_canvas.replay.streams import StreamSession, run_websocket

MARKET_PREFIXES = ("spot", "futures")
REST_PREFIX = {"spot": "/api/v3", "futures": "/fapi/v1"}
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


def load_market(
    anchor_ms: int, synthesize_listed: bool = False, futures_from_spot: tuple[str, ...] = ()
) -> mk.ReplayMarket:
    """Load the packaged recordings, rebased so every symbol starts on ``anchor_ms``'s day.

    With ``synthesize_listed`` every listed TRADING symbol without a recording replays a
    synthetic path derived from a recorded one (see ``market.synthesize_listed``). Each symbol
    in ``futures_from_spot`` (e.g. ``BTCUSDT``) also trades on USD-M futures with its spot
    recording, so the chart app's default series ``binance:futures:BTC/USDT:1m`` is live.
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
    datasets += [dataclasses.replace(d, market="futures") for d in datasets
                 if d.market == "spot" and d.symbol in futures_from_spot]
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
        "--futures-from-spot", default="", metavar="SYMBOLS",
        help="comma-separated spot recordings (e.g. BTCUSDT) also served on USD-M futures",
    )
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
    mirrored = tuple(s.strip().upper() for s in args.futures_from_spot.split(",") if s.strip())
    state = ReplayState(load_market(anchor, args.synthesize_listed, mirrored), clock, clock)
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
