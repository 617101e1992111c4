import math

import pytest

from trade_canvas.candles import Candle, dedupe_sorted, find_gap, parse_candle, parse_candles
from trade_canvas.errors import InvalidInput
from trade_canvas.series import parse_timeframe

TF = parse_timeframe("1m")
NOW = 1_700_000_000
GOOD = {"candle_time": 1_699_999_980, "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 10}


def test_parse_good_candle() -> None:
    candle = parse_candle(GOOD, TF, NOW)
    assert candle == Candle(1_699_999_980, 1.0, 2.0, 0.5, 1.5, 10.0)
    assert candle.to_dict() == {**GOOD, "open": 1.0, "high": 2.0, "close": 1.5, "volume": 10.0}


def test_numeric_strings_are_accepted() -> None:
    raw = {k: str(v) for k, v in GOOD.items()}
    assert parse_candle(raw, TF, NOW).close == 1.5


@pytest.mark.parametrize(
    "change,message",
    [
        ({"candle_time": 1_699_999_981}, "not aligned"),
        ({"candle_time": 1_700_000_160}, "future"),
        ({"candle_time": -60}, ">= 0"),
        ({"candle_time": 1.5}, "integer"),
        ({"candle_time": True}, "integer"),
        ({"open": math.nan}, "finite"),
        ({"high": math.inf}, "finite"),
        ({"open": "abc"}, "number"),
        ({"volume": -1}, "volume"),
        ({"low": 1.2}, "low <="),
        ({"high": 1.4}, "low <="),
        ({"close": None}, "number"),
    ],
)
def test_bad_candles(change: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_candle({**GOOD, **change}, TF, NOW)


def test_missing_field() -> None:
    raw = dict(GOOD)
    del raw["volume"]
    with pytest.raises(InvalidInput, match="volume is required"):
        parse_candle(raw, TF, NOW)


def test_one_timeframe_ahead_is_allowed() -> None:
    assert parse_candle({**GOOD, "candle_time": NOW + 60 - NOW % 60}, TF, NOW)


def test_parse_candles_names_the_bad_index() -> None:
    with pytest.raises(InvalidInput, match=r"candles\[1\]"):
        parse_candles([GOOD, {**GOOD, "volume": -1}], TF, NOW, 10)
    with pytest.raises(InvalidInput, match="too many"):
        parse_candles([GOOD] * 3, TF, NOW, 2)
    with pytest.raises(InvalidInput, match="empty"):
        parse_candles([], TF, NOW, 2)
    with pytest.raises(InvalidInput, match="list"):
        parse_candles({"a": 1}, TF, NOW, 2)


def test_dedupe_keeps_last_and_sorts() -> None:
    a, b, c = Candle(120, 1, 1, 1, 1, 1), Candle(60, 1, 1, 1, 1, 1), Candle(120, 2, 2, 2, 2, 2)
    assert dedupe_sorted([a, b, c]) == [b, c]


def test_find_gap() -> None:
    candles = [Candle(240, 1, 1, 1, 1, 1)]
    assert find_gap(120, candles, TF) == 180
    assert find_gap(180, candles, TF) is None
    assert find_gap(None, candles, TF) is None


def test_find_gap_over_calendar_months() -> None:
    month = parse_timeframe("1M")
    feb, mar, apr = 1_706_745_600, 1_709_251_200, 1_711_929_600  # 2024-02-01 .. 04-01 UTC
    assert find_gap(feb, [Candle(mar, 1, 1, 1, 1, 1)], month) is None  # 29 days, no hole
    assert find_gap(feb, [Candle(apr, 1, 1, 1, 1, 1)], month) == mar


def test_monthly_candles_open_on_the_first() -> None:
    month = parse_timeframe("1M")
    mar, apr = 1_709_251_200, 1_711_929_600  # 2024-03-01 and 2024-04-01 00:00 UTC
    assert parse_candle({**GOOD, "candle_time": mar}, month, mar + 5 * 86400).candle_time == mar
    with pytest.raises(InvalidInput, match="not aligned to timeframe 1M"):
        parse_candle({**GOOD, "candle_time": mar + 31 * 86400 - 86400}, month, apr)  # Mar 31
    with pytest.raises(InvalidInput, match="not aligned"):
        parse_candle({**GOOD, "candle_time": 31 * 86400 * 645}, month, apr)  # a 31-day multiple
    # One timeframe ahead: the next month is fine during this one, the month after is not.
    assert parse_candle({**GOOD, "candle_time": apr}, month, mar + 86400).candle_time == apr
    with pytest.raises(InvalidInput, match="future"):
        parse_candle({**GOOD, "candle_time": 1_714_521_600}, month, mar + 30 * 86400)  # May 1
    candles = parse_candles([{**GOOD, "candle_time": mar}, {**GOOD, "candle_time": apr}],
                            month, apr, 10)
    assert [c.candle_time for c in candles] == [mar, apr]


def test_weekly_candles_must_open_on_monday() -> None:
    week = parse_timeframe("1w")
    monday = 1_700_438_400
    ok = {**GOOD, "candle_time": monday}
    assert parse_candle(ok, week, monday + 86400).candle_time == monday
    with pytest.raises(InvalidInput, match="not aligned"):
        parse_candle({**GOOD, "candle_time": 604800 * 2812}, week, monday)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"close": "1_5"}, "plain decimal"),
        ({"volume": "1_0"}, "plain decimal"),
        ({"open": " 1.5"}, "plain decimal"),
        ({"open": "nan"}, "plain decimal"),
        ({"high": "Infinity"}, "plain decimal"),
        ({"close": "\u0661.\u0665"}, "plain decimal"),
        ({"candle_time": "\u0661\u0666\u0669\u0669\u0669\u0669\u0669\u0669\u0669\u0668\u0660"}, "ASCII digits"),
        ({"candle_time": "1_699_999_980"}, "ASCII digits"),
        ({"candle_time": "9" * 5000}, "ASCII digits"),
        ({"open": 0, "low": 0}, "must be > 0"),
        ({"low": 0}, "must be > 0"),
        ({"open": -1, "low": -2, "close": -1, "high": -0.5}, "must be > 0"),
        ({"low": "0"}, "must be > 0"),
    ],
)
def test_only_plain_numbers_and_positive_prices(change: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_candle({**GOOD, **change}, TF, NOW)


def test_zero_volume_and_plain_decimal_strings_are_fine() -> None:
    raw = {**GOOD, "open": "1.00000000", "high": "2e0", "low": ".5", "close": "1.5", "volume": "0"}
    assert parse_candle(raw, TF, NOW) == Candle(1_699_999_980, 1.0, 2.0, 0.5, 1.5, 0.0)
    assert parse_candle({**GOOD, "volume": 0}, TF, NOW).volume == 0.0
