"""CORS for the chart app, the K-line lamp and the debug tab's reads (Falcon TestClient)."""

from __future__ import annotations

import pytest

from tests.api.conftest import NOW

S = "binance:futures:BTC/USDT:5m"
ORIGIN = "http://localhost:5173"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "content-type"}
CLOSED = NOW - NOW % 300 - 300  # newest fully closed 5m bucket at NOW


def candle(t: int) -> dict:
    return {"candle_time": t, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0}


def ingest(client, series: str, times: list[int]) -> None:
    result = client.simulate_post(
        "/api/market/ingest/candles_closed_batch",
        json={"series_id": series, "candles": [candle(t) for t in times]},
    )
    assert result.status_code == 200, result.text


@pytest.mark.parametrize("path", ["/api/market/health", "/api/nothing", "/api/replay/status",
                                  "/api/market/candles"])
def test_preflight_from_allowed_origin_is_200_on_any_path(client, path: str) -> None:
    result = client.simulate_options(path, headers=PREFLIGHT)
    assert result.status_code == 200 and result.text == "OK"
    assert result.headers["access-control-allow-origin"] == ORIGIN
    assert result.headers["access-control-allow-credentials"] == "true"
    assert result.headers["access-control-allow-headers"] == "content-type"
    assert "GET" in result.headers["access-control-allow-methods"]
    assert result.headers["access-control-max-age"] == "600"
    assert "Origin" in result.headers["vary"]


def test_preflight_refusals_and_plain_options(client) -> None:
    evil = client.simulate_options("/api/health", headers=dict(PREFLIGHT, Origin="http://evil"))
    assert evil.status_code == 400 and evil.text == "Disallowed CORS origin"
    assert "access-control-allow-origin" not in evil.headers
    bad = client.simulate_options(
        "/api/health", headers=dict(PREFLIGHT, **{"Access-Control-Request-Method": "BREW"}))
    assert bad.status_code == 400 and bad.text == "Disallowed CORS method"
    plain = client.simulate_options("/api/nothing", headers={"Origin": ORIGIN})
    assert plain.status_code == 404


def test_error_answers_carry_cors_headers(client) -> None:
    headers = {"Origin": ORIGIN}
    missing = client.simulate_get("/api/market/health", params={"series_id": S}, headers=headers)
    assert missing.status_code == 404 and missing.json == {"detail": "not_found"}
    big = client.simulate_post("/api/market/ingest/candle_closed", headers=headers,
                               body=b"{" + b" " * (1 << 20) + b"}")
    assert big.status_code == 413
    client.runtime.begin_shutdown()
    stopping = client.simulate_get("/api/ready", headers=headers)
    assert stopping.status_code == 503
    for result in (missing, big, stopping):
        assert result.headers["access-control-allow-origin"] == ORIGIN
        assert "Origin" in result.headers["vary"]


def test_health_is_gated(make_client) -> None:
    assert make_client().simulate_get("/api/market/health", params={"series_id": S}).status_code == 404
    on = make_client(TRADE_CANVAS_ENABLE_KLINE_HEALTH_V2="1")
    assert on.simulate_get("/api/market/health", params={"series_id": S}).status_code == 200
    assert on.simulate_get("/api/market/debug/series_health",
                           params={"series_id": S}).status_code == 404


@pytest.fixture
def debug(make_client):
    return make_client(TRADE_CANVAS_ENABLE_DEBUG_API="1")


def test_health_without_candles_is_red_missing_head(debug) -> None:
    body = debug.simulate_get("/api/market/health", params={"series_id": S}).json
    assert body["status"] == "red" and body["status_reason"] == "missing_head"
    assert body["head_time"] is None and body["lag_seconds"] is None
    assert body["missing_candles"] is None and body["expected_latest_closed_time"] == CLOSED
    assert body["backfill"]["state"] == "idle" and body["backfill"]["progress_pct"] == 100.0
    assert body["backfill"]["recent"] is False


def test_health_up_to_date_and_lagging(debug) -> None:
    ingest(debug, S, [CLOSED - 600, CLOSED - 300, CLOSED])
    body = debug.simulate_get("/api/market/health", params={"series_id": S}).json
    assert (body["status"], body["status_reason"]) == ("green", "up_to_date")
    assert body["missing_seconds"] == 0 and body["lag_seconds"] == NOW - CLOSED
    later = debug.simulate_get(
        "/api/market/health", params={"series_id": S, "now_time": CLOSED + 300 * 4}).json
    assert (later["status"], later["status_reason"]) == ("red", "lagging_no_recent_backfill")
    assert later["missing_seconds"] == 900 and later["missing_candles"] == 3
    ahead = debug.simulate_get(
        "/api/market/health", params={"series_id": S, "now_time": CLOSED + 10}).json
    assert ahead["status_reason"] == "head_ahead_of_closed_window"


def test_health_grace_after_a_close(debug) -> None:
    ingest(debug, S, [CLOSED - 300])
    just = debug.simulate_get(
        "/api/market/health", params={"series_id": S, "now_time": CLOSED + 302}).json
    assert just["status"] == "green" and just["missing_seconds"] == 0
    late = debug.simulate_get(
        "/api/market/health", params={"series_id": S, "now_time": CLOSED + 310}).json
    assert late["status"] == "red" and late["missing_candles"] == 1


def test_bad_series_id_is_400(debug) -> None:
    result = debug.simulate_get("/api/market/health", params={"series_id": "nope"})
    assert result.status_code == 400 and "series_id" in result.json["detail"]
    result = debug.simulate_get("/api/market/debug/series_health",
                                params={"series_id": "binance:spot:BTC/USDT:7x"})
    assert result.status_code == 400 and "timeframe" in result.json["detail"]


def test_series_health_gaps_and_base_buckets(debug) -> None:
    times = [CLOSED - 300 * k for k in (9, 8, 5, 4, 1, 0)]
    ingest(debug, S, times)
    minute = "binance:futures:BTC/USDT:1m"
    ingest(debug, minute, [CLOSED + 60 * k for k in (0, 1, 3)] + [CLOSED - 300 + 60 * k for k in range(5)])
    body = debug.simulate_get("/api/market/debug/series_health",
                              params={"series_id": S, "max_recent_gaps": 1,
                                      "recent_base_buckets": 2}).json
    assert body["candle_count"] == 6 and body["first_time"] == times[0]
    assert body["head_time"] == CLOSED and body["gap_count"] == 2
    assert body["max_gap_seconds"] == 900
    assert body["recent_gaps"] == [{"prev_time": CLOSED - 1200, "next_time": CLOSED - 300,
                                    "delta_seconds": 900, "missing_candles": 2}]
    assert body["base_series_id"] == minute
    assert body["base_bucket_completeness"] == [
        {"bucket_open_time": CLOSED - 300, "expected_minutes": 5, "actual_minutes": 5,
         "missing_minutes": 0},
        {"bucket_open_time": CLOSED, "expected_minutes": 5, "actual_minutes": 3,
         "missing_minutes": 2},
    ]


def test_ingest_state_and_metrics_gate(debug, make_client) -> None:
    body = debug.simulate_get("/api/market/debug/ingest_state").json
    assert body["jobs"] == [] and body["ingest_role"] == "hybrid"
    assert debug.simulate_get("/api/market/debug/metrics").status_code == 404
    metrics = make_client(TRADE_CANVAS_ENABLE_DEBUG_API="1", TRADE_CANVAS_ENABLE_RUNTIME_METRICS="1")
    body = metrics.simulate_get("/api/market/debug/metrics").json
    assert body["enabled"] is True and body["gauges"]["market_ws_active_subscriptions"] == 0.0
    assert all(isinstance(v, float) for v in body["counters"].values())


def test_monthly_lamp_and_gaps_count_calendar_months(debug) -> None:
    monthly = "binance:futures:BTC/USDT:1M"
    # 2023-01-01, 02-01, 03-01 (28 days after Feb 1: no gap), then 06-01 (Apr and May missing)
    jan, feb, mar, jun = 1_672_531_200, 1_675_209_600, 1_677_628_800, 1_685_577_600
    ingest(debug, monthly, [jan, feb, mar, jun])
    body = debug.simulate_get("/api/market/debug/series_health",
                              params={"series_id": monthly, "recent_base_buckets": 2}).json
    assert body["gap_count"] == 1 and body["recent_gaps"] == [
        {"prev_time": mar, "next_time": jun, "delta_seconds": jun - mar, "missing_candles": 2}]
    assert body["base_bucket_completeness"] == []  # no 1m twin stored
    nov = 1_698_796_800
    ingest(debug, "binance:futures:BTC/USDT:1m", [nov - 60, nov, nov + 120])
    body = debug.simulate_get("/api/market/debug/series_health",
                              params={"series_id": monthly, "recent_base_buckets": 2}).json
    assert body["base_bucket_completeness"] == [  # October has 31 days, November 30
        {"bucket_open_time": 1_696_118_400, "expected_minutes": 44_640, "actual_minutes": 1,
         "missing_minutes": 44_639},
        {"bucket_open_time": nov, "expected_minutes": 43_200, "actual_minutes": 2,
         "missing_minutes": 43_198},
    ]
    lamp = debug.simulate_get("/api/market/health", params={"series_id": monthly}).json
    oct_ = 1_696_118_400  # at NOW (2023-11-14) October is the newest closed month
    assert lamp["expected_latest_closed_time"] == oct_
    assert lamp["missing_candles"] == 4 and lamp["missing_seconds"] == oct_ - jun  # Jul..Oct
    ingest(debug, monthly, [oct_])
    just = debug.simulate_get("/api/market/health", params={"series_id": monthly}).json
    assert just["status"] == "green" and just["missing_candles"] == 0
