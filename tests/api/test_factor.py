"""HTTP contract of the factor endpoints (Falcon TestClient, real runtime on temp SQLite)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.api.conftest import NOW
from tests.unit.test_factor_engine import random_walk
from trade_canvas.series import parse_timeframe

S = "binance:futures:BTC/USDT:1m"
BASE = NOW - NOW % 60 - 60 * 1000
CANDLES = [dataclasses.replace(c, candle_time=BASE + c.candle_time) for c in random_walk(3, 300)]
LAST = CANDLES[-1].candle_time
SMALL_WINDOWS = {
    "TRADE_CANVAS_PIVOT_WINDOW_MAJOR": "3", "TRADE_CANVAS_PIVOT_WINDOW_MINOR": "1",
}


def get(client, path: str, **params):
    return client.simulate_get(path, params={"series_id": S, **params})


def wait_green(client, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = get(client, "/api/factor/health").json
        if body["status"] == "green" or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


@pytest.fixture
def loaded(make_client):
    client = make_client(**SMALL_WINDOWS)
    result = client.simulate_post(
        "/api/market/ingest/candles_closed_batch",
        json={"series_id": S, "candles": [c.to_dict() for c in CANDLES]},
    )
    assert result.status_code == 200
    assert wait_green(client)["factor_head_time"] == LAST
    return client


def test_catalog_lists_factors_in_dependency_order(client) -> None:
    body = client.simulate_get("/api/factor/catalog").json
    assert body["schema_version"] == 1
    assert [f["key"] for f in body["factors"]] == ["pivot", "pen", "zhongshu", "anchor"]
    assert body["factors"][0]["sub_features"][1] == {
        "key": "pivot.minor", "label": "Minor", "default_visible": False
    }


def test_health_of_empty_series_is_gray(client) -> None:
    body = get(client, "/api/factor/health").json
    assert (body["status"], body["status_reason"]) == ("gray", "no_store_head")
    assert body["timeframe_seconds"] == 60 and body["factor_delay_candles"] is None


def test_health_is_green_with_actor_view(loaded) -> None:
    body = get(loaded, "/api/factor/health").json
    assert body["store_head_time"] == body["factor_head_time"] == body["overlay_head_time"] == LAST
    assert body["max_delay_candles"] == 0 and body["status_reason"] == "up_to_date"
    assert body["factor_actor"]["head_time"] == LAST and body["factor_actor"]["lag_seconds"] == 0


def test_draw_delta_first_frame_then_empty_with_same_cursor(loaded) -> None:
    body = get(loaded, "/api/draw/delta").json
    assert body["to_candle_time"] == LAST and body["to_candle_id"] == f"{S}:{LAST}"
    patch = body["instruction_catalog_patch"]
    assert patch and body["active_ids"] == sorted(body["active_ids"])
    latest = {row["instruction_id"]: row for row in patch}
    assert set(body["active_ids"]) <= set(latest)
    assert {"pen.confirmed", "pen.extending"} <= set(body["active_ids"])
    assert body["next_cursor"] == {"version_id": patch[-1]["version_id"], "point_time": None}
    again = get(loaded, "/api/draw/delta", cursor_version_id=body["next_cursor"]["version_id"]).json
    assert again["instruction_catalog_patch"] == []
    assert again["next_cursor"] == body["next_cursor"]
    assert again["active_ids"] == body["active_ids"]


def test_draw_delta_at_time_aligns_and_filters_by_visibility(loaded) -> None:
    at = CANDLES[150].candle_time + 30
    body = get(loaded, "/api/draw/delta", at_time=at).json
    assert body["to_candle_time"] == CANDLES[150].candle_time
    assert all(row["visible_time"] <= at for row in body["instruction_catalog_patch"])
    empty = get(loaded, "/api/draw/delta", at_time=BASE - 60 * 5000, cursor_version_id=7).json
    assert empty["to_candle_time"] is None and empty["next_cursor"]["version_id"] == 7


def test_slices_show_factors_at_head_and_in_the_past(loaded) -> None:
    body = get(loaded, "/api/factor/slices", at_time=LAST).json
    assert body["candle_id"] == f"{S}:{LAST}" and body["at_time"] == LAST
    assert body["factors"][:2] == ["pivot", "pen"]
    pen = body["snapshots"]["pen"]
    assert pen["meta"]["factor_name"] == "pen" and pen["history"]["confirmed"]
    assert set(pen["head"]) >= {"extending", "candidate"}
    past = get(loaded, "/api/factor/slices", at_time=CANDLES[100].candle_time).json
    majors = past["snapshots"]["pivot"]["history"]["major"]
    assert all(p["visible_time"] <= CANDLES[100].candle_time for p in majors)
    before = get(loaded, "/api/factor/slices", at_time=BASE).json
    assert before == {"schema_version": 1, "series_id": S, "at_time": BASE, "candle_id": None,
                      "factors": [], "snapshots": {}}


def test_lagging_ledger_gives_409_and_health_says_by_how_much(loaded) -> None:
    later = [dataclasses.replace(c, candle_time=LAST + 60 * (i + 1)) for i, c in enumerate(CANDLES[:5])]
    loaded.runtime.store.upsert_candles(S, later)  # stored behind the factor actor's back
    draw = get(loaded, "/api/draw/delta")
    assert (draw.status_code, draw.json) == (409, {"detail": "ledger_out_of_sync:overlay"})
    head = get(loaded, "/api/factor/slices", at_time=LAST + 300)
    assert (head.status_code, head.json) == (409, {"detail": "ledger_out_of_sync:factor"})
    assert get(loaded, "/api/factor/slices", at_time=LAST).status_code == 200
    health = get(loaded, "/api/factor/health").json
    assert health["factor_delay_seconds"] == 300 and health["factor_delay_candles"] == 5
    assert (health["status"], health["status_reason"]) == ("red", "lagging_many_candles")


@pytest.mark.parametrize(
    "path,params,detail",
    [
        ("/api/factor/slices", {"series_id": S}, "at_time is required"),
        ("/api/factor/slices", {"series_id": S, "at_time": "-1"},
         "at_time must be an integer in 0..253402300799"),
        ("/api/factor/slices", {"series_id": S, "at_time": str(2**63)},
         "at_time must be an integer in 0..253402300799"),
        ("/api/factor/slices", {"series_id": S, "at_time": "1_0"},
         "at_time must be an integer in 0..253402300799"),
        ("/api/draw/delta", {"series_id": S, "at_time": str(2**63)},
         "at_time must be an integer in 0..253402300799"),
        ("/api/factor/slices", {"series_id": S, "at_time": "1", "window_candles": "0"},
         "window_candles must be an integer in 1..5000"),
        ("/api/draw/delta", {"series_id": S, "window_candles": "5001"},
         "window_candles must be an integer in 1..5000"),
        ("/api/draw/delta", {"series_id": S, "cursor_version_id": "x"},
         "cursor_version_id must be an integer in 0..9223372036854775807"),
        ("/api/draw/delta", {"series_id": S, "cursor_version_id": str(2**70)},
         "cursor_version_id must be an integer in 0..9223372036854775807"),
        ("/api/draw/delta", {"series_id": S, "cursor_version_id": str(2**63)},
         "cursor_version_id must be an integer in 0..9223372036854775807"),
        ("/api/factor/health", {}, "series_id is required"),
    ],
)
def test_bad_parameters_are_422(client, path: str, params: dict, detail: str) -> None:
    result = client.simulate_get(path, params=params)
    assert (result.status_code, result.json) == (422, {"detail": detail})


def test_bad_series_id_is_422(client) -> None:
    result = client.simulate_get("/api/factor/health", params={"series_id": "nope"})
    assert result.status_code == 422


def test_monthly_series_has_factors_slices_and_draws(make_client) -> None:
    """30 calendar months (2021-01 .. 2023-06) through HTTP ingest, the factor actor and reads."""
    month, monthly = parse_timeframe("1M"), "binance:futures:BTC/USDT:1M"
    candles = [dataclasses.replace(c, candle_time=month.shift(1_609_459_200, i))
               for i, c in enumerate(random_walk(3, 30))]
    last = candles[-1].candle_time
    client = make_client(**SMALL_WINDOWS)
    result = client.simulate_post("/api/market/ingest/candles_closed_batch", json={
        "series_id": monthly, "candles": [c.to_dict() for c in candles]})
    assert result.status_code == 200, result.text
    deadline = time.monotonic() + 5
    while True:
        health = client.simulate_get("/api/factor/health", params={"series_id": monthly}).json
        if health["status"] == "green" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert health["factor_head_time"] == last and health["max_delay_candles"] == 0
    slices = client.simulate_get("/api/factor/slices",
                                 params={"series_id": monthly, "at_time": last + 86400}).json
    assert slices["candle_id"] == f"{monthly}:{last}" and slices["snapshots"]["pivot"]
    # A 3-candle window ending mid-month holds that month and the two before it.
    draw = client.simulate_get("/api/draw/delta", params={
        "series_id": monthly, "at_time": candles[20].candle_time + 86400, "window_candles": 3}).json
    assert draw["to_candle_time"] == candles[20].candle_time
    assert draw["instruction_catalog_patch"]
