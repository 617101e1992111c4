"""BacktestActor and its run steps, against REAL freqtrade on the recorded candles.

Each real backtest takes a few seconds. Every test works on a tmp_path copy of the shipped
``freqtrade_user_data`` so nothing is written into the repository.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pykka
import pytest

from trade_canvas.actors.backtest import (
    BacktestActor, run_backtest_and_wait, strategies_and_wait,
)
from trade_canvas.actors.messages import (
    ExportCandles, GetBacktest, GetPairTimeframes, ListBacktests, RunBacktest,
)
from trade_canvas.candles import Candle
from trade_canvas.errors import CapacityExceeded
from trade_canvas.freqtrade import commands as bt
from trade_canvas.freqtrade.runner import child_env, clean_exports, run_backtest
from trade_canvas.freqtrade.values import BacktestResult, BacktestSettings
from tests.fakes.store import MemoryCandleStore

REPO = Path(__file__).resolve().parents[2]
SAMPLE_USERDIR = REPO / "freqtrade_user_data"
SPOT = bt.BacktestRequest("SampleStrategy", "BTC/USDT", "5m", "20200101-20200103")

freqtrade = pytest.importorskip("freqtrade", reason="freqtrade is the backtest extra")

NEVER_TRADES = '''
from pandas import DataFrame
from freqtrade.strategy import IStrategy


class NeverTrades(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "5m"
    minimal_roi = {"0": 100.0}
    stoploss = -0.1

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["enter_long"] = 0
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["exit_long"] = 0
        return dataframe
'''


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children inherit these: any proxy-honouring internet attempt fails at once."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")


@pytest.fixture
def userdir(tmp_path: Path) -> Path:
    target = tmp_path / "user_data"
    shutil.copytree(SAMPLE_USERDIR, target)
    (target / "strategies" / "NeverTrades.py").write_text(NEVER_TRADES)
    return target


def make_settings(userdir: Path, **changes: Any) -> BacktestSettings:
    defaults: dict[str, Any] = dict(
        root=REPO, config_path=userdir / "config.json", userdir=userdir,
        strategy_path=userdir / "strategies", subprocess_timeout_s=60.0)
    defaults.update(changes)
    return BacktestSettings(**defaults)


def futures_settings(userdir: Path, **changes: Any) -> BacktestSettings:
    config = json.loads((userdir / "config.json").read_text())
    config.update({"trading_mode": "futures", "margin_mode": "isolated"})
    path = userdir / "config_futures.json"
    path.write_text(json.dumps(config))
    return make_settings(userdir, config_path=path, **changes)


@pytest.fixture
def actors() -> Iterator[list[pykka.ActorRef[Any]]]:
    started: list[pykka.ActorRef[Any]] = []
    yield started
    for ref in started:
        ref.stop()


# --- real freqtrade ---------------------------------------------------------------------------


def test_spot_backtest_through_the_actor(
    userdir: Path, actors: list[pykka.ActorRef[Any]]
) -> None:
    ref = BacktestActor.start(make_settings(userdir, require_trades=True))
    actors.append(ref)
    result = run_backtest_and_wait(ref, SPOT, timeout_s=60)
    assert result.status == "ok", result.stderr[-3000:]
    assert result.ok and result.exit_code == 0 and result.series_id == "binance:spot:BTC/USDT:5m"
    summary = result.summary
    assert summary is not None and summary.total_trades > 0
    assert summary.wins + summary.losses + summary.draws == summary.total_trades
    assert summary.backtest_end == "2020-01-03 00:00:00"
    assert result.command[1:3] == ("-m", "trade_canvas.freqtrade.offline")
    body = result.to_dict()
    assert {"ok", "exit_code", "duration_ms", "command", "stdout", "stderr"} <= set(body)
    assert json.loads(json.dumps(body))["summary"]["total_trades"] == summary.total_trades
    assert not list(userdir.glob("trade_canvas_bt_*.json")), "temp config must be removed"
    jobs = ref.ask(ListBacktests(), timeout=5)
    assert [job.state for job in jobs] == ["done"] and jobs[0].result == result
    assert ref.ask(GetBacktest(result.job_id), timeout=5) == jobs[0]


def test_futures_backtest(userdir: Path) -> None:
    request = bt.BacktestRequest("SampleStrategy", "XRP/USDT", "5m", "20211116-20211120")
    result = run_backtest(futures_settings(userdir), "fut", request)
    assert result.status == "ok", result.stderr[-3000:]
    assert result.pair == "XRP/USDT:USDT" and result.trading_mode == "futures"
    assert result.series_id == "binance:futures:XRP/USDT:5m"
    assert result.summary is not None and result.summary.total_trades > 0


def test_require_trades_reports_no_trades(userdir: Path) -> None:
    request = bt.BacktestRequest("NeverTrades", "BTC/USDT", "5m", "20200101-20200102")
    result = run_backtest(make_settings(userdir, require_trades=True), "nt", request)
    assert result.status == "no_trades", result.stderr[-3000:]
    assert result.detail["total_trades"] == 0 and result.detail["export_zip"]
    assert not result.ok and result.exit_code == 0


def test_unknown_strategy(userdir: Path) -> None:
    request = bt.BacktestRequest("NoSuchStrategy", "BTC/USDT", "5m", None)
    result = run_backtest(make_settings(userdir), "unk", request)
    assert result.status == "strategy_not_found"
    assert result.detail == {"message": "strategy_not_found", "strategy": "NoSuchStrategy"}


def test_missing_data_names_expected_paths_without_running_freqtrade(userdir: Path) -> None:
    request = bt.BacktestRequest("SampleStrategy", "BTC/USDT", "1h", None)
    result = run_backtest(make_settings(userdir), "nd", request)
    assert result.status == "no_ohlcv_history" and result.command == ()
    detail = result.detail
    assert detail["expected_paths"] == [str(userdir / "data" / "BTC_USDT-1h.feather"),
                                        str(userdir / "data" / "BTC_USDT-1h.parquet")]
    assert detail["available_timeframes"] == ["1m", "5m"]
    assert detail["hint"] == bt.NO_HISTORY_HINT
    assert "download-data" in detail["download_data_cmd"]


def zigzag_candles(start: int, step: int, count: int) -> Iterator[Candle]:
    """Prices rising for 12 candles then falling for 12: moving averages cross every cycle."""
    for i in range(count):
        phase = i % 24
        price = 7000.0 + 40.0 * (phase if phase < 12 else 24 - phase)
        yield Candle(start + i * step, price, price + 5, price - 5, price + 1, 10.0)


def test_exported_candles_are_backtested(
    userdir: Path, actors: list[pykka.ActorRef[Any]]
) -> None:
    shutil.rmtree(userdir / "data")
    candles = tuple(zigzag_candles(start=1577836800, step=300, count=600))
    ref = BacktestActor.start(make_settings(userdir))
    actors.append(ref)
    path = ref.ask(ExportCandles("BTC/USDT", "5m", candles), timeout=30)
    assert path == (userdir / "data" / "BTC_USDT-5m.feather").resolve()
    available = ref.ask(GetPairTimeframes("BTC/USDT"), timeout=5)
    assert available["available_timeframes"] == ["5m"]
    result = run_backtest_and_wait(ref, bt.BacktestRequest("SampleStrategy", "BTC/USDT", "5m"),
                                   timeout_s=60)
    assert result.status == "ok", result.stderr[-3000:]
    assert result.summary is not None and result.summary.total_trades > 0
    assert result.summary.backtest_end == "2020-01-03 01:55:00"


def test_exported_file_layout(tmp_path: Path) -> None:
    import pandas
    from trade_canvas.freqtrade.datadir import export_candles

    candles = [Candle(60, 1.0, 2.0, 0.5, 1.5, 3.0), Candle(0, 1, 1, 1, 1, 0)]
    path = export_candles(tmp_path, bt.parse_pair("XRP/USDT:USDT"), "1m", "futures", candles)
    assert path == tmp_path / "futures" / "XRP_USDT_USDT-1m-futures.feather"
    frame = pandas.read_feather(path)
    assert list(frame.columns) == ["date", "open", "high", "low", "close", "volume"]
    assert str(frame["date"].dtype) == "datetime64[ms, UTC]"
    assert frame["date"].iloc[1] == pandas.Timestamp(60, unit="s", tz="UTC")
    assert all(str(frame[c].dtype) == "float64" for c in frame.columns[1:])


def test_list_strategies(userdir: Path, actors: list[pykka.ActorRef[Any]]) -> None:
    ref = BacktestActor.start(make_settings(userdir))
    actors.append(ref)
    assert strategies_and_wait(ref, timeout_s=60) == [
        "NeverTrades", "SampleStrategy", "TradeCanvasAlwaysTradeFuturesStrategy",
        "TradeCanvasAlwaysTradeSpotStrategy"]


def test_real_freqtrade_timeout(userdir: Path) -> None:
    result = run_backtest(make_settings(userdir, subprocess_timeout_s=0.3), "to", SPOT)
    assert result.status == "timeout" and result.exit_code == 124
    assert "timeout after 0.3s" in result.stderr


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare(1)")
def test_futures_backtest_runs_without_any_network(userdir: Path, tmp_path: Path) -> None:
    """In a fresh network namespace (no interfaces but a down loopback) the run still works."""
    probe = os.system("unshare -n true >/dev/null 2>&1")
    if probe != 0:
        pytest.skip("unshare -n not permitted here")
    python = write_script(tmp_path / "netless-python",
                          f'exec unshare -n {sys.executable} "$@"\n')
    request = bt.BacktestRequest("SampleStrategy", "XRP/USDT:USDT", "5m", "20211116-20211118")
    result = run_backtest(futures_settings(userdir, python=python), "netless", request)
    assert result.status == "ok", result.stderr[-3000:]


# --- process handling with stand-in executables ------------------------------------------------


def write_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_timeout_kills_the_whole_process_group(userdir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = write_script(tmp_path / "slow", f"sleep 60 &\necho $! > {pid_file}\nexec sleep 60\n")
    started = time.monotonic()
    result = run_backtest(make_settings(userdir, python=script, subprocess_timeout_s=0.5),
                          "grp", SPOT)
    assert result.status == "timeout" and time.monotonic() - started < 10
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the grandchild is reaped by init shortly after SIGTERM
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("grandchild survived the timeout")


def test_missing_python_gives_a_clear_error(userdir: Path) -> None:
    result = run_backtest(make_settings(userdir, python=str(userdir / "no-python")), "np", SPOT)
    assert result.status == "error" and result.exit_code == 127
    assert result.detail["message"] == "freqtrade_unavailable"
    assert "no-python" in result.detail["error"]


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a second python")
def test_python_without_freqtrade_gives_a_clear_error(userdir: Path) -> None:
    result = run_backtest(make_settings(userdir, python="/usr/bin/python3"), "nf", SPOT)
    if result.status == "ok":
        pytest.skip("/usr/bin/python3 has freqtrade")
    assert result.status == "error" and result.exit_code == 127
    assert "freqtrade is not installed" in result.detail["error"]


def test_missing_bin_without_offline_markets(userdir: Path) -> None:
    settings = make_settings(userdir, offline_markets=False, bin=str(userdir / "no-freqtrade"))
    result = run_backtest(settings, "nb", SPOT)
    assert result.status == "error" and "no-freqtrade" in result.detail["error"]


def test_datadir_outside_userdir_is_refused(userdir: Path, tmp_path: Path) -> None:
    result = run_backtest(make_settings(userdir, datadir=tmp_path), "out", SPOT)
    assert result.status == "error" and "outside the freqtrade userdir" in result.detail["error"]


def test_missing_config_is_an_error(userdir: Path) -> None:
    result = run_backtest(make_settings(userdir, config_path=userdir / "nope.json"), "nc", SPOT)
    assert result.status == "error" and "config not found" in result.detail["error"]


# --- queueing, with a stand-in runner ----------------------------------------------------------


class GatedRunner:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []

    def __call__(self, settings: BacktestSettings, job_id: str,
                 request: bt.BacktestRequest) -> BacktestResult:
        self.started.append(job_id)
        self.release.wait(10)
        return BacktestResult(job_id, "ok", 0, 1)


def test_queue_full_and_status_while_running(
    userdir: Path, actors: list[pykka.ActorRef[Any]]
) -> None:
    runner = GatedRunner()
    settings = make_settings(userdir, max_concurrent=1, queue_size=1)
    ref = BacktestActor.start(settings, runner=runner)
    actors.append(ref)
    first_done: pykka.Future[BacktestResult] = pykka.ThreadingFuture()
    first = ref.ask(RunBacktest(SPOT, first_done), timeout=5)
    second = ref.ask(RunBacktest(SPOT), timeout=5)
    with pytest.raises(CapacityExceeded, match="queue full"):
        ref.ask(RunBacktest(SPOT), timeout=5)
    states = {job.job_id: job.state for job in ref.ask(ListBacktests(), timeout=1)}
    assert states == {first.job_id: "running", second.job_id: "queued"}
    runner.release.set()
    assert first_done.get(timeout=10).job_id == first.job_id
    for _ in range(100):
        job = ref.ask(GetBacktest(second.job_id), timeout=1)
        if job is not None and job.state == "done":
            break
        time.sleep(0.02)
    assert job is not None and job.state == "done" and runner.started == [first.job_id,
                                                                          second.job_id]
    assert ref.ask(GetBacktest("nope"), timeout=1) is None


def test_finished_results_are_capped(userdir: Path, actors: list[pykka.ActorRef[Any]]) -> None:
    runner = GatedRunner()
    runner.release.set()
    ref = BacktestActor.start(make_settings(userdir, keep_results=2), runner=runner)
    actors.append(ref)
    ids = [run_backtest_and_wait(ref, SPOT, timeout_s=5).job_id for _ in range(3)]
    assert [job.job_id for job in ref.ask(ListBacktests(), timeout=1)] == ids[:0:-1]


def test_finished_results_survive_a_restart_in_the_store(
    userdir: Path, actors: list[pykka.ActorRef[Any]]
) -> None:
    runner, store, ticks = GatedRunner(), MemoryCandleStore(), itertools.count(1000)
    runner.release.set()
    settings = make_settings(userdir, keep_results=2)

    def clock() -> float:
        return float(next(ticks))

    first = BacktestActor.start(settings, clock, runner, store)
    actors.append(first)
    results = [run_backtest_and_wait(first, SPOT, timeout_s=5) for _ in range(3)]
    first.stop()
    again = BacktestActor.start(settings, clock, runner, store)
    actors.append(again)
    jobs = again.ask(ListBacktests(), timeout=1)
    assert [job.result for job in jobs] == results[:0:-1]  # newest first, capped at 2
    assert jobs[0].request == SPOT and jobs[0].state == "done"
    assert again.ask(GetBacktest(results[-1].job_id), timeout=1) == jobs[0]


def test_child_env_passes_only_what_a_child_needs() -> None:
    env = child_env({
        "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/t",
        "VIRTUAL_ENV": "/v", "PYTHONHASHSEED": "0", "HTTPS_PROXY": "http://proxy:3128",
        "TRADE_CANVAS_POSTGRES_DSN": "postgresql://u:secret@db/market",
        "TRADE_CANVAS_API_TOKEN": "t" * 32, "PGPASSWORD": "secret", "AWS_SECRET_ACCESS_KEY": "k",
    })
    assert "secret" not in repr(env) and "t" * 32 not in repr(env)
    assert not [name for name in env if name.startswith(("TRADE_CANVAS_", "PG", "AWS"))]
    for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONHASHSEED",
                 "HTTPS_PROXY"):
        assert name in env
    assert env["PYTHONPATH"] and env["NO_COLOR"] == "1"


def test_old_export_folders_are_cleaned_and_others_kept(tmp_path: Path) -> None:
    results = tmp_path / "backtest_results"
    old, fresh, theirs = results / "tc_old", results / "tc_fresh", results / "freqtrade-old"
    for folder in (old, fresh, theirs):
        folder.mkdir(parents=True)
        (folder / "x.zip").write_bytes(b"z")
    now = time.time()
    os.utime(old, (now - 10 * 86400, now - 10 * 86400))
    os.utime(theirs, (now - 10 * 86400, now - 10 * 86400))
    assert clean_exports(results, now, 7 * 86400) == [old]
    assert not old.exists() and fresh.exists() and theirs.exists()
    assert clean_exports(tmp_path / "missing", now, 1.0) == []
