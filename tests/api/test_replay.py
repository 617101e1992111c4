"""Replay routes through the app (Falcon TestClient, real runtime and job runner on temp SQLite)."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from tests.api.test_factor import CANDLES, LAST, S, SMALL_WINDOWS, wait_green

BUILD = {"series_id": S, "window_candles": 250, "window_size": 100, "snapshot_interval": 25}


@pytest.fixture
def replay(make_client, tmp_path):
    client = make_client(TRADE_CANVAS_ARTIFACTS_DIR=str(tmp_path / "artifacts"), **SMALL_WINDOWS)
    result = client.simulate_post(
        "/api/market/ingest/candles_closed_batch",
        json={"series_id": S, "candles": [c.to_dict() for c in CANDLES]},
    )
    assert result.status_code == 200
    assert wait_green(client)["factor_head_time"] == LAST
    return client


def wait_done(client, job_id: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.simulate_get("/api/replay/status",
                                   params={"job_id": job_id, "include_preload": "1"}).json
        if body["status"] != "building" or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_prepare_echoes_the_aligned_head(replay) -> None:
    body = replay.simulate_post("/api/replay/prepare",
                                json={"series_id": S, "to_time": None, "window_candles": 2000}).json
    assert body == {"ok": True, "series_id": S, "requested_time": LAST, "aligned_time": LAST,
                    "window_candles": 2000, "factor_head_time": LAST, "overlay_head_time": LAST,
                    "computed": False}
    at = replay.simulate_post("/api/replay/prepare", json={"series_id": S, "to_time": LAST + 59})
    assert at.json["aligned_time"] == LAST and at.json["requested_time"] == LAST + 59
    none = replay.simulate_post("/api/replay/prepare",
                                json={"series_id": "binance:spot:NONE/USDT:1m"})
    assert (none.status_code, none.json) == (404, {"detail": "no_data"})


def test_whole_workflow_builds_once_and_serves_every_window(replay) -> None:
    first = replay.simulate_post("/api/replay/build", json=BUILD).json
    assert first["status"] in ("building", "done") and first["job_id"] == first["cache_key"]
    assert len(first["job_id"]) == 24
    status = wait_done(replay, first["job_id"])
    assert status["status"] == "done", status
    meta = status["metadata"]
    assert meta["total_candles"] == 250 and meta["window_size"] == 100
    assert meta["snapshot_interval"] == 25 and meta["to_candle_time"] == LAST
    assert meta["from_candle_time"] == CANDLES[-250].candle_time
    assert [f["factor_name"] for f in meta["factor_schema"]] == sorted(
        f["factor_name"] for f in meta["factor_schema"])
    again = replay.simulate_post("/api/replay/build", json=BUILD).json
    assert again == {"status": "done", "job_id": first["job_id"], "cache_key": first["job_id"]}
    bars = []
    for w in range(3):
        result = replay.simulate_get("/api/replay/window",
                                     params={"job_id": first["job_id"], "target_idx": w * 100})
        body = result.json
        window = body["window"]
        assert body["job_id"] == first["job_id"] and window["window_index"] == w
        assert window["start_idx"] == w * 100 and window["end_idx"] == min(250, (w + 1) * 100)
        assert [c["at_idx"] for c in window["draw_active_checkpoints"]] == list(
            range(w * 100, window["end_idx"], 25))
        first_t, last_t = window["kline"][0]["time"], window["kline"][-1]["time"]
        assert all(first_t < v["visible_time"] <= last_t for v in window["draw_catalog_patch"])
        assert all(v["visible_time"] <= first_t for v in window["draw_catalog_base"])
        times = [(r["candle_time"], r["factor_name"]) for r in body["factor_snapshots"]]
        assert times == sorted(times)
        bars += window["kline"]
    assert status["preload_window"]["window_index"] == 2
    assert [b["time"] for b in bars] == [c.candle_time for c in CANDLES[-250:]]


def test_window_is_gzip_when_accepted(replay) -> None:
    job = replay.simulate_post("/api/replay/build", json=BUILD).json["job_id"]
    wait_done(replay, job)
    result = replay.simulate_get("/api/replay/window", params={"job_id": job, "target_idx": 0},
                                 headers={"Accept-Encoding": "gzip, deflate"})
    assert result.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(result.content))["window"]["window_index"] == 0


def test_errors(replay) -> None:
    short = replay.simulate_post("/api/replay/build", json=dict(BUILD, window_candles=5000))
    assert (short.status_code, short.json) == (409, {"detail": "coverage_missing"})
    bad = replay.simulate_post("/api/replay/build", json=dict(BUILD, series_id="binance:spot:X:7q"))
    assert bad.status_code == 400
    for job_id in ("../../etc/passwd", "0" * 23, "f" * 24):
        assert replay.simulate_get("/api/replay/status", params={"job_id": job_id}).json == {
            "detail": "not_found"}
        missing = replay.simulate_get("/api/replay/window", params={"job_id": job_id,
                                                                    "target_idx": 0})
        assert missing.status_code == 404
    job = replay.simulate_post("/api/replay/build", json=BUILD).json["job_id"]
    wait_done(replay, job)
    out = replay.simulate_get("/api/replay/window", params={"job_id": job, "target_idx": 250})
    assert (out.status_code, out.json) == (422, {"detail": "target_idx_out_of_range"})


def test_gated_routes(make_client, tmp_path) -> None:
    client = make_client(TRADE_CANVAS_ENABLE_REPLAY_V1="0")
    assert client.simulate_get("/api/replay/status", params={"job_id": "a"}).status_code == 404
    assert client.simulate_post("/api/replay/prepare", json={"series_id": S}).status_code == 404
    off = make_client(TRADE_CANVAS_ENABLE_REPLAY_ENSURE_COVERAGE="0")
    result = off.simulate_post("/api/replay/ensure_coverage", json={"series_id": S})
    assert (result.status_code, result.json) == (404, {"detail": "not_found"})


def test_coverage_without_exchange_fails_and_can_rerun(replay) -> None:
    # A non-Binance series has no exchange to fetch from: the job fails, and may run again.
    series = "local:spot:ABC/USDT:1m"
    body = replay.simulate_post("/api/replay/ensure_coverage",
                                json={"series_id": series, "target_candles": 10}).json
    assert body["status"] == "building" and body["job_id"].startswith(f"coverage_{series}:")
    deadline = time.monotonic() + 10
    while True:
        status = replay.simulate_get("/api/replay/coverage_status",
                                     params={"job_id": body["job_id"]}).json
        if status["status"] != "building" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status["status"] == "error" and "coverage_missing" in status["error"]
    assert status["candles_ready"] == 0 and status["required_candles"] == 10
    rerun = replay.simulate_post("/api/replay/ensure_coverage",
                                 json={"series_id": series, "target_candles": 10}).json
    assert rerun["status"] == "building"
    unknown = replay.simulate_get("/api/replay/coverage_status", params={"job_id": "nope"})
    assert unknown.status_code == 404
