"""Live feed end to end: the real server follows the replay exchange over WebSocket + REST."""

from __future__ import annotations

import json
import threading
import time

import pytest
import websocket

pytestmark = pytest.mark.integration

BTC = "binance:spot:BTC/USDT:1m"
SPEED = "120"  # two 1m candles per second


class Watcher:
    """A WebSocket subscriber recording every closed candle time it is sent."""

    def __init__(self, server, series: str = BTC) -> None:
        self.ws = websocket.create_connection(server.ws_url, timeout=30)
        self.times: list[int] = []
        self.errors: list[dict] = []
        self.ws.send(json.dumps({"type": "subscribe", "series_id": series, "supports_batch": True}))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                msg = json.loads(self.ws.recv())
                if msg["type"] == "candle_closed":
                    self.times.append(msg["candle"]["candle_time"])
                elif msg["type"] == "candles_batch":
                    self.times.extend(c["candle_time"] for c in msg["candles"])
                elif msg["type"] == "error":
                    self.errors.append(msg)
        except Exception:
            return

    def wait_live(self, count: int, timeout: float = 30.0) -> None:
        start = len(self.times)
        deadline = time.monotonic() + timeout
        while len(self.times) < start + count:
            assert time.monotonic() < deadline, f"only {len(self.times) - start} new candles"
            time.sleep(0.05)

    def close(self) -> None:
        self.ws.close()


def feed_env(exchange, **extra: str) -> dict[str, str]:
    return {**exchange.env(), "TRADE_CANVAS_ENABLE_ONDEMAND_INGEST": "1",
            "TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES": "300", **extra}


def assert_store_matches_exchange(server, exchange, seen: list[int]) -> None:
    """What was stored and what the subscriber saw equal the exchange's closed candles."""
    seen = list(seen)  # the feed keeps running: everything seen so far is stored by now
    _, body = server.get(f"/api/market/candles?series_id={BTC}&limit=5000")
    stored = body["candles"]
    first, last = stored[0]["candle_time"], stored[-1]["candle_time"]
    rows = exchange.get(f"/spot/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={first * 1000}"
                        f"&endTime={last * 1000}&limit=1000")
    expected = [{"candle_time": r[0] // 1000, "open": float(r[1]), "high": float(r[2]),
                 "low": float(r[3]), "close": float(r[4]), "volume": float(r[5])} for r in rows]
    assert stored == expected
    assert [c["candle_time"] for c in stored] == list(range(first, last + 60, 60))
    assert seen == [c["candle_time"] for c in stored][: len(seen)]
    assert len(seen) >= len(stored) - 2  # at most the newest candle or two still in flight


def test_subscribe_follows_live_candles(start_server, start_replay) -> None:
    exchange = start_replay("--speed", SPEED)
    server = start_server(**feed_env(exchange))
    watcher = Watcher(server)
    watcher.wait_live(300 + 6)  # the REST tail, then live candles
    time.sleep(1.0)
    assert_store_matches_exchange(server, exchange, watcher.times)
    _, status = server.get("/api/runtime/actors")
    feed = next(a for a in status["actors"] if a["kind"] == "feed")
    assert feed["refcount"] == 1 and feed["pinned"] is False and feed["stream"] == "btcusdt@kline_1m"
    conns = next(a for a in status["actors"] if a["kind"] == "streams:spot")["connections"]
    assert conns[0]["state"] == "open" and conns[0]["streams"] == 1
    watcher.close()


def test_faults_never_lose_or_duplicate_a_candle(start_server, start_replay) -> None:
    exchange = start_replay("--speed", SPEED)
    server = start_server(**feed_env(exchange, TRADE_CANVAS_BINANCE_WS_SILENCE_TIMEOUT_S="2"))
    watcher = Watcher(server)
    watcher.wait_live(300 + 3)
    for fault in (
        {"ws": {"kind": "drop", "after_frames": 4, "mid_candle": True}},
        {"ws": {"kind": "duplicate", "count": 12}},
        {"ws": {"kind": "malformed", "count": 6}},
        {"ws": {"kind": "reorder", "count": 12}},
        {"rest": {"status": 429, "count": 2, "retry_after": 1}, "ws": {"kind": "drop", "after_frames": 2}},
        {"ws": {"kind": "silence", "after_frames": 3}},
        {"rest": {"status": 503, "count": 1}, "ws": {"kind": "drop", "after_frames": 1, "clean": True}},
    ):
        exchange.post("/_replay/faults", fault)
        watcher.wait_live(4, timeout=40)
    exchange.post("/_replay/faults", {"clear": True})
    watcher.wait_live(3)
    time.sleep(1.0)
    assert_store_matches_exchange(server, exchange, watcher.times)
    _, status = server.get("/api/runtime/actors")
    conn = next(a for a in status["actors"] if a["kind"] == "streams:spot")["connections"][0]
    assert conn["reconnects"] >= 4 and conn["malformed"] >= 1
    log = server.log()
    assert "silent for" in log and "429" in log
    watcher.close()


def test_idle_reap_eviction_and_capacity(start_server, start_replay, tmp_path) -> None:
    exchange = start_replay("--speed", SPEED)
    whitelist = tmp_path / "pinned.json"
    whitelist.write_text(json.dumps({"series_ids": ["binance:futures:XRP/USDT:5m"]}))
    server = start_server(**feed_env(
        exchange, TRADE_CANVAS_ONDEMAND_MAX_JOBS="2", TRADE_CANVAS_ONDEMAND_IDLE_TTL_S="2",
        TRADE_CANVAS_ENABLE_WHITELIST_INGEST="1", TRADE_CANVAS_WHITELIST_PATH=str(whitelist)))

    def feeds() -> dict[str, dict]:
        actors = server.get("/api/runtime/actors")[1]["actors"]
        return {a["series_id"]: a for a in actors if a["kind"] == "feed"}

    a = Watcher(server, "binance:spot:BTC/USDT:1m")
    b = Watcher(server, "binance:spot:XRP/ETH:5m")
    a.wait_live(1)
    assert set(feeds()) == {"binance:futures:XRP/USDT:5m", "binance:spot:BTC/USDT:1m", "binance:spot:XRP/ETH:5m"}
    assert feeds()["binance:futures:XRP/USDT:5m"]["pinned"] is True
    c = Watcher(server, "binance:spot:BTC/USDT:5m")  # both slots busy, nobody idle
    deadline = time.monotonic() + 10
    while not c.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.errors[0]["code"] == "capacity" and c.errors[0]["series_id"] == "binance:spot:BTC/USDT:5m"
    assert "binance:spot:BTC/USDT:5m" not in feeds()
    b.close()  # XRP/ETH goes idle
    time.sleep(0.5)
    d = Watcher(server, "binance:spot:BTC/USDT:5m")  # evicts the idle XRP/ETH feed
    d.wait_live(1)
    assert set(feeds()) == {"binance:futures:XRP/USDT:5m", "binance:spot:BTC/USDT:1m", "binance:spot:BTC/USDT:5m"}
    a.close()
    d.close()
    time.sleep(4)  # past the idle TTL
    assert set(feeds()) == {"binance:futures:XRP/USDT:5m"}  # the pinned feed survives
    assert "reaped" in server.log() or "idle for" in server.log()
    c.close()


def test_bad_series_leaks_no_job(start_server, start_replay) -> None:
    exchange = start_replay("--speed", SPEED)
    server = start_server(**feed_env(exchange))
    ws = websocket.create_connection(server.ws_url, timeout=10)
    ws.send(json.dumps({"type": "subscribe", "series_id": "binance:spot:BTC/USDT:7m"}))
    reply = json.loads(ws.recv())
    assert reply["type"] == "error" and reply["code"] == "bad_request" and "7m" in reply["message"]
    ws.send(json.dumps({"type": "subscribe", "series_id": "binance:options:BTC/USDT:1m"}))
    assert json.loads(ws.recv())["code"] == "bad_request"
    ws.close()
    time.sleep(0.3)
    actors = server.get("/api/runtime/actors")[1]["actors"]
    assert not [a for a in actors if a["kind"] == "feed"]


SPOT_USDT = ["ADA", "BAT", "BNB", "BTC", "BTT", "EOS", "ETC", "ETH", "FET", "HOT", "ICX", "IOTA",
             "LINK", "LTC", "NEO", "NKN", "NULS", "ONG", "ONT", "QTUM", "TRX", "VET", "WAVES",
             "XLM", "XRP"]
FUTURES_USDT = ["ADA", "AKRO", "ALGO", "ATOM", "BAT", "BCH", "BNB", "BTC", "CTK", "DASH", "EOS",
                "ETC", "ETH", "IOST", "IOTA", "KEEP", "KNC", "LINK", "LTC", "NEO", "NKN", "ONT",
                "QTUM", "SUSHI", "THETA"]


def test_hundred_series_share_connections(start_server, start_replay) -> None:
    exchange = start_replay("--speed", "60", "--synthesize-listed")
    server = start_server(**feed_env(exchange, TRADE_CANVAS_ONDEMAND_MAX_JOBS="0",
                                     TRADE_CANVAS_BINANCE_WS_STREAMS_PER_CONNECTION="40",
                                     TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES="20"))
    series = [f"binance:spot:{base}/USDT:{tf}" for base in SPOT_USDT for tf in ("1m", "5m")]
    series += [f"binance:futures:{base}/USDT:{tf}" for base in FUTURES_USDT for tf in ("5m", "15m")]
    assert len(set(series)) == 100
    sockets = [websocket.create_connection(server.ws_url, timeout=30) for _ in range(2)]
    for i, sid in enumerate(series):
        sockets[i % 2].send(json.dumps({"type": "subscribe", "series_id": sid}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        actors = server.get("/api/runtime/actors")[1]["actors"]
        conns = [c for a in actors if a["kind"].startswith("streams:") for c in a["connections"]]
        if sum(c["subscribed"] for c in conns if c["state"] == "open") == 100:
            break
        time.sleep(0.2)
    feeds = [a for a in actors if a["kind"] == "feed"]
    assert len(feeds) == 100 and all(f["refcount"] == 1 for f in feeds)
    by_market = {a["kind"]: [c["streams"] for c in a["connections"]]
                 for a in actors if a["kind"].startswith("streams:")}
    assert by_market == {"streams:spot": [40, 10], "streams:futures": [40, 10]}
    deadline = time.monotonic() + 60
    empty = list(series)
    while empty and time.monotonic() < deadline:
        empty = [sid for sid in empty
                 if not server.get(f"/api/market/candles?series_id={sid}&limit=1")[1]["candles"]]
        time.sleep(0.2)
    assert empty == []  # every series got its history and live candles
    for sock in sockets:
        sock.close()
