"""Backtests on the real server (gunicorn + gevent): candles ingested over HTTP are exported to
freqtrade's format and backtested by real freqtrade, plus every error path over HTTP."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from trade_canvas.freqtrade.datadir import aggregate, read_binance_klines_csv

pytestmark = pytest.mark.integration
pytest.importorskip("freqtrade", reason="freqtrade is the backtest extra")

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests/fakes/recordings/spot_BTCUSDT_1m_2020-01-01_2020-01-03.csv"
SERIES_15M = "binance:spot:BTC/USDT:15m"
RUN_5M = {"strategy_name": "SampleStrategy", "pair": "BTC/USDT", "timeframe": "5m",
          "timerange": "20200101-20200102"}


@pytest.fixture
def ft_env(tmp_path: Path) -> dict[str, str]:
    shutil.copytree(ROOT / "freqtrade_user_data", tmp_path / "ft")
    return {"TRADE_CANVAS_FREQTRADE_ROOT": str(tmp_path),
            "TRADE_CANVAS_FREQTRADE_USERDIR": "ft",
            "TRADE_CANVAS_FREQTRADE_CONFIG": "ft/config.json"}


def ingest_15m(server) -> int:
    candles = aggregate(read_binance_klines_csv(RECORDING), 15 * 60)
    status, body = server.post("/api/market/ingest/candles_closed_batch", {
        "series_id": SERIES_15M, "publish_ws": False,
        "candles": [c.to_dict() for c in candles]})
    assert status == 200, body
    return len(candles)


def test_stored_candles_are_backtested_and_errors_map_to_statuses(start_server, ft_env) -> None:
    datadir = Path(ft_env["TRADE_CANVAS_FREQTRADE_ROOT"]) / "ft" / "data"
    server = start_server(**ft_env, TRADE_CANVAS_BACKTEST_REQUIRE_TRADES="1",
                          TRADE_CANVAS_BACKTEST_QUEUE_SIZE="0")
    count = ingest_15m(server)
    assert not (datadir / "BTC_USDT-15m.feather").exists()

    status, body = server.post("/api/backtest/run", {**RUN_5M, "timeframe": "15m",
                                                     "timerange": None})
    assert status == 200, body
    assert body["ok"] is True and body["series_id"] == SERIES_15M
    assert body["summary"]["total_trades"] > 0 and body["summary"]["timeframe"] == "15m"
    assert (datadir / "BTC_USDT-15m.feather").is_file()
    status, tfs = server.get("/api/backtest/pair_timeframes?pair=BTC/USDT")
    assert status == 200 and tfs["available_timeframes"] == ["1m", "5m", "15m"]
    status, results = server.get("/api/backtest/results")
    assert status == 200 and results["results"][0]["id"] == body["id"]
    assert count == 288

    assert server.post("/api/backtest/run", {**RUN_5M, "strategy_name": "no-such"}) == (
        400, {"detail": "Invalid strategy_name"})
    status, body = server.post("/api/backtest/run", {**RUN_5M, "timeframe": "2m"})
    assert status == 422 and "invalid timeframe" in body["detail"]
    status, body = server.post("/api/backtest/run", {**RUN_5M, "strategy_name": "Missing"})
    assert status == 404 and "Strategy not found" in body["detail"]
    status, body = server.post("/api/backtest/run", {**RUN_5M, "timeframe": "4h"})
    assert status == 422 and body["detail"]["message"] == "no_ohlcv_history"
    assert body["detail"]["hint"] and body["detail"]["exported_candles"] == 0

    # One slot, no queue: a second run while the first runs is refused.
    first: list[tuple[int, dict]] = []
    runner = threading.Thread(target=lambda: first.append(server.post("/api/backtest/run",
                                                                       RUN_5M)))
    runner.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        jobs = server.get("/api/backtest/results")[1]["results"]
        if any(job["state"] == "running" for job in jobs):
            break
        time.sleep(0.05)
    status, body = server.post("/api/backtest/run", RUN_5M)
    runner.join(60)
    assert status == 429 and "queue full" in body["detail"]
    assert first and first[0][0] == 200 and first[0][1]["ok"] is True


def test_timeout_answers_200_not_ok_with_exit_124(start_server, ft_env) -> None:
    server = start_server(**ft_env, TRADE_CANVAS_FREQTRADE_SUBPROCESS_TIMEOUT_S="0.3")
    status, body = server.post("/api/backtest/run", RUN_5M)
    assert status == 200, body
    assert body["ok"] is False and body["status"] == "timeout" and body["exit_code"] == 124
    assert "timeout after 0.3s" in body["stderr"]


def test_freqtrade_missing_is_503_with_install_hint(start_server, ft_env, tmp_path) -> None:
    server = start_server(**ft_env, TRADE_CANVAS_FREQTRADE_OFFLINE_MARKETS="0",
                          TRADE_CANVAS_FREQTRADE_BIN=str(tmp_path / "no-freqtrade"))
    for status, body in (server.post("/api/backtest/run", RUN_5M),
                         server.get("/api/backtest/strategies")):
        assert status == 503
        assert body["detail"]["message"] == "freqtrade_not_installed"
        assert "pip install" in body["detail"]["hint"]
    assert server.get("/api/backtest/pair_timeframes?pair=BTC/USDT")[0] == 200
