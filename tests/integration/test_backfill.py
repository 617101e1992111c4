"""The backfill command against the replay exchange: complete, resumable, idempotent."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from tests.fakes.replay import ROOT

pytestmark = pytest.mark.integration

SERIES = "binance:spot:BTC/USDT:1m"


def run_backfill(exchange, db: str, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_CANVAS_")}
    env.update(exchange.env(), TRADE_CANVAS_DB_PATH=db)
    return subprocess.run(
        [sys.executable, "-m", "trade_canvas", "backfill", SERIES, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def stored(db: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT candle_time, open, high, low, close, volume FROM candles ORDER BY candle_time"
        ).fetchall()


def test_backfill_fetches_range_and_resumes(start_replay, tmp_path) -> None:
    exchange = start_replay("--paused")
    db = str(tmp_path / "bf.db")
    result = run_backfill(exchange, db, "--since", "2020-01-01", "--until", "2020-01-01T12:00")
    assert result.returncode == 0, result.stderr
    rows = stored(db)
    assert len(rows) == 720 and rows[0][0] == 1577836800 and rows[-1][0] == 1577836800 + 719 * 60
    klines = exchange.get("/spot/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1577836800000&limit=3")
    assert rows[:3] == [(k[0] // 1000, *map(float, k[1:6])) for k in klines]
    requests_before = exchange.get("/_replay/state")["counters"]["rest_requests"]
    with sqlite3.connect(db) as conn:  # an interrupted run: the second half is missing
        conn.execute("DELETE FROM candles WHERE candle_time >= ?", (1577836800 + 600 * 60,))
    again = run_backfill(exchange, db, "--since", "2020-01-01", "--until", "2020-01-01T12:00")
    assert again.returncode == 0, again.stderr
    assert stored(db) == rows
    requests_after = exchange.get("/_replay/state")["counters"]["rest_requests"]
    assert requests_after - requests_before == 1  # only the incomplete page was fetched
    assert "candles written" in again.stdout


def test_backfill_rejects_bad_input(start_replay, tmp_path) -> None:
    exchange = start_replay("--paused")
    result = run_backfill(exchange, str(tmp_path / "x.db"), "--since", "yesterday")
    assert result.returncode == 2 and "not a date" in result.stderr
