"""Health, readiness and the actor status board."""

import time

from tests.api.conftest import NOW

S = "binance:spot:ETH/USDT:1m"


def test_health_and_ready(client) -> None:
    assert client.simulate_get("/api/health").json == {"status": "ok"}
    ready = client.simulate_get("/api/ready")
    assert ready.status_code == 200 and ready.json["ready"] is True


def test_ready_fails_once_stopping(client) -> None:
    client.runtime.begin_shutdown()
    result = client.simulate_get("/api/ready")
    assert result.status_code == 503 and result.json["detail"] == "server_shutting_down"


def test_actor_status_lists_every_actor(client) -> None:
    client.simulate_post(
        "/api/market/ingest/candle_closed",
        json={"series_id": S, "candle": {"candle_time": NOW - NOW % 60, "open": 1, "high": 1,
                                         "low": 1, "close": 1, "volume": 0}},
    )
    body = client.simulate_get("/api/runtime/actors").json
    assert body["store_backend"] == "sqlite"
    assert body["counts_by_kind"] == {
        "supervisor": 1, "top_markets": 1, "replay_jobs": 1, "store": 1, "hub": 1, "factor": 1}
    assert body["series_count"] == 1 and body["uptime_s"] >= 0 and body["version"]
    assert body["cluster"] is None  # one process, no cluster mode
    limits = body["rest_limits"]["api.binance.com"]
    assert limits["budget_per_minute"] == 4800 and limits["banned_for_s"] == 0
    store = next(a for a in body["actors"] if a["kind"] == "store")
    assert store["series_id"] == S and store["state"] == "running"
    assert store["messages_handled"] == 1 and store["restarts"] == 0 and store["queue_depth"] == 0
    hub = next(a for a in body["actors"] if a["kind"] == "hub")
    assert hub["subscribers"] == 0
    factor = next(a for a in body["actors"] if a["kind"] == "factor")
    assert {"head_time", "store_head_time", "lag_seconds", "rebuilding"} <= set(factor)


def test_crash_is_restarted_and_reported(make_client) -> None:
    client = make_client(TRADE_CANVAS_ENABLE_DEBUG_API="1")
    crash = {"series_id": S, "kind": "store"}
    missing = client.simulate_post("/api/runtime/debug/crash", json=crash)
    assert missing.status_code == 404  # a series that is not running is not started to crash it
    assert client.simulate_get("/api/runtime/actors").json["series_count"] == 0
    client.simulate_post(
        "/api/market/ingest/candle_closed",
        json={"series_id": S, "candle": {"candle_time": NOW - NOW % 60, "open": 1, "high": 1,
                                         "low": 1, "close": 1, "volume": 0}},
    )
    result = client.simulate_post("/api/runtime/debug/crash", json=crash)
    assert result.status_code == 202
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        actors = client.simulate_get("/api/runtime/actors").json["actors"]
        store = next(a for a in actors if a["kind"] == "store")
        if store["restarts"] == 1 and store["state"] == "running":
            break
        time.sleep(0.05)
    assert store["restarts"] == 1 and store["state"] == "running"
    assert "crash requested" in store["last_error"]
    bad = client.simulate_post("/api/runtime/debug/crash", json={"series_id": S, "kind": "x"})
    assert bad.status_code == 422
