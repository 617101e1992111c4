"""HTTP contract of the market endpoints (Falcon TestClient, real runtime on temp SQLite)."""

import json

import pytest

from tests.api.conftest import NOW

S = "binance:futures:BTC/USDT:1m"


def candle(t: int, close: float = 1.5) -> dict:
    return {"candle_time": t, "open": 1.0, "high": 2.0, "low": 0.5, "close": close, "volume": 10.0}


def ingest(client, t: int, series: str = S, **kw):
    return client.simulate_post(
        "/api/market/ingest/candle_closed", json={"series_id": series, "candle": candle(t, **kw)}
    )


def test_ingest_then_read_tail_and_since(client) -> None:
    for t in (60, 120, 180, 240):
        result = ingest(client, NOW - NOW % 60 - 3600 + t)
        assert result.status_code == 200
        assert result.json["ok"] is True
    base = NOW - NOW % 60 - 3600
    tail = client.simulate_get("/api/market/candles", params={"series_id": S, "limit": 2}).json
    assert [c["candle_time"] for c in tail["candles"]] == [base + 180, base + 240]
    assert tail["server_head_time"] == base + 240
    since = client.simulate_get("/api/market/candles", params={"series_id": S, "since": base + 60}).json
    assert [c["candle_time"] for c in since["candles"]] == [base + 120, base + 180, base + 240]
    assert since["candles"][0] == candle(base + 120)


def test_unknown_series_is_empty(client) -> None:
    body = client.simulate_get("/api/market/candles", params={"series_id": S}).json
    assert body == {"series_id": S, "server_head_time": None, "candles": []}


@pytest.mark.parametrize(
    "params,detail",
    [
        ({}, "series_id is required"),
        ({"series_id": S, "limit": "0"}, "limit must be an integer in 1..5000"),
        ({"series_id": S, "limit": "5001"}, "limit must be an integer in 1..5000"),
        ({"series_id": S, "since": "-1"}, "since must be an integer in 0..253402300799"),
        ({"series_id": S, "since": "abc"}, "since must be an integer in 0..253402300799"),
        ({"series_id": S, "since": str(2**63)}, "since must be an integer in 0..253402300799"),
        ({"series_id": S, "since": "9" * 5000}, "since must be an integer in 0.."),
        ({"series_id": S, "since": "1_0"}, "since must be an integer in 0.."),
        ({"series_id": S, "since": "\u0661\u0662"}, "since must be an integer in 0.."),
        ({"series_id": S, "since": " 12"}, "since must be an integer in 0.."),
        ({"series_id": S, "limit": "1_0"}, "limit must be an integer in 1..5000"),
        ({"series_id": "binance:spot:1m"}, "invalid series_id"),
        ({"series_id": "binance:spot:BTC/USDT:2M"}, "invalid timeframe"),
    ],
)
def test_bad_read_parameters(client, params: dict, detail: str) -> None:
    result = client.simulate_get("/api/market/candles", params=params)
    assert result.status_code == 422
    assert detail in result.json["detail"]


@pytest.mark.parametrize(
    "body,status,detail",
    [
        ({"series_id": S, "candle": candle(NOW - NOW % 60 + 30)}, 422, "not aligned"),
        ({"series_id": S, "candle": candle(NOW - NOW % 60 + 600)}, 422, "future"),
        ({"series_id": S, "candle": {**candle(NOW - NOW % 60), "low": 5}}, 422, "low <="),
        ({"series_id": S, "candle": {**candle(NOW - NOW % 60), "volume": -1}}, 422, "volume"),
        ({"series_id": S}, 422, "candle must be an object"),
        ({"candle": candle(NOW - NOW % 60)}, 422, "series_id is required"),
        ({"series_id": "x", "candle": candle(NOW - NOW % 60)}, 422, "invalid series_id"),
        ({"series_id": "binance:spot:BTC\x00/USDT:1m", "candle": candle(NOW - NOW % 60)}, 422,
         "invalid series_id"),
        ({"series_id": "binance:spot:" + "A" * 2700 + ":1m", "candle": candle(NOW - NOW % 60)}, 422,
         "invalid series_id"),
        ({"series_id": S, "candle": {**candle(NOW - NOW % 60), "close": "1_5"}}, 422, "close"),
        ({"series_id": S, "candle": {**candle(NOW - NOW % 60), "open": 0, "low": 0}}, 422, "> 0"),
    ],
)
def test_bad_ingest_stores_nothing(client, body: dict, status: int, detail: str) -> None:
    result = client.simulate_post("/api/market/ingest/candle_closed", json=body)
    assert result.status_code == status
    assert detail in result.json["detail"]
    assert client.runtime.store.series_ids() == []


def test_malformed_json_and_non_object_bodies_are_400(client) -> None:
    for raw in (b"{", b"[1]", b""):
        result = client.simulate_post(
            "/api/market/ingest/candle_closed", body=raw, headers={"content-type": "application/json"}
        )
        assert result.status_code == 400
        assert isinstance(result.json["detail"], str)


def test_body_over_one_mib_is_413(client) -> None:
    result = client.simulate_post(
        "/api/market/ingest/candles_closed_batch",
        body=b"x" * (1024 * 1024 + 1),
        headers={"content-type": "application/json"},
    )
    assert result.status_code == 413
    assert "larger than" in result.json["detail"]


def test_batch_ingest_is_all_or_nothing(client) -> None:
    base = NOW - NOW % 60 - 6000
    good = [candle(base + 60 * i) for i in range(50)]
    bad = good + [{**candle(base + 60 * 50), "high": 0.1}]
    result = client.simulate_post(
        "/api/market/ingest/candles_closed_batch", json={"series_id": S, "candles": bad}
    )
    assert result.status_code == 422 and "candles[50]" in result.json["detail"]
    assert client.runtime.store.count(S) == 0
    result = client.simulate_post(
        "/api/market/ingest/candles_closed_batch", json={"series_id": S, "candles": good + good[:1]}
    )
    assert result.json == {
        "ok": True, "series_id": S, "count": 51,
        "first_candle_time": base, "last_candle_time": base + 60 * 49,
    }
    assert client.runtime.store.count(S) == 50


def test_batch_limit_is_5000(client) -> None:
    base = NOW - NOW % 60 - 60 * 6000
    candles = [candle(base + 60 * i) for i in range(5001)]
    result = client.simulate_post(
        "/api/market/ingest/candles_closed_batch", json={"series_id": S, "candles": candles}
    )
    assert result.status_code in (413, 422)
    assert client.runtime.store.count(S) == 0


def test_gated_routes(make_client) -> None:
    closed = make_client()
    body = {"series_id": S, "candle": candle(NOW - NOW % 60)}
    assert closed.simulate_post("/api/market/ingest/candle_forming", json=body).json == {"detail": "not_found"}
    assert closed.simulate_post("/api/dev/market/ingest/candles_closed_batch", json={}).status_code == 404
    opened = make_client(TRADE_CANVAS_ENABLE_DEBUG_API="1", TRADE_CANVAS_ENABLE_DEV_API="1")
    assert opened.simulate_post("/api/market/ingest/candle_forming", json=body).status_code == 200
    dev = opened.simulate_post(
        "/api/dev/market/ingest/candles_closed_batch", json={"series_id": S, "candles": [candle(NOW - NOW % 60)]}
    )
    assert dev.status_code == 200 and dev.json["count"] == 1


def test_whitelist(make_client, tmp_path) -> None:
    path = tmp_path / "wl.json"
    path.write_text('{"series_ids": ["binance:futures:BTC/USDT:1m"]}')
    client = make_client(TRADE_CANVAS_WHITELIST_PATH=str(path))
    assert client.simulate_get("/api/market/whitelist").json == {"series_ids": [S]}


def test_cors_preflight_and_simple_requests(client) -> None:
    origin = "http://localhost:5173"
    result = client.simulate_options(
        "/api/market/ingest/candle_closed",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert result.headers["access-control-allow-origin"] == origin
    assert "POST" in result.headers["access-control-allow-methods"]
    plain = client.simulate_get("/api/health", headers={"Origin": origin})
    assert plain.headers["access-control-allow-origin"] == origin
    other = client.simulate_get("/api/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_unknown_route_and_method_are_json(client) -> None:
    assert client.simulate_get("/api/nothing").json == {"detail": "not_found"}
    result = client.simulate_delete("/api/market/candles")
    assert result.status_code == 405 and "detail" in result.json


def test_plain_get_on_websocket_path_explains(client) -> None:
    result = client.simulate_get("/ws/market")
    assert result.status_code == 400 and "WebSocket" in result.json["detail"]


def test_repeated_reads_see_every_new_write(client) -> None:
    base = NOW - NOW % 60 - 600
    params = {"series_id": S, "limit": 3}
    for i in range(4):
        ingest(client, base + 60 * i, close=1.0 + i / 10)
        first = client.simulate_get("/api/market/candles", params=params).json
        again = client.simulate_get("/api/market/candles", params=params).json
        assert first == again
        assert first["server_head_time"] == base + 60 * i
    ingest(client, base, close=1.9)  # an overwrite keeps the head but must still show
    body = client.simulate_get("/api/market/candles", params={"series_id": S, "limit": 5}).json
    assert body["candles"][0]["close"] == 1.9
    assert client.simulate_get("/api/runtime/actors").json["read_cache"]["hits"] >= 4


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", "multipart/form-data; boundary=x"])
def test_post_bodies_must_be_json_415(client, content_type) -> None:
    body = b'{"series_id": "%s", "candle": {}}' % S.encode()
    headers = {"content-type": content_type} if content_type else {}
    result = client.simulate_post("/api/market/ingest/candle_closed", body=body, headers=headers)
    assert result.status_code == 415
    assert result.json == {"detail": "request body must be application/json"}
    assert client.runtime.store.series_ids() == []


def test_json_with_charset_is_json(client) -> None:
    body = {"series_id": S, "candle": candle(NOW - NOW % 60)}
    result = client.simulate_post(
        "/api/market/ingest/candle_closed", body=json.dumps(body).encode(),
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert result.status_code == 200


M = "binance:futures:BTC/USDT:1M"
# Month opens around NOW (2023-11-14 22:13 UTC): 2023-08-01, 09-01, 10-01, 11-01, 12-01, 2024-01-01
AUG, SEP, OCT, NOV, DEC, JAN = (1_690_848_000, 1_693_526_400, 1_696_118_400, 1_698_796_800,
                                1_701_388_800, 1_704_067_200)


def test_monthly_series_ingest_validates_on_the_calendar(client) -> None:
    result = client.simulate_post("/api/market/ingest/candles_closed_batch", json={
        "series_id": M, "candles": [candle(t) for t in (AUG, SEP, OCT)]})
    assert result.status_code == 200, result.text
    assert ingest(client, NOV, series=M).status_code == 200  # forming now, one month ahead is ok
    assert ingest(client, DEC, series=M).status_code == 200
    too_far = ingest(client, JAN, series=M)
    assert too_far.status_code == 422 and "future" in too_far.json["detail"]
    for bad in (SEP + 30 * 86400 - 86400, SEP + 31 * 86400, 31 * 86400 * 548):  # Sep 30, Oct 2
        result = ingest(client, bad, series=M)
        assert result.status_code == 422 and "not aligned to timeframe 1M" in result.json["detail"]
    body = client.simulate_get("/api/market/candles", params={"series_id": M, "since": SEP}).json
    assert [c["candle_time"] for c in body["candles"]] == [OCT, NOV, DEC]
    assert body["server_head_time"] == DEC
