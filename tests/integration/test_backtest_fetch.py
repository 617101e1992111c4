"""A backtest over a timerange the store lacks fetches the closed candles over REST first."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("freqtrade", reason="freqtrade is the backtest extra")

ROOT = Path(__file__).resolve().parents[2]
RUN = {"strategy_name": "TradeCanvasAlwaysTradeSpotStrategy", "pair": "BTC/USDT",
       "timeframe": "15m", "timerange": "20200101-20200102"}


@pytest.fixture
def ft_env(tmp_path: Path) -> dict[str, str]:
    shutil.copytree(ROOT / "freqtrade_user_data", tmp_path / "ft")
    return {"TRADE_CANVAS_FREQTRADE_ROOT": str(tmp_path), "TRADE_CANVAS_FREQTRADE_USERDIR": "ft",
            "TRADE_CANVAS_FREQTRADE_CONFIG": "ft/config.json",
            "TRADE_CANVAS_BACKTEST_FETCH_MISSING": "1"}


def test_missing_candles_are_fetched_with_progress(start_server, start_replay, ft_env) -> None:
    # replay clock at 2020-01-03 00:00: the timerange's two days (end day included) are closed
    exchange = start_replay("--anchor", "recorded", "--start-ms", "1578009600000")
    server = start_server(**ft_env, **exchange.env())
    progress: list[dict] = []

    def watch() -> None:
        while not done.is_set():
            for job in server.get("/api/backtest/results")[1]["results"]:
                if job.get("progress"):
                    progress.append(job["progress"])
            time.sleep(0.05)

    done = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        status, body = server.post("/api/backtest/run", RUN)
    finally:
        done.set()
        watcher.join()
    assert status == 200, body
    assert body["ok"] is True and body["summary"]["total_trades"] > 10
    _, stored = server.get("/api/market/candles?series_id=binance:spot:BTC/USDT:15m&limit=5000")
    times = [c["candle_time"] for c in stored["candles"]]
    assert len(times) == 192 and times[-1] == 1578009600 - 900  # every 15m candle of both days
    assert {p["step"] for p in progress} & {"fetching_candles", "exporting", "running"}
    _, listing = server.get("/api/backtest/results")
    assert listing["results"][0]["progress"]["step"] == "running"


def test_unreachable_exchange_is_a_clear_502(start_server, ft_env) -> None:
    server = start_server(**ft_env, TRADE_CANVAS_BINANCE_SPOT_BASE_URL="http://127.0.0.1:9")
    status, body = server.post("/api/backtest/run", {**RUN, "timeframe": "30m"})
    assert status == 502, body
    assert body["detail"]["message"] == "exchange_unreachable"
    assert "exchange unreachable" in body["detail"]["error"]
