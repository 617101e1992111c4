"""CandleStore contract: the same behaviour from every backend."""

from __future__ import annotations

import threading

from trade_canvas.candles import Candle

S = "binance:futures:BTC/USDT:1m"
T = "binance:spot:ETH/USDT:1m"


def make(t: int, price: float = 100.0, volume: float = 1.0) -> Candle:
    return Candle(t, price, price + 2, price - 2, price + 1, volume)


def test_empty_series_reads_nothing(store) -> None:
    assert store.read_tail(S, 10) == []
    assert store.read_since(S, 0, 10) == []
    assert store.head_time(S) is None
    assert store.count(S) == 0


def test_upsert_then_tail_and_since_are_ascending(store) -> None:
    store.upsert_candles(S, [make(t) for t in (180, 60, 120, 240)])
    assert [c.candle_time for c in store.read_tail(S, 3)] == [120, 180, 240]
    assert [c.candle_time for c in store.read_since(S, 60, 2)] == [120, 180]
    assert [c.candle_time for c in store.read_since(S, 240, 5)] == []
    assert store.head_time(S) == 240
    assert store.count(S) == 4


def test_since_is_exclusive_and_range_inclusive(store) -> None:
    store.upsert_candles(S, [make(t) for t in range(0, 600, 60)])
    assert store.read_since(S, 120, 1)[0].candle_time == 180
    assert [c.candle_time for c in store.read_range(S, 120, 240)] == [120, 180, 240]


def test_upsert_overwrites_same_time(store) -> None:
    store.upsert_candles(S, [make(60, 100.0)])
    store.upsert_candles(S, [make(60, 200.0, volume=5.0)])
    [candle] = store.read_tail(S, 10)
    assert candle == make(60, 200.0, volume=5.0)


def test_values_round_trip_exactly(store) -> None:
    candle = Candle(1_700_000_040, 36947.12, 36950.0, 36940.01, 36948.99, 0.00012345)
    store.upsert_candles(S, [candle])
    assert store.read_tail(S, 1) == [candle]


def test_series_are_isolated(store) -> None:
    store.upsert_candles(S, [make(60)])
    store.upsert_candles(T, [make(120), make(180)])
    assert [c.candle_time for c in store.read_tail(S, 10)] == [60]
    assert store.head_time(T) == 180
    assert store.series_ids() == sorted([S, T])


def test_batch_of_5000_is_one_write(store) -> None:
    store.upsert_candles(S, [make(t * 60) for t in range(5000)])
    assert store.count(S) == 5000
    assert store.read_tail(S, 5000)[0].candle_time == 0


def test_many_series(store) -> None:
    for i in range(50):
        store.upsert_candles(f"binance:spot:S{i}/USDT:1m", [make(60), make(120)])
    assert len(store.series_ids()) == 50


def test_concurrent_writers_lose_nothing(store) -> None:
    def write(offset: int) -> None:
        for i in range(50):
            store.upsert_candles(S, [make((offset * 1000 + i) * 60)])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count(S) == 200


def test_ping_succeeds(store) -> None:
    store.ping()
