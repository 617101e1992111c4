"""copy_store: both directions between backends, resuming after an interruption, verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytest

from trade_canvas.candles import Candle
from trade_canvas.errors import InvalidInput
from trade_canvas.storage import CandleStore
from trade_canvas.storage.copy import CopyReport, SeriesMismatch, copy_store, main
from trade_canvas.storage.sqlite import SqliteCandleStore

SERIES = {
    "binance:futures:BTC/USDT:1m": 1234,
    "binance:spot:ETH/USDT:1m": 501,
    "binance:spot:SOL/USDT:1h": 1,
}


def make(t: int) -> Candle:
    price = 100.0 + t / 7
    return Candle(t, price, price + 2.5, price - 2.25, price + 0.125, t / 3)


def fill(store: CandleStore) -> None:
    for series_id, n in SERIES.items():
        store.upsert_candles(series_id, [make(i * 60) for i in range(n)])


def assert_same(source: CandleStore, target: CandleStore) -> None:
    assert target.series_ids() == source.series_ids()
    for series_id in source.series_ids():
        assert target.read_range(series_id, -(2**62), 2**62) == source.read_range(
            series_id, -(2**62), 2**62
        )


class Interrupted(Exception):
    pass


class FailingTarget:
    """Wraps a store and fails the ``fail_at``-th upsert, like a copy killed mid-way."""

    def __init__(self, inner: CandleStore, fail_at: int) -> None:
        self._inner = inner
        self._fail_at = fail_at
        self.upserts = 0
        self.backend = inner.backend

    def upsert_candles(self, series_id: str, candles: Sequence[Candle]) -> None:
        self.upserts += 1
        if self.upserts == self._fail_at:
            raise Interrupted
        self._inner.upsert_candles(series_id, candles)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.postgres
def test_sqlite_to_postgres(sqlite_store: SqliteCandleStore, postgres_store: CandleStore) -> None:
    fill(sqlite_store)
    seen: list[tuple[int, int]] = []
    report = copy_store(sqlite_store, postgres_store, lambda d, t: seen.append((d, t)), 500)
    assert report == CopyReport(3, sum(SERIES.values()), 0, ())
    assert seen[-1] == (sum(SERIES.values()), sum(SERIES.values()))
    assert_same(sqlite_store, postgres_store)


@pytest.mark.postgres
def test_postgres_to_sqlite(sqlite_store: SqliteCandleStore, postgres_store: CandleStore) -> None:
    fill(postgres_store)
    report = copy_store(postgres_store, sqlite_store, batch_size=100)
    assert report.ok and report.copied == sum(SERIES.values())
    assert_same(postgres_store, sqlite_store)


@pytest.mark.postgres
def test_interrupted_copy_resumes_without_duplicates(
    sqlite_store: SqliteCandleStore, postgres_store: CandleStore
) -> None:
    fill(sqlite_store)
    with pytest.raises(Interrupted):
        copy_store(sqlite_store, FailingTarget(postgres_store, fail_at=3), batch_size=500)
    first = postgres_store.count("binance:futures:BTC/USDT:1m")
    assert first == 1000  # two batches landed, the third did not
    report = copy_store(sqlite_store, postgres_store, batch_size=500)
    assert report.already_present == 1000
    assert report.copied == sum(SERIES.values()) - 1000
    assert report.ok
    assert_same(sqlite_store, postgres_store)


def test_rerun_of_a_finished_copy_copies_nothing(tmp_path: Path) -> None:
    source = SqliteCandleStore(str(tmp_path / "a.db"))
    target = SqliteCandleStore(str(tmp_path / "b.db"))
    fill(source)
    copy_store(source, target, batch_size=64)
    report = copy_store(source, target, batch_size=64)
    assert report == CopyReport(3, 0, sum(SERIES.values()), ())
    source.close()
    target.close()


def test_mismatched_counts_are_reported(tmp_path: Path) -> None:
    source = SqliteCandleStore(str(tmp_path / "a.db"))
    target = SqliteCandleStore(str(tmp_path / "b.db"))
    fill(source)
    series_id = "binance:spot:ETH/USDT:1m"
    target.upsert_candles(series_id, [make(-60)])  # an extra candle only the target has
    report = copy_store(source, target)
    assert report.mismatches == (SeriesMismatch(series_id, 501, 502),)
    assert not report.ok
    source.close()
    target.close()


def test_batch_size_must_be_positive(sqlite_store: SqliteCandleStore) -> None:
    with pytest.raises(InvalidInput):
        copy_store(sqlite_store, sqlite_store, batch_size=0)


def test_command_line_copies_and_verifies(tmp_path: Path) -> None:
    source_path, target_path = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    source = SqliteCandleStore(source_path)
    fill(source)
    assert main(["--from", source_path, "--to", target_path, "--batch-size", "300"]) == 0
    target = SqliteCandleStore(target_path)
    assert_same(source, target)
    source.close()
    target.close()


def test_command_line_rejects_missing_source(tmp_path: Path) -> None:
    assert main(["--from", str(tmp_path / "none.db"), "--to", str(tmp_path / "b.db")]) == 2
    assert not (tmp_path / "b.db").exists()


@pytest.mark.postgres
def test_command_line_to_postgres(
    tmp_path: Path, postgres_dsn: str, postgres_schema: str, postgres_store: CandleStore
) -> None:
    source_path = str(tmp_path / "a.db")
    source = SqliteCandleStore(source_path)
    fill(source)
    argv = ["--from", source_path, "--to", postgres_dsn, "--schema", postgres_schema]
    assert main(argv) == 0
    assert_same(source, postgres_store)
    source.close()
