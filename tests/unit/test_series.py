import pytest

from trade_canvas.errors import InvalidInput
from trade_canvas.series import (
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


@pytest.mark.parametrize("text", ["", "0m", "1M", "30s", "m", "1.5h", "-1m", "1 m", "0w"])
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
