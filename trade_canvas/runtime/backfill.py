"""``python -m trade_canvas backfill SERIES_ID --since DATE``: deep history over Binance REST.

Walks forward from ``--since`` one REST page at a time. A page window whose candles are all
stored already is skipped without a request, so an interrupted run resumes where it stopped (and
a re-run only fills holes). Writes go straight to the configured store in one transaction per
page; the shared per-host limiter keeps the run within Binance's request weight.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from typing import Callable

from tqdm import tqdm

from trade_canvas.binance_rest import BinanceRest
from trade_canvas.config import load_settings
from trade_canvas.errors import TradeCanvasError
from trade_canvas.exchanges import binance
from trade_canvas.runtime.boot import open_configured_store
from trade_canvas.series import SeriesId, align_time, parse_series_id
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

ATTEMPTS = 6  # a long unattended run waits out more failures than a live fill


def parse_date(text: str) -> int:
    """Parse ``YYYY-MM-DD`` or an ISO datetime (UTC unless given) into unix seconds."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (expected YYYY-MM-DD)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp())


def backfill(
    store: CandleStore, rest: BinanceRest, series: SeriesId, since: int, until: int,
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Fetch and store every closed candle in ``[since, until)``; returns candles written.

    Raises:
        UpstreamError: a page kept failing (the next run resumes there).
    """
    tf = series.timeframe
    page = binance.limits_for(series.market).klines_max_limit
    written = 0
    start, last = tf.ceil(since), tf.previous_open(until)  # the last one closed by ``until``
    while start <= last:
        end = min(tf.shift(start, page - 1), last)
        expected = tf.steps_between(start, end) + 1
        if len(store.read_range(series.text, start, end)) < expected:
            candles = rest.klines_range(series, start, end, attempts=ATTEMPTS)
            if candles:
                store.upsert_candles(series.text, candles)
                written += len(candles)
        progress(expected)
        start = tf.next_open(end)
    return written


def main(argv: list[str] | None = None) -> int:
    """Run the backfill command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m trade_canvas backfill",
                                     description="Fetch deep history of a Binance series.")
    parser.add_argument("series_id")
    parser.add_argument("--since", required=True, type=parse_date, help="YYYY-MM-DD (UTC)")
    parser.add_argument("--until", type=parse_date, default=None, help="default: now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        settings = load_settings(os.environ)
        series = parse_series_id(args.series_id)
        if series.exchange != "binance":
            raise TradeCanvasError(f"only binance series can be backfilled: {series.text}")
        store = open_configured_store(settings)
    except TradeCanvasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rest = BinanceRest.from_settings(settings)
    until = args.until or align_time(int(time.time()), series.timeframe)
    total = max(0, series.timeframe.steps_between(series.timeframe.ceil(args.since), until))
    try:
        with tqdm(total=total, unit="candle", desc=series.text) as bar:
            written = backfill(store, rest, series, args.since, until, bar.update)
    except (TradeCanvasError, KeyboardInterrupt) as exc:
        print(f"\nstopped: {exc or 'interrupted'}; run the same command again to resume",
              file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{series.text}: {written} candles written")
    return 0
