"""In-server history fills: missing open times and REST pages over calendar months."""

from __future__ import annotations

from typing import Sequence

import pytest

from tests.fakes.rest import KlinesRest, flat, small_pages
from tests.fakes.store import MemoryCandleStore
from trade_canvas.candles import Candle
from trade_canvas.runtime.history import fill_range, missing_times
from trade_canvas.series import SeriesId, parse_series_id

MONTHLY = parse_series_id("binance:spot:BTC/USDT:1M")
MONTHS = [MONTHLY.timeframe.shift(1_577_836_800, k) for k in range(12)]  # 2020-01 .. 2020-12


def test_missing_months_are_calendar_open_times() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(MONTHLY.text, [flat(MONTHS[1]), flat(MONTHS[3])])
    assert missing_times(store, MONTHLY, MONTHS[0] + 1, MONTHS[5]) == [MONTHS[2], MONTHS[4],
                                                                       MONTHS[5]]
    assert missing_times(store, MONTHLY, MONTHS[1] + 1, MONTHS[2] - 1) == []


def test_monthly_fill_asks_one_page_per_run_of_missing_months(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_pages(monkeypatch, 4)
    store, rest = MemoryCandleStore(), KlinesRest(MONTHS, "1M")
    store.upsert_candles(MONTHLY.text, [flat(MONTHS[k]) for k in (2, 3, 4, 5, 6)])

    def ingest(series: SeriesId, candles: Sequence[Candle]) -> None:
        store.upsert_candles(series.text, candles)

    done: list[tuple[int, int]] = []
    written = fill_range(rest, store, ingest, MONTHLY, MONTHS[0], MONTHS[11],
                         lambda d, t: done.append((d, t)))
    # Missing: Jan, Feb, then Aug..Dec: a page of four months from each first missing one.
    assert rest.calls == [(MONTHS[0], MONTHS[3]), (MONTHS[7], MONTHS[10]),
                          (MONTHS[11], MONTHS[11])]
    assert written == 4 + 4 + 1 and done[-1] == (7, 7)
    assert [x.candle_time for x in store.read_tail(MONTHLY.text, 20)] == MONTHS
