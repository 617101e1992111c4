"""Backtest results survive a restart: the same contract on SQLite and Postgres."""

from __future__ import annotations

from typing import Any


def test_backtests_are_listed_newest_first_and_pruned_to_keep(store: Any) -> None:
    assert store.read_backtests(10) == []
    store.save_backtest("a", 100.0, '{"id": "a"}', keep=2)
    store.save_backtest("b", 200.0, '{"id": "b"}', keep=2)
    assert store.read_backtests(10) == ['{"id": "b"}', '{"id": "a"}']
    assert store.read_backtests(1) == ['{"id": "b"}']
    store.save_backtest("c", 150.0, '{"id": "c"}', keep=2)  # a, the oldest, goes
    assert store.read_backtests(10) == ['{"id": "b"}', '{"id": "c"}']


def test_saving_a_backtest_again_replaces_it(store: Any) -> None:
    store.save_backtest("a", 100.0, '{"v": 1}', keep=5)
    store.save_backtest("a", 300.0, '{"v": 2}', keep=5)
    assert store.read_backtests(10) == ['{"v": 2}']
