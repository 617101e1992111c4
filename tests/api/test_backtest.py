"""Backtest API on a booted runtime, against real freqtrade on a tmp copy of freqtrade_user_data."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pykka
import pytest

from trade_canvas.actors.messages import RunBacktest
from trade_canvas.config import load_settings
from trade_canvas.freqtrade import commands as bt
from trade_canvas.freqtrade.values import BacktestResult
from trade_canvas.http.backtest import INSTALL_HINT, run_status
from trade_canvas.runtime.backtest import backtest_settings

REPO = Path(__file__).resolve().parents[2]
RUN = {"strategy_name": "SampleStrategy", "pair": "BTC/USDT", "timeframe": "5m",
       "timerange": "20200101-20200102"}

freqtrade = pytest.importorskip("freqtrade", reason="freqtrade is the backtest extra")


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """freqtrade children inherit these: any proxy-honouring internet attempt fails at once."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")


@pytest.fixture
def ft_env(tmp_path: Path) -> dict[str, str]:
    shutil.copytree(REPO / "freqtrade_user_data", tmp_path / "ft")
    return {"TRADE_CANVAS_FREQTRADE_ROOT": str(tmp_path),
            "TRADE_CANVAS_FREQTRADE_USERDIR": "ft",
            "TRADE_CANVAS_FREQTRADE_CONFIG": "ft/config.json",
            "TRADE_CANVAS_FREQTRADE_SUBPROCESS_TIMEOUT_S": "60"}


def test_default_settings_point_at_the_shipped_user_dir() -> None:
    mapped = backtest_settings(load_settings({}), cwd=REPO)
    assert mapped.root == REPO
    assert mapped.userdir == REPO / "freqtrade_user_data"
    assert mapped.config_path == REPO / "freqtrade_user_data" / "config.json"
    assert mapped.datadir is None and mapped.strategy_path is None
    assert mapped.offline_markets and mapped.subprocess_timeout_s == 120.0
    assert (mapped.max_concurrent, mapped.queue_size, mapped.require_trades) == (1, 4, False)


def test_relative_paths_resolve_against_the_root(tmp_path: Path) -> None:
    mapped = backtest_settings(load_settings({
        "TRADE_CANVAS_FREQTRADE_ROOT": "sub", "TRADE_CANVAS_FREQTRADE_DATADIR": "u/d",
        "TRADE_CANVAS_FREQTRADE_STRATEGY_PATH": "/abs/strats",
        "TRADE_CANVAS_BACKTEST_MAX_CONCURRENT": "2", "TRADE_CANVAS_BACKTEST_QUEUE_SIZE": "0",
    }), cwd=tmp_path)
    assert mapped.root == tmp_path / "sub" and mapped.datadir == tmp_path / "sub" / "u" / "d"
    assert mapped.strategy_path == Path("/abs/strats")
    assert (mapped.max_concurrent, mapped.queue_size) == (2, 0)


@pytest.mark.parametrize("status, detail, code", [
    ("ok", {}, 200),
    ("failed", {"message": "freqtrade_failed"}, 200),
    ("timeout", {"message": "timeout", "timeout_s": 1}, 200),
    ("no_trades", {"message": "no_trades", "total_trades": 0}, 422),
    ("no_ohlcv_history", {"message": "no_ohlcv_history", "hint": "h"}, 422),
    ("no_backtest_export", {"message": "no_backtest_export"}, 422),
    ("bad_backtest_export", {"message": "bad_backtest_export"}, 422),
    ("strategy_not_found", {"message": "strategy_not_found", "strategy": "X"}, 404),
    ("error", {"message": "freqtrade_unavailable", "error": "no python"}, 503),
    ("error", {"message": "internal_error", "error": "boom"}, 500),
])
def test_run_status_table(status: str, detail: dict, code: int) -> None:
    got, body = run_status(BacktestResult("j1", status, 0, 1, detail=detail))  # type: ignore[arg-type]
    assert got == code
    if code == 200:
        assert body["ok"] is (status == "ok") and body["id"] == "j1"
    elif code in (422, 500):
        assert body["message"] == detail["message"] and body["id"] == "j1"
    elif code == 503:
        assert body["hint"] == INSTALL_HINT


@pytest.mark.parametrize("body, code, detail", [
    ({**RUN, "strategy_name": "1bad"}, 400, "Invalid strategy_name"),
    ({**RUN, "strategy_name": "../x"}, 400, "Invalid strategy_name"),
    ({**RUN, "strategy_name": "SampleStrategy\n"}, 400, "Invalid strategy_name"),
    ({**RUN, "timerange": "20200101-20200103\n"}, 422, "invalid timerange"),
    ({k: v for k, v in RUN.items() if k != "pair"}, 422, "pair is required"),
    ({**RUN, "pair": "BTCUSDT"}, 422, "invalid pair"),
    ({**RUN, "timeframe": "7m"}, 422, "invalid timeframe"),
    ({**RUN, "timerange": "2020-01-01"}, 422, "invalid timerange"),
    ({**RUN, "timerange": "20200230-"}, 422, "does not exist"),
    ({**RUN, "timerange": 5}, 422, "timerange must be"),
])
def test_run_rejects_bad_input(make_client, ft_env, body, code, detail) -> None:
    resp = make_client(**ft_env).simulate_post("/api/backtest/run", json=body)
    assert resp.status_code == code and detail in resp.json["detail"]


def test_pair_timeframes(make_client, ft_env) -> None:
    client = make_client(**ft_env)
    resp = client.simulate_get("/api/backtest/pair_timeframes", params={"pair": "BTC/USDT"})
    assert resp.status_code == 200
    assert resp.json == {"pair": "BTC/USDT", "trading_mode": "spot",
                         "datadir": str(Path(ft_env["TRADE_CANVAS_FREQTRADE_ROOT"]) / "ft/data"),
                         "available_timeframes": ["1m", "5m"]}
    assert client.simulate_get("/api/backtest/pair_timeframes").status_code == 422
    bad = client.simulate_get("/api/backtest/pair_timeframes", params={"pair": "BTC"})
    assert bad.status_code == 422


def test_missing_config_is_a_500(make_client, ft_env) -> None:
    client = make_client(**{**ft_env, "TRADE_CANVAS_FREQTRADE_CONFIG": "nope.json"})
    resp = client.simulate_post("/api/backtest/run", json=RUN)
    assert resp.status_code == 500 and "Freqtrade config not found" in resp.json["detail"]


def test_missing_history_is_a_422_with_hint_and_store_series(make_client, ft_env) -> None:
    resp = make_client(**ft_env).simulate_post("/api/backtest/run", json={**RUN, "timeframe": "1h"})
    assert resp.status_code == 422
    detail = resp.json["detail"]
    assert detail["message"] == "no_ohlcv_history" and detail["hint"] == bt.NO_HISTORY_HINT
    assert detail["available_timeframes"] == ["1m", "5m"]
    assert detail["series_id"] == "binance:spot:BTC/USDT:1h" and detail["exported_candles"] == 0
    assert "download-data" in detail["download_data_cmd"]


def test_strategies_and_a_real_run_with_results(make_client, ft_env) -> None:
    client = make_client(**ft_env)
    strategies = client.simulate_get("/api/backtest/strategies", params={"recursive": "false"})
    assert strategies.status_code == 200 and strategies.json == {"strategies": [
        "SampleStrategy", "TradeCanvasAlwaysTradeFuturesStrategy",
        "TradeCanvasAlwaysTradeSpotStrategy"]}
    assert client.simulate_get("/api/backtest/strategies?recursive=maybe").status_code == 422
    resp = client.simulate_post("/api/backtest/run", json=RUN)
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["ok"] is True and body["exit_code"] == 0 and body["status"] == "ok"
    assert {"duration_ms", "command", "stdout", "stderr", "id"} <= set(body)
    assert body["summary"]["total_trades"] > 0
    listing = client.simulate_get("/api/backtest/results").json["results"]
    assert [job["id"] for job in listing] == [body["id"]]
    assert "stdout" not in listing[0]["result"] and listing[0]["result"]["summary"]
    one = client.simulate_get(f"/api/backtest/results/{body['id']}")
    assert one.status_code == 200 and one.json["result"]["stdout"] == body["stdout"]
    assert client.simulate_get("/api/backtest/results/nope").status_code == 404


def test_queue_full_is_a_429(make_client, ft_env) -> None:
    client = make_client(**ft_env, TRADE_CANVAS_BACKTEST_QUEUE_SIZE="0")
    busy: pykka.Future[BacktestResult] = pykka.ThreadingFuture()
    request = bt.validate_request(**RUN)
    client.runtime.backtests.actor.ask(RunBacktest(request, busy), timeout=5)
    resp = client.simulate_post("/api/backtest/run", json=RUN)
    assert resp.status_code == 429 and "queue full" in resp.json["detail"]
    assert busy.get(timeout=60).status == "ok"


def test_freqtrade_missing_is_a_503_with_hint(make_client, ft_env, monkeypatch) -> None:
    client = make_client(**ft_env)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "freqtrade" else real(name, *a))
    for resp in (client.simulate_post("/api/backtest/run", json=RUN),
                 client.simulate_get("/api/backtest/strategies")):
        assert resp.status_code == 503
        assert resp.json["detail"]["message"] == "freqtrade_not_installed"
        assert resp.json["detail"]["hint"] == INSTALL_HINT
    # market data is unaffected
    assert client.simulate_get("/api/health").status_code == 200
