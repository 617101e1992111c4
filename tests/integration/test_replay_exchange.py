"""The replay exchange as a subprocess: REST, streams, the clock and every fault kind.

The clock starts paused; tests move it with ``advance_ms`` so frame sequences are exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import websocket

from trade_canvas.exchanges import binance, binance_markets
from trade_canvas.exchanges.binance import ErrorFrame, KlineUpdate, MalformedFrame, SubscriptionAck

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_577_923_200_000  # default start: anchor 2020-01-01 + one day of history
MINUTE = 60_000


class Replay:
    """A running ``python -m trade_canvas.replay`` and small clients for it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trade_canvas.replay", "--port", "0", "--paused"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert "listening on http://" in line, line
        self.base = line.strip().rsplit(" ", 1)[-1]
        self.ws_base = self.base.replace("http://", "ws://")

    def get(self, path: str) -> tuple[int, Any, dict[str, str]]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())

    def state(self) -> Any:
        return self.get("/_replay/state")[1]

    def advance(self, ms: int) -> None:
        self.post("/_replay/clock", {"advance_ms": ms})

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def receive(ws: websocket.WebSocket, count: int, timeout: float = 3.0) -> list[str]:
    ws.settimeout(timeout)
    return [ws.recv() for _ in range(count)]


def nothing_more(ws: websocket.WebSocket, wait: float = 0.3) -> bool:
    ws.settimeout(wait)
    try:
        ws.recv()
    except websocket.WebSocketTimeoutException:
        return True
    return False


def is_closed(ws: websocket.WebSocket, timeout: float = 3.0) -> bool:
    ws.settimeout(timeout)
    try:
        while True:
            frame = ws.recv()
            if frame in ("", b""):
                return True
    except websocket.WebSocketTimeoutException:
        return False
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        return True


def klines(updates: list[str]) -> list[KlineUpdate]:
    events = [binance.decode_frame(text) for text in updates]
    assert all(isinstance(e, KlineUpdate) for e in events), events
    return events  # type: ignore[return-value]


@pytest.fixture(scope="module")
def server() -> Iterator[Replay]:
    replay = Replay()
    try:
        yield replay
    finally:
        replay.stop()


@pytest.fixture
def replay(server: Replay) -> Replay:
    server.post("/_replay/reset", {})
    wait_for(lambda: not server.state()["connections"])
    return server


def subscribed(replay: Replay, path: str, streams: list[str] | None = None) -> websocket.WebSocket:
    ws = websocket.create_connection(replay.ws_base + path, timeout=3)
    if streams:
        ws.send(binance.subscribe_frame(streams, 1))
        assert binance.decode_frame(ws.recv()) == SubscriptionAck(1, None)
    wait_for(lambda: len(replay.state()["connections"]) == 1)
    return ws


# --- REST ------------------------------------------------------------------------------------


def test_klines_paging_reaches_the_forming_candle(replay: Replay) -> None:
    replay.advance(30_000)  # half-way through the first live candle
    start, seen = START_MS - 1440 * MINUTE, []
    while True:
        query = f"symbol=BTCUSDT&interval=1m&startTime={start}&limit=1000"
        status, rows, headers = replay.get(f"/spot/api/v3/klines?{query}")
        assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"]
        seen += rows
        if len(rows) < 1000:
            break
        start = rows[-1][0] + MINUTE
    times = [row[0] for row in seen]
    assert times == list(range(START_MS - 1440 * MINUTE, START_MS + MINUTE, MINUTE))
    forming = binance.parse_kline_row(seen[-1])
    assert forming.candle_time * 1000 == START_MS and seen[-1][6] == START_MS + MINUTE - 1
    assert float(seen[-1][5]) < 100  # only part of the volume traded so far
    status, latest, _ = replay.get("/spot/api/v3/klines?symbol=BTCUSDT&interval=15m&limit=2")
    assert [row[0] for row in latest] == [START_MS - 15 * MINUTE, START_MS]
    status, ended, _ = replay.get(f"/spot/api/v3/klines?symbol=BTCUSDT&interval=1h&endTime={START_MS - 1}&limit=3")
    assert [row[0] for row in ended] == [START_MS - h * 3_600_000 for h in (3, 2, 1)]


def test_futures_klines_and_limits(replay: Replay) -> None:
    status, rows, _ = replay.get("/futures/fapi/v1/klines?symbol=XRPUSDT&interval=5m&limit=1500")
    assert status == 200 and len(rows) == 289  # one day of history + the forming candle
    assert replay.get("/futures/fapi/v1/klines?symbol=XRPUSDT&interval=1m")[1] == []  # not derivable
    status, body, _ = replay.get("/futures/fapi/v1/klines?symbol=XRPUSDT&interval=5m&limit=1501")
    assert (status, body["code"]) == (400, -1130)


@pytest.mark.parametrize(
    ("path", "code"),
    [("/spot/api/v3/klines?symbol=NOPEUSDT&interval=1m", -1121),
     ("/spot/api/v3/klines?symbol=BTCUSDT&interval=2m", -1120),
     ("/spot/api/v3/klines?interval=1m", -1102),
     ("/spot/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1001", -1130),
     ("/spot/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=abc", -1100),
     ("/spot/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=5&endTime=4", -1023),
     ("/futures/fapi/v1/klines?symbol=XRPETH&interval=1m", -1121),
     ("/spot/api/v3/ticker/24hr?symbol=NOPEUSDT", -1121)],
)
def test_rest_error_bodies(replay: Replay, path: str, code: int) -> None:
    status, body, _ = replay.get(path)
    assert status == 400
    assert binance.parse_error_body(json.dumps(body)) == binance.BinanceError(code, body["msg"])


def test_exchange_info_ticker_and_top_markets(replay: Replay) -> None:
    for market, api in (("spot", "/api/v3"), ("futures", "/fapi/v1")):
        _, info, _ = replay.get(f"/{market}{api}/exchangeInfo")
        _, tickers, _ = replay.get(f"/{market}{api}/ticker/24hr")
        assert info["serverTime"] == START_MS and info["rateLimits"]
        assert {t["symbol"] for t in tickers} == {s["symbol"] for s in info["symbols"]}
        items = binance_markets.build_top_markets(json.dumps(info), json.dumps(tickers), market, "USDT", 50)
        assert items and all(i.symbol_id in binance_markets.parse_exchange_info(info, market) for i in items)
    status, btc, _ = replay.get("/spot/api/v3/ticker/24hr?symbol=BTCUSDT")
    _, last, _ = replay.get("/spot/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1")
    assert status == 200 and btc["lastPrice"] == last[0][4]
    assert replay.get("/spot/api/v3/ping")[1] == {}
    assert replay.get("/futures/fapi/v1/time")[1] == {"serverTime": START_MS}
    assert replay.get("/spot/fapi/v1/klines")[0] == 404


# --- streams ---------------------------------------------------------------------------------


def test_combined_stream_live_subscribe_and_unsubscribe(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream", ["btcusdt@kline_1m", "xrpeth@kline_5m"])
    ws.send(binance.list_subscriptions_frame(2))
    assert binance.decode_frame(ws.recv()) == SubscriptionAck(2, ("btcusdt@kline_1m", "xrpeth@kline_5m"))
    replay.advance(MINUTE)
    updates = klines(receive(ws, 12))  # 1m: 5 forming + 1 closed; 5m: a forming frame per 10 s
    assert [u.stream for u in updates].count("btcusdt@kline_1m") == 6
    assert [u.closed for u in updates if u.interval == "5m"] == [False] * 6
    ws.send(binance.unsubscribe_frame(["btcusdt@kline_1m"], 3))
    assert binance.decode_frame(ws.recv()) == SubscriptionAck(3, None)
    replay.advance(MINUTE)
    later = klines(receive(ws, 6))
    assert {u.stream for u in later} == {"xrpeth@kline_5m"} and nothing_more(ws)
    counters = replay.state()["counters"]
    assert counters["subscriptions_total"] == 2 and counters["unsubscriptions_total"] == 1
    ws.close()


def test_one_closed_frame_per_candle_after_forming_frames(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream?streams=btcusdt@kline_1m")
    frames: list[str] = []
    for _ in range(3):
        replay.advance(MINUTE)
        frames += receive(ws, 6)
    updates = klines(frames)
    times = sorted({u.candle.candle_time for u in updates})
    assert times == [START_MS // 1000 + 60 * i for i in range(3)]
    for candle_time in times:
        mine = [u for u in updates if u.candle.candle_time == candle_time]
        assert [u.closed for u in mine] == [False] * 5 + [True]
        assert all(mine[-1].candle.low <= u.candle.low <= u.candle.high <= mine[-1].candle.high for u in mine)
        assert len({u.candle.volume for u in mine}) == 6  # volume grows frame by frame
    replay.advance(25_000)
    (forming,) = klines(receive(ws, 2))[-1:]
    _, rows, _ = replay.get("/spot/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1")
    assert binance.parse_kline_row(rows[0]) == forming.candle  # REST agrees with the stream
    ws.close()


def test_raw_stream_and_method_errors(replay: Replay) -> None:
    ws = subscribed(replay, "/futures/ws/xrpusdt@kline_5m")
    replay.advance(5 * MINUTE)
    raw = json.loads(receive(ws, 30)[-1])
    assert raw["e"] == "kline" and raw["k"]["x"] is True and "stream" not in raw
    ws.send("{oops")
    error = binance.decode_frame(ws.recv())
    assert isinstance(error, ErrorFrame) and error.code == 3 and error.request_id is None
    ws.send('{"method":"SUBSCRIBE","params":["a@kline_1m"],"id":-4}')
    assert isinstance(binance.decode_frame(ws.recv()), ErrorFrame)
    ws.send('{"method":"FOO","id":5}')
    error = binance.decode_frame(ws.recv())
    assert isinstance(error, ErrorFrame) and error.code == 2 and error.request_id == 5
    ws.close()


def test_jump_skips_frames(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream?streams=btcusdt@kline_1m")
    replay.post("/_replay/clock", {"set_ms": START_MS + 3_600_000})
    assert nothing_more(ws)
    replay.advance(MINUTE)
    updates = klines(receive(ws, 6))
    assert updates[0].candle.candle_time * 1000 == START_MS + 3_600_000
    ws.close()


# --- faults ----------------------------------------------------------------------------------


def arm(replay: Replay, fault: dict[str, Any]) -> None:
    armed = replay.post("/_replay/faults", {"ws": fault})["armed"]
    assert armed["ws"]["connections"]


def test_drop_after_frames(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream?streams=btcusdt@kline_1m")
    arm(replay, {"kind": "drop", "after_frames": 3})
    replay.advance(MINUTE)
    assert len(receive(ws, 3)) == 3
    assert is_closed(ws)
    wait_for(lambda: replay.state()["counters"].get("ws_drops") == 1)


def test_drop_mid_candle(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream?streams=btcusdt@kline_1m")
    replay.advance(50_000)
    receive(ws, 5)
    arm(replay, {"kind": "drop", "mid_candle": True, "after_frames": 1})
    replay.advance(MINUTE)  # closed frame, then the next candle's first forming frame: drop
    updates = klines(receive(ws, 2))
    assert [u.closed for u in updates] == [True, False]
    assert is_closed(ws)


def test_silence_keeps_the_socket_open(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream?streams=btcusdt@kline_1m")
    arm(replay, {"kind": "silence", "after_frames": 2})
    replay.advance(MINUTE)
    receive(ws, 2)
    assert nothing_more(ws)
    ws.ping("alive")
    ws.settimeout(2)
    opcode, data = ws.recv_data(control_frame=True)
    assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"alive")
    assert replay.state()["connections"][0]["silent"] is True
    replay.post("/_replay/faults", {"clear": True})
    replay.advance(MINUTE)
    assert len(klines(receive(ws, 6))) == 6
    ws.close()


def test_duplicate_and_reorder(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream?streams=btcusdt@kline_1m")
    arm(replay, {"kind": "duplicate", "count": 2})
    replay.advance(MINUTE)
    dup = receive(ws, 8)
    assert dup[0] == dup[1] and dup[2] == dup[3] and dup[4] != dup[5]
    arm(replay, {"kind": "reorder", "count": 1})
    replay.advance(MINUTE)
    times = [u.event_time_ms for u in klines(receive(ws, 6))]
    assert times[0] > times[1] and times[2:] == sorted(times[2:])
    ws.close()


def test_malformed_frames(replay: Replay) -> None:
    ws = subscribed(replay, "/spot/stream?streams=btcusdt@kline_1m")
    arm(replay, {"kind": "malformed", "count": 4})
    events = [binance.decode_frame(text) for text in receive(ws, 4)]
    assert all(isinstance(e, MalformedFrame) for e in events)
    replay.advance(MINUTE)
    assert len(klines(receive(ws, 6))) == 6
    ws.close()


@pytest.mark.parametrize("status", [429, 418])
def test_rest_rate_limit_faults(replay: Replay, status: int) -> None:
    replay.post("/_replay/faults", {"rest": {"status": status, "count": 2, "retry_after": 7}})
    for _ in range(2):
        code, body, headers = replay.get("/spot/api/v3/ping")
        assert (code, body["code"], headers["Retry-After"]) == (status, -1003, "7")
    assert replay.get("/spot/api/v3/ping")[0] == 200
    assert replay.state()["counters"]["rest_faults_served"] == 2


def test_rest_server_error_fault(replay: Replay) -> None:
    replay.post("/_replay/faults", {"rest": {"status": 503}})
    code, body, _ = replay.get("/futures/fapi/v1/klines?symbol=XRPUSDT&interval=5m")
    assert (code, body["code"]) == (503, -1001)
    assert replay.get("/futures/fapi/v1/klines?symbol=XRPUSDT&interval=5m")[0] == 200


def test_state_counts_connections_and_requests(replay: Replay) -> None:
    ws = subscribed(replay, "/futures/stream?streams=xrpusdt@kline_5m/xrpusdt@kline_1h")
    replay.get("/futures/fapi/v1/ping")
    state = replay.state()
    assert state["counters"]["ws_connections_total"] == 1
    assert state["counters"]["ws_connections_open"] == 1
    assert state["counters"]["subscriptions_total"] == 2
    assert state["counters"]["rest_requests"] == 1
    assert state["connections"][0]["streams"] == ["xrpusdt@kline_5m", "xrpusdt@kline_1h"]
    assert state["markets"]["futures"]["ws_base_url"].endswith("/futures")
    ws.close()
