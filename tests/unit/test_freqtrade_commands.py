"""Pure backtest module: validation tables, command lines, config, data paths, parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trade_canvas.errors import InvalidInput
from trade_canvas.freqtrade import commands as bt
from trade_canvas.freqtrade import offline
from trade_canvas.series import parse_timeframe

REQUEST = bt.BacktestRequest("SampleStrategy", "BTC/USDT", "5m", "20200101-20200103")


@pytest.mark.parametrize("name", ["SampleStrategy", "_x", "A1_b2", "a"])
def test_valid_strategy_names(name: str) -> None:
    assert bt.validate_strategy_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "a;rm", "../x", "a.b", None, 3,
                                  "SampleStrategy\n", "SampleStrategy\r\n"])
def test_invalid_strategy_names(name: object) -> None:
    with pytest.raises(InvalidInput, match="strategy_name"):
        bt.validate_strategy_name(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BTC/USDT", bt.PairSpec("BTC", "USDT")),
        ("BTC/USDT:USDT", bt.PairSpec("BTC", "USDT", "USDT")),
        ("1000SHIB/USDT", bt.PairSpec("1000SHIB", "USDT")),
    ],
)
def test_parse_pair(text: str, expected: bt.PairSpec) -> None:
    assert bt.parse_pair(text) == expected
    assert bt.parse_pair(text).text == text


@pytest.mark.parametrize(
    "text", ["", "BTCUSDT", "BTC/", "/USDT", "BTC/USDT:", "BTC/USDT:USDT:X", " BTC/USDT",
             "BTC/US DT", "BTC/USDT;ls", None, "BTC/USDT\n"],
)
def test_invalid_pairs(text: object) -> None:
    with pytest.raises(InvalidInput, match="pair"):
        bt.parse_pair(text)


@pytest.mark.parametrize("tf", ["1m", "5m", "1h", "4h", "1d", "1w", "1M"])
def test_valid_timeframes(tf: str) -> None:
    assert bt.validate_timeframe(tf) == tf


@pytest.mark.parametrize("tf", ["", "5", "2m", "1s", "0m", "5M", "1H", "60m", None])
def test_invalid_timeframes(tf: object) -> None:
    with pytest.raises(InvalidInput, match="timeframe"):
        bt.validate_timeframe(tf)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("", None), ("20200101-20200103", "20200101-20200103"),
     ("20200101-", "20200101-"), ("-20200103", "-20200103"),
     ("20200101-20200101", "20200101-20200101"), ("20240229-", "20240229-")],
)
def test_valid_timeranges(text: object, expected: str | None) -> None:
    assert bt.validate_timerange(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("-", "expected"), ("2020-01-01", "expected"), ("20200101", "expected"),
     ("20200101-2020010", "expected"), ("20201301-", "does not exist"),
     ("20230229-", "does not exist"), ("20200103-20200101", "starts after"),
     ("1577836800-", "expected"), (20200101, "expected"),
     ("20200101-20200103\n", "expected"), ("\u0662\u0660\u0662\u0660\u0660\u0661\u0660\u0661-", "expected")],
)
def test_invalid_timeranges(text: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        bt.validate_timerange(text)


def test_validate_request_normalises_nothing_and_checks_all_fields() -> None:
    assert bt.validate_request("SampleStrategy", "BTC/USDT", "5m", "20200101-20200103") == REQUEST
    with pytest.raises(InvalidInput, match="timeframe"):
        bt.validate_request("SampleStrategy", "BTC/USDT", "7m")


@pytest.mark.parametrize(
    ("pair", "mode", "expected"),
    [("BTC/USDT", "spot", "BTC/USDT"), ("BTC/USDT", "futures", "BTC/USDT:USDT"),
     ("BTC/USDT:USDT", "futures", "BTC/USDT:USDT")],
)
def test_freqtrade_pair(pair: str, mode: bt.TradingMode, expected: str) -> None:
    assert bt.freqtrade_pair(pair, mode).text == expected


def test_futures_pair_in_spot_config_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="futures pair"):
        bt.freqtrade_pair("BTC/USDT:USDT", "spot")


@pytest.mark.parametrize(
    ("base", "mode"), [({}, "spot"), ({"trading_mode": "spot"}, "spot"),
                       ({"trading_mode": "futures"}, "futures")],
)
def test_trading_mode_of(base: dict[str, str], mode: str) -> None:
    assert bt.trading_mode_of(base) == mode


def test_margin_trading_mode_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="trading_mode"):
        bt.trading_mode_of({"trading_mode": "margin"})


@pytest.mark.parametrize(
    ("pair", "mode", "series_id"),
    [("BTC/USDT", "spot", "binance:spot:BTC/USDT:5m"),
     ("BTC/USDT:USDT", "futures", "binance:futures:BTC/USDT:5m")],
)
def test_series_id_for(pair: str, mode: bt.TradingMode, series_id: str) -> None:
    assert bt.series_id_for(bt.parse_pair(pair), "5m", mode) == series_id


def test_series_id_for_weeks_and_calendar_months() -> None:
    assert bt.series_id_for(bt.parse_pair("BTC/USDT"), "1M", "spot") == "binance:spot:BTC/USDT:1M"
    assert bt.series_id_for(bt.parse_pair("BTC/USDT"), "1w", "spot") == "binance:spot:BTC/USDT:1w"
    with pytest.raises(InvalidInput):
        bt.series_id_for(bt.parse_pair("BTC/USDT"), "5s", "spot")


def test_export_window_in_calendar_months() -> None:
    month = parse_timeframe("1M")
    head = 1_709_251_200  # 2024-03-01
    # The newest 3 months up to March: January on; with a timerange, 2 warm-up months before it.
    assert bt.export_window(None, month, head, 3, 2) == (1_704_067_200, head)
    assert bt.export_window("20240201-", month, head, 100, 2) == (1_701_388_800, head)  # Dec 1


def test_data_paths() -> None:
    datadir = Path("/u/data")
    spot = bt.expected_data_paths(datadir, bt.parse_pair("BTC/USDT"), "5m", "spot")
    assert spot == [Path("/u/data/BTC_USDT-5m.feather"), Path("/u/data/BTC_USDT-5m.parquet")]
    fut = bt.data_file_path(datadir, bt.parse_pair("BTC/USDT:USDT"), "1h", "futures")
    assert fut == Path("/u/data/futures/BTC_USDT_USDT-1h-futures.feather")
    month = bt.data_file_path(datadir, bt.parse_pair("BTC/USDT"), "1M", "spot")
    assert month.name == "BTC_USDT-1Mo.feather"


def test_available_timeframes() -> None:
    names = ["BTC_USDT-5m.feather", "BTC_USDT-1m.parquet", "BTC_USDT-1h.json",
             "ETH_USDT-4h.feather",
             "BTC_USDT-1Mo.feather", "BTC_USDT-5m.parquet", "BTC_USDT_USDT-1d-futures.feather"]
    assert bt.available_timeframes(names, bt.parse_pair("BTC/USDT"), "spot") == ["1m", "5m", "1M"]
    assert bt.available_timeframes(
        names, bt.parse_pair("BTC/USDT:USDT"), "futures") == ["1d"]


def test_download_data_command() -> None:
    cmd = bt.download_data_command("freqtrade", Path("/c.json"), Path("/u"),
                                   bt.parse_pair("BTC/USDT:USDT"), "5m", "futures")
    assert cmd == ("freqtrade download-data -c /c.json --userdir /u --pairs BTC/USDT:USDT "
                   "--timeframes 5m --trading-mode futures")


def test_child_command() -> None:
    assert bt.child_command("/py", "ft", True, ["x"]) == [
        "/py", "-m", "trade_canvas.freqtrade.offline", "x"]
    assert bt.child_command("/py", "/bin/freqtrade", False, ["x"]) == ["/bin/freqtrade", "x"]


def test_list_strategies_args() -> None:
    assert bt.list_strategies_args(Path("/u"), Path("/s"), True) == [
        "list-strategies", "-1", "--logfile", "/dev/null", "--no-color", "--userdir", "/u",
        "--strategy-path", "/s", "--recursive-strategy-search"]
    assert bt.list_strategies_args(None, None, False)[-1] == "--no-color"


def test_backtesting_args() -> None:
    args = bt.backtesting_args(REQUEST, bt.parse_pair("BTC/USDT"), config=Path("/u/c.json"),
                               datadir=Path("/u/data"), export_dir=Path("/u/out"),
                               userdir=Path("/u"), strategy_path=None)
    assert args == [
        "backtesting", "--strategy", "SampleStrategy", "--logfile", "/dev/null", "--no-color",
        "--userdir", "/u", "--timeframe", "5m", "--pairs", "BTC/USDT", "-c", "/u/c.json",
        "--datadir", "/u/data", "--timerange", "20200101-20200103", "--export", "trades",
        "--backtest-directory", "/u/out"]


def test_build_config_spot_keeps_strategy_settings_and_drops_secrets() -> None:
    base = {"exchange": {"name": "binance", "key": "SECRET", "pair_blacklist": ["X/USDT"]},
            "telegram": {"token": "T"}, "max_open_trades": 1, "stoploss": -0.2}
    config = bt.build_config(base, REQUEST, bt.parse_pair("BTC/USDT"), Path("/u/data"))
    assert config["trading_mode"] == "spot" and config["margin_mode"] == ""
    assert config["exchange"] == {"name": "binance", "ccxt_config": {}, "ccxt_async_config": {},
                                  "pair_whitelist": ["BTC/USDT"], "pair_blacklist": ["X/USDT"]}
    assert "telegram" not in config and "SECRET" not in bt.render_config(config)
    assert config["stoploss"] == -0.2 and "minimal_roi" not in config
    assert config["max_open_trades"] == 1 and config["dry_run"] is True
    assert config["timeframe"] == "5m" and config["datadir"] == "/u/data"
    assert json.loads(bt.render_config(config)) == config


def test_build_config_futures() -> None:
    pair = bt.freqtrade_pair("XRP/USDT", "futures")
    config = bt.build_config({"trading_mode": "futures"}, REQUEST, pair, Path("/d"))
    assert config["trading_mode"] == "futures" and config["margin_mode"] == "isolated"
    assert config["exchange"]["pair_whitelist"] == ["XRP/USDT:USDT"]
    assert config["entry_pricing"]["use_order_book"] is True


def test_parse_strategy_list() -> None:
    out = "Zeta\n  Alpha \nnot a name\nAlpha\n2026-01-01 - INFO - x\n\n"
    assert bt.parse_strategy_list(out) == ["Alpha", "Zeta"]


@pytest.mark.parametrize(
    ("names", "expected"),
    [(["backtest-result-1.json", "backtest-result-1_config.json", "x.py"],
      "backtest-result-1.json"),
     (["tc-2.json", "tc-2_config.json"], "tc-2.json"), (["a_config.json", "b.feather"], None)],
)
def test_pick_result_member(names: list[str], expected: str | None) -> None:
    assert bt.pick_result_member(names) == expected


RESULT = {"strategy": {"SampleStrategy": {
    "total_trades": 4, "wins": 3, "losses": 1, "draws": 0, "winrate": 0.75,
    "profit_total_abs": 12.5, "profit_total": 0.0125, "max_drawdown_abs": 3.0,
    "max_drawdown_account": 0.003, "stake_currency": "USDT", "starting_balance": 1000,
    "final_balance": 1012.5, "backtest_start": "2020-01-01 00:00:00",
    "backtest_end": "2020-01-03 00:00:00", "timeframe": "5m", "trades": []}},
    "strategy_comparison": []}


def test_parse_result_json() -> None:
    summary = bt.parse_result_json(json.dumps(RESULT), "SampleStrategy")
    assert summary.to_dict() == {
        "strategy": "SampleStrategy", "total_trades": 4, "wins": 3, "losses": 1, "draws": 0,
        "win_rate_pct": 75.0, "profit_total_abs": 12.5, "profit_total_pct": 1.25,
        "max_drawdown_abs": 3.0, "max_drawdown_pct": 0.3, "stake_currency": "USDT",
        "starting_balance": 1000.0, "final_balance": 1012.5,
        "backtest_start": "2020-01-01 00:00:00", "backtest_end": "2020-01-03 00:00:00",
        "timeframe": "5m"}


def test_parse_result_counts_trades_when_total_missing() -> None:
    result = {"strategy": {"S": {"trades": [{}, {}]}}}
    summary = bt.parse_result_json(json.dumps(result), "S")
    assert summary.total_trades == 2 and summary.win_rate_pct is None


@pytest.mark.parametrize(
    ("text", "message"),
    [("nope", "not JSON"), ("[]", "not a JSON object"), ("{}", "no 'strategy'"),
     (json.dumps({"strategy": {"A": {}, "B": {}}}), "no entry for strategy")],
)
def test_parse_result_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        bt.parse_result_json(text, "S")


def test_tail() -> None:
    assert bt.tail("abcdef", 3) == "def" and bt.tail("ab", 3) == "ab"


# --- freqtrade/offline.py's pure parts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "pairs"),
    [(["backtesting", "--pairs", "BTC/USDT", "ETH/USDT", "-c", "x"], ["BTC/USDT", "ETH/USDT"]),
     (["-p", "XRP/USDT:USDT"], ["XRP/USDT:USDT"]), (["--pairs=BTC/USDT"], ["BTC/USDT"]),
     (["list-strategies", "-1"], [])],
)
def test_pairs_from_args(args: list[str], pairs: list[str]) -> None:
    assert offline.pairs_from_args(args) == pairs


def test_synthesize_markets() -> None:
    markets = {m["symbol"]: m for m in offline.synthesize_markets(["BTC/USDT", "BTC/USDT:USDT"])}
    assert set(markets) == {"BTC/USDT", "BTC/USDT:USDT"}
    spot, swap = markets["BTC/USDT"], markets["BTC/USDT:USDT"]
    assert spot["spot"] and not spot["swap"] and spot["id"] == "BTCUSDT"
    assert swap["swap"] and swap["linear"] and swap["settle"] == "USDT"
    assert swap["contractSize"] == 1.0 and swap["limits"]["leverage"]["max"] == 125.0
    currencies = offline.synthesize_currencies(markets.values())
    assert sorted(currencies) == ["BTC", "USDT"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("::1", True), (b"127.0.0.5", True),
     ("api.binance.com", False), ("8.8.8.8", False), (None, False)],
)
def test_is_loopback_host(host: object, loopback: bool) -> None:
    assert offline.is_loopback_host(host) is loopback
