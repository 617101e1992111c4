"""The shipped smoke-test strategies trade on the shipped data, spot and futures (real freqtrade)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.api.test_backtest import REPO, ft_env, no_internet  # noqa: F401 (fixtures)

pytest.importorskip("freqtrade", reason="freqtrade is the backtest extra")


def test_always_trade_spot(make_client, ft_env) -> None:  # noqa: F811
    client = make_client(**ft_env)
    resp = client.simulate_post("/api/backtest/run", json={
        "strategy_name": "TradeCanvasAlwaysTradeSpotStrategy", "pair": "BTC/USDT",
        "timeframe": "1m", "timerange": "20200101-20200102"})
    assert resp.status_code == 200, resp.json
    assert resp.json["ok"] is True and resp.json["summary"]["total_trades"] > 100


def test_always_trade_futures(make_client, ft_env, tmp_path: Path) -> None:  # noqa: F811
    config = json.loads((REPO / "freqtrade_user_data/config.json").read_text())
    config.update(trading_mode="futures", margin_mode="isolated")
    config["exchange"]["pair_whitelist"] = ["XRP/USDT:USDT"]
    (tmp_path / "ft" / "futures.json").write_text(json.dumps(config))
    client = make_client(**{**ft_env, "TRADE_CANVAS_FREQTRADE_CONFIG": "ft/futures.json"})
    resp = client.simulate_post("/api/backtest/run", json={
        "strategy_name": "TradeCanvasAlwaysTradeFuturesStrategy", "pair": "XRP/USDT:USDT",
        "timeframe": "5m", "timerange": "20211116-20211117"})
    assert resp.status_code == 200, resp.json
    assert resp.json["ok"] is True and resp.json["summary"]["total_trades"] > 20
