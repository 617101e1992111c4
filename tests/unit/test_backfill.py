"""The backfill command's paging over a fake REST and the in-memory store (no sockets)."""

from __future__ import annotations

import pytest

from tests.fakes.rest import KlinesRest, flat, small_pages
from tests.fakes.store import MemoryCandleStore
from trade_canvas.runtime.backfill import backfill
from trade_canvas.series import parse_series_id

MONTHLY = parse_series_id("binance:spot:BTC/USDT:1M")
TF = MONTHLY.timeframe
JAN_2020 = 1_577_836_800


def test_monthly_backfill_pages_on_the_calendar_and_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_pages(monkeypatch, 4)
    months = [TF.shift(JAN_2020, k) for k in range(24)]  # 2020-01 .. 2021-12
    rest, store = KlinesRest(months, "1M"), MemoryCandleStore()
    since, until = JAN_2020 + 3600, TF.shift(JAN_2020, 10) + 14 * 86400  # 2020-11-15
    progressed: list[int] = []
    written = backfill(store, rest, MONTHLY, since, until, progressed.append)
    # February 2020 (first open after ``since``) .. October 2020 (the last one closed by until)
    assert [x.candle_time for x in store.read_tail(MONTHLY.text, 100)] == months[1:10]
    assert written == 9 and sum(progressed) == 9
    assert rest.calls == [(months[1], months[4]), (months[5], months[8]), (months[9], months[9])]
    rest.calls.clear()
    assert backfill(store, rest, MONTHLY, since, until) == 0 and rest.calls == []  # all stored
    gappy = MemoryCandleStore()
    gappy.upsert_candles(MONTHLY.text, [flat(t) for t in months[1:10] if t != months[6]])
    assert backfill(gappy, rest, MONTHLY, since, until) == 4  # only the page with the hole
    assert rest.calls == [(months[5], months[8])]


def test_minute_backfill_pages_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    small_pages(monkeypatch, 1000)
    minute = parse_series_id("binance:spot:BTC/USDT:1m")
    rest = KlinesRest([JAN_2020 + 60 * k for k in range(3000)], "1m")
    store = MemoryCandleStore()
    assert backfill(store, rest, minute, JAN_2020 - 30, JAN_2020 + 60 * 2500 + 30) == 2500
    assert rest.calls == [(JAN_2020 + 60 * k, JAN_2020 + 60 * (k + 999)) for k in (0, 1000)] + [
        (JAN_2020 + 60 * 2000, JAN_2020 + 60 * 2499)]
