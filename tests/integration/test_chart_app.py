"""The chart app's reads through the real server, against the replay exchange in --demo's setup.

The exchange serves the recorded spot BTCUSDT klines on futures too (``--futures-from-spot``),
today's clock (``--anchor now``); the server pins ``binance:futures:BTC/USDT:1m`` (the app's
default series) with the debug API on. Each test drives a route the way the app does.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import websocket

pytestmark = pytest.mark.integration

FUT = "binance:futures:BTC/USDT:1m"
GAPPY = "binance:spot:XRP/ETH:1m"  # the recording has real exchange gaps
ORIGIN = "http://localhost:5173"


@pytest.fixture
def demo(start_server, start_replay, tmp_path):
    exchange = start_replay("--anchor", "now", "--futures-from-spot", "BTCUSDT")
    (tmp_path / "whitelist.json").write_text(json.dumps({"series_ids": [FUT]}))
    server = start_server(
        **exchange.env(),
        TRADE_CANVAS_ENABLE_WHITELIST_INGEST="1",
        TRADE_CANVAS_ENABLE_DEBUG_API="1",
        TRADE_CANVAS_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
        TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES="2000",
    )
    wait(lambda: server.get(f"/api/factor/health?series_id={FUT}")[1]["status"] == "green", 60)
    return server


def wait(check, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def options(server, path: str, origin: str = ORIGIN) -> tuple[int, dict[str, str], bytes]:
    # header names lower-cased: HTTP header names are case-insensitive
    req = urllib.request.Request(server.base + path, method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "content-type"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_preflights_and_lamp(demo) -> None:
    for path in ("/api/market/health", "/api/nothing/here", "/api/replay/window"):
        status, headers, body = options(demo, path)
        assert (status, body) == (200, b"OK")
        assert headers["access-control-allow-origin"] == ORIGIN
    status, headers, _ = options(demo, "/api/market/health", "http://evil.example")
    assert status == 400 and "access-control-allow-origin" not in headers
    status, body = demo.get(f"/api/market/health?series_id={FUT}")
    assert status == 200 and body["status"] == "green", body
    assert body["backfill"]["state"] == "succeeded" and body["backfill"]["progress_pct"] == 100.0
    status, body = demo.get(f"/api/market/debug/series_health?series_id={FUT}"
                            "&max_recent_gaps=3&recent_base_buckets=4")
    assert status == 200 and body["gap_count"] == 0 and body["candle_count"] > 1000
    status, body = demo.get("/api/market/debug/ingest_state")
    assert [job["series_id"] for job in body["jobs"]] == [FUT]
    assert body["jobs"][0]["refcount"] == -1 and body["jobs"][0]["running"] is True


def test_frame_then_delta_poll(demo) -> None:
    status, frame = demo.get(f"/api/frame/live?series_id={FUT}&window_candles=2000")
    assert status == 200, frame
    aligned = frame["time"]["aligned_time"]
    assert frame["factor_slices"]["candle_id"] == frame["draw_state"]["to_candle_id"] == \
        f"{FUT}:{aligned}"
    cursor = frame["draw_state"]["next_cursor"]["version_id"]
    status, poll = demo.get(f"/api/delta/poll?series_id={FUT}&after_id={cursor}"
                            "&window_candles=2000&limit=2000")
    assert status in (200, 409)
    if status == 200:
        assert poll["next_cursor"]["id"] >= cursor
        for record in poll["records"]:
            assert record["factor_slices"]["at_time"] == record["to_candle_time"]


def build_like_the_app(server, series: str, window: int = 2000) -> tuple[str, int]:
    """Prepare, build; on coverage_missing ensure coverage and build again. Returns (job, n)."""
    status, prepared = server.post("/api/replay/prepare",
                                   {"series_id": series, "to_time": None, "window_candles": window})
    assert status == 200, prepared
    body = {"series_id": series, "window_candles": window, "window_size": 500,
            "snapshot_interval": 25}
    status, built = server.post("/api/replay/build", body)
    if status == 409:
        assert "coverage_missing" in built["detail"]
        status, job = server.post("/api/replay/ensure_coverage",
                                  {"series_id": series, "target_candles": window})
        assert status == 200 and job["status"] == "building"
        coverage = wait(lambda: (lambda s: s if s["status"] != "building" else None)(
            server.get(f"/api/replay/coverage_status?job_id={urllib.parse.quote(job['job_id'])}")[1]),
            60, 0.3)
        if coverage["status"] == "error":
            assert "coverage_missing" in coverage["error"] and coverage["candles_ready"] > 0
        window = min(max(1, coverage["candles_ready"]), window)
        wait(lambda: server.get(f"/api/factor/health?series_id={series}")[1]["status"] == "green")
        status, built = server.post("/api/replay/build", dict(body, window_candles=window))
    assert status == 200, built
    return built["job_id"], window


def load_package(server, job: str) -> tuple[dict, list[dict]]:
    status = wait(lambda: (lambda s: s if s["status"] != "building" else None)(
        server.get(f"/api/replay/status?job_id={job}&include_preload=1")[1]), 30, 0.3)
    assert status["status"] == "done", status
    meta = status["metadata"]
    windows = []
    for w in range((meta["total_candles"] - 1) // meta["window_size"] + 1):
        code, body = server.get(f"/api/replay/window?job_id={job}&target_idx={w * 500}")
        assert code == 200 and body["window"]["window_index"] == w
        windows.append(body)
    return meta, windows


def test_replay_workflow_on_the_default_series(demo) -> None:
    job, window = build_like_the_app(demo, FUT)
    meta, windows = load_package(demo, job)
    assert meta["total_candles"] == window and meta["window_size"] == 500
    kline = [bar for w in windows for bar in w["window"]["kline"]]
    assert len(kline) == window
    assert [b["time"] for b in kline] == sorted(b["time"] for b in kline)
    assert kline[-1]["time"] == meta["to_candle_time"]
    assert any(w["factor_snapshots"] for w in windows)
    for w in windows:
        assert w["window"]["draw_active_checkpoints"][0]["at_idx"] == w["window"]["start_idx"]


def test_replay_of_a_series_with_exchange_gaps(demo) -> None:
    # The app reaches replay from the live chart, which has a tail by then: seed a short one.
    status, job = demo.post("/api/replay/ensure_coverage", {"series_id": GAPPY, "target_candles": 20})
    assert status == 200
    wait(lambda: demo.get(f"/api/replay/coverage_status?job_id={urllib.parse.quote(job['job_id'])}")
         [1]["status"] != "building", 30)
    wait(lambda: demo.get(f"/api/factor/health?series_id={GAPPY}")[1]["status"] == "green")
    job, window = build_like_the_app(demo, GAPPY, window=300)
    status, health = demo.get(f"/api/market/debug/series_health?series_id={GAPPY}")
    assert health["gap_count"] > 0  # a real exchange gap inside the replayed candles
    meta, windows = load_package(demo, job)
    assert meta["total_candles"] == window > 0


def test_debug_stream(demo) -> None:
    ws = websocket.create_connection(demo.base.replace("http", "ws") + "/ws/debug", timeout=10)
    try:
        snapshot = json.loads(ws.recv())
        assert snapshot["type"] == "debug_snapshot"
        events = snapshot["events"]
        assert any(e.get("series_id") == FUT for e in events)
        for event in events:
            assert event["source"] == "backend" and event["pipe"] in ("read", "write")
            assert event["level"] in ("info", "warn", "error") and event["event"]
            assert isinstance(event["ts_ms"], int) and isinstance(event["message"], str)
        ws.send("not json")
        assert json.loads(ws.recv())["type"] == "error"
        ws.send(json.dumps({"type": "subscribe"}))
        assert json.loads(ws.recv())["type"] == "debug_snapshot"
        demo.post("/api/runtime/debug/crash", {"series_id": FUT, "kind": "hub"})
        live = json.loads(ws.recv())
        assert live["type"] == "debug_event" and live["event"]["ts_ms"] > 0
    finally:
        ws.close()
