import random
from datetime import datetime, timezone

import pytest

from trade_canvas.errors import InvalidInput
from trade_canvas.series import (
    MAX_EPOCH_SECONDS,
    MONTH_NOMINAL_SECONDS,
    align_time,
    expected_latest_closed_time,
    parse_series_id,
    parse_timeframe,
)


@pytest.mark.parametrize(
    "text,seconds",
    [("1m", 60), ("5m", 300), ("15m", 900), ("1h", 3600), ("4h", 14400), ("1d", 86400), (" 3m ", 180),
     ("3d", 259200), ("1w", 604800)],
)
def test_timeframes(text: str, seconds: int) -> None:
    assert parse_timeframe(text).seconds == seconds


@pytest.mark.parametrize(
    "text", ["", "0m", "2M", "12M", "0M", "1MM", "30s", "m", "1.5h", "-1m", "1 m", "0w"]
)
def test_bad_timeframes(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_timeframe(text)


def test_series_id_with_colon_in_symbol() -> None:
    series = parse_series_id("binance:futures:BTC/USDT:USDT:1h")
    assert (series.exchange, series.market, series.symbol) == ("binance", "futures", "BTC/USDT:USDT")
    assert series.timeframe.seconds == 3600
    assert series.text == "binance:futures:BTC/USDT:USDT:1h"


def test_series_id_components_are_stripped() -> None:
    assert parse_series_id(" binance : spot : BTC/USDT : 1m ").text == "binance:spot:BTC/USDT:1m"


@pytest.mark.parametrize(
    "text,message",
    [
        ("binance:spot:1m", "must be"),
        ("binance::BTC/USDT:1m", "empty component"),
        ("binance:spot:BTC/USDT:1x", "invalid timeframe"),
        ("", "non-empty"),
        (None, "non-empty"),
        (42, "non-empty"),
    ],
)
def test_bad_series_ids(text: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_series_id(text)


def test_alignment() -> None:
    tf = parse_timeframe("5m")
    assert align_time(1_700_000_123, tf) == 1_700_000_100 - 1_700_000_100 % 300
    assert expected_latest_closed_time(600, tf) == 300
    assert expected_latest_closed_time(299, tf) == 0


def test_weeks_open_on_monday() -> None:
    week = parse_timeframe("1w")
    monday = 1_700_438_400  # 2023-11-20 00:00 UTC, a Monday
    assert week.is_aligned(monday) and not week.is_aligned(monday - 3 * 86400)
    assert not week.is_aligned(604800 * 2812)  # an epoch multiple is a Thursday
    assert align_time(monday + 5 * 86400 + 17, week) == monday
    assert align_time(monday - 1, week) == monday - 604800
    assert expected_latest_closed_time(monday + 3600, week) == monday - 604800
    assert parse_timeframe("1h").is_aligned(3600 * 5) and parse_timeframe("1h").offset == 0


@pytest.mark.parametrize(
    "text",
    [
        "binance:spot:BTC\x00/USDT:1m",
        "binance:spot:BTC/USDT\n2024 INFO forged:1m",
        "binance:spot:BTC USDT:1m",
        "binance:spot:BTC/USDT\x7f:1m",
        "binance:spot:BTC/ÜSDT:1m",
        "binance:spot:" + "A" * 2700 + ":1m",
        "binance:spot:" + "A" * (128 - len("binance:spot::1m") + 1) + ":1m",
    ],
)
def test_series_id_grammar_rejects_control_blank_non_ascii_and_long(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid"):
        parse_series_id(text)


def test_surrounding_blanks_are_trimmed_not_kept() -> None:
    assert parse_series_id("binance:spot:BTC/USDT:1m\n").text == "binance:spot:BTC/USDT:1m"


def test_series_id_of_exactly_the_maximum_length_is_accepted() -> None:
    text = "binance:spot:" + "A" * (128 - len("binance:spot::1m")) + ":1m"
    assert len(text) == 128 and parse_series_id(text).text == text


MONTH = parse_timeframe("1M")


def _utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


def test_month_timeframe_is_calendar_with_a_nominal_width() -> None:
    assert parse_timeframe(" 1M ") == MONTH
    assert (MONTH.text, MONTH.months, MONTH.seconds) == ("1M", 1, MONTH_NOMINAL_SECONDS)
    assert parse_series_id("binance:spot:BTC/USDT:1M").text == "binance:spot:BTC/USDT:1M"
    assert parse_timeframe("1m").months == 0  # minutes and months differ only in case


@pytest.mark.parametrize(
    "t,opens,next_open,previous_open",
    [
        (_utc(2024, 1, 31, 23, 59, 59), _utc(2024, 1, 1), _utc(2024, 2, 1), _utc(2023, 12, 1)),
        (_utc(2024, 1, 31), _utc(2024, 1, 1), _utc(2024, 2, 1), _utc(2023, 12, 1)),
        (_utc(2024, 2, 29, 12), _utc(2024, 2, 1), _utc(2024, 3, 1), _utc(2024, 1, 1)),  # leap
        (_utc(2023, 2, 28, 23), _utc(2023, 2, 1), _utc(2023, 3, 1), _utc(2023, 1, 1)),
        (_utc(2000, 2, 29), _utc(2000, 2, 1), _utc(2000, 3, 1), _utc(2000, 1, 1)),  # 400 rule
        (_utc(2100, 3, 1) - 1, _utc(2100, 2, 1), _utc(2100, 3, 1), _utc(2100, 1, 1)),  # 100 rule
        (_utc(2023, 12, 15), _utc(2023, 12, 1), _utc(2024, 1, 1), _utc(2023, 11, 1)),  # Dec -> Jan
        (_utc(2024, 1, 1), _utc(2024, 1, 1), _utc(2024, 2, 1), _utc(2023, 12, 1)),  # Jan -> Dec
        (0, 0, _utc(1970, 2, 1), _utc(1969, 12, 1)),
    ],
)
def test_month_alignment(t: int, opens: int, next_open: int, previous_open: int) -> None:
    assert MONTH.align(t) == align_time(t, MONTH) == opens
    assert MONTH.next_open(t) == next_open and MONTH.previous_open(t) == previous_open
    assert MONTH.is_aligned(opens) and MONTH.is_aligned(t) == (t == opens)
    assert MONTH.steps_between(previous_open, next_open) == 2


def test_month_arithmetic_matches_the_calendar() -> None:
    rng = random.Random(14)
    for _ in range(2000):
        t = rng.randrange(0, _utc(9999, 11, 1))
        moment = datetime.fromtimestamp(t, tz=timezone.utc)
        year, month = divmod(moment.year * 12 + moment.month, 12)  # the next month, 0-based
        month += 1
        assert MONTH.align(t) == _utc(moment.year, moment.month, 1)
        assert MONTH.next_open(t) == _utc(year, month, 1)
    # Past the year 9999 the integer arithmetic goes on where datetime stops.
    assert MONTH.next_open(MAX_EPOCH_SECONDS) == MAX_EPOCH_SECONDS + 1


def test_month_shift_steps_and_open_times() -> None:
    jan = _utc(2023, 1, 1)
    assert MONTH.shift(jan, 14) == _utc(2024, 3, 1) and MONTH.shift(jan, -13) == _utc(2021, 12, 1)
    assert MONTH.steps_between(jan, _utc(2025, 1, 31)) == 24
    assert MONTH.steps_between(_utc(2024, 5, 2), jan) == -16
    assert MONTH.open_times(jan + 1, _utc(2023, 4, 1)) == [_utc(2023, m, 1) for m in (2, 3, 4)]
    assert MONTH.open_times(jan, _utc(2023, 3, 31)) == [_utc(2023, m, 1) for m in (1, 2, 3)]
    assert MONTH.open_times(_utc(2023, 3, 2), _utc(2023, 3, 31)) == []


def test_month_read_windows_hold_as_many_candles_as_fixed_ones() -> None:
    mar = _utc(2024, 3, 1)
    assert MONTH.window_start(mar, 2) == _utc(2024, 1, 1)  # Jan, Feb, Mar: 3 like t - 2 * s
    assert MONTH.window_start(mar + 86400, 2) == _utc(2024, 2, 1)  # Feb, Mar: 2
    assert MONTH.window_start(mar, 14) == _utc(2023, 1, 1)
    hour = parse_timeframe("1h")
    assert hour.window_start(7200, 2) == 0 and hour.window_start(7300, 2) == 100


def test_latest_closed_month() -> None:
    assert expected_latest_closed_time(_utc(2024, 3, 1), MONTH) == _utc(2024, 2, 1)
    assert expected_latest_closed_time(_utc(2024, 2, 29, 23, 59, 59), MONTH) == _utc(2024, 1, 1)
    assert expected_latest_closed_time(_utc(1970, 1, 20), MONTH) == 0


@pytest.mark.parametrize("text", ["1m", "5m", "1h", "4h", "1d", "3d", "1w"])
def test_fixed_steps_are_unchanged(text: str) -> None:
    tf = parse_timeframe(text)
    t = tf.align(1_700_000_123)
    assert tf.next_open(t) == t + tf.seconds and tf.previous_open(t) == t - tf.seconds
    assert tf.next_open(t + 1) == t + tf.seconds and tf.shift(t, -3) == t - 3 * tf.seconds
    assert tf.steps_between(t, t + 5 * tf.seconds) == 5
    assert tf.open_times(t - 1, t + 2 * tf.seconds) == [t + k * tf.seconds for k in range(3)]
