"""Missing closed candles fetched over Binance REST while the server runs (replay coverage,
backtests over a range the store does not cover).

The CLI ``backfill`` command writes straight to the store; inside the server every write goes
through the series' store actor instead (one writer per series), so these fills call an
``ingest`` function (``Runtime.ingest_closed`` without publishing). Requests go through the
shared per-host limiter of ``BinanceRest``, like every other REST caller.
"""

from __future__ import annotations

import bisect
import logging
from typing import Callable, Sequence

from trade_canvas.binance_rest import BinanceRest
from trade_canvas.candles import Candle
from trade_canvas.errors import UpstreamError
from trade_canvas.exchanges import binance
from trade_canvas.series import SeriesId
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

Ingest = Callable[[SeriesId, Sequence[Candle]], object]
Progress = Callable[[int, int], None]  # (candles covered so far, candles in the range)


def quiet_ingest(ingest: Callable[..., object]) -> Ingest:
    """Adapt ``Runtime.ingest_closed`` to a fill: stored through the store actor, not published."""

    def run(series: SeriesId, candles: Sequence[Candle]) -> object:
        return ingest(series, candles, publish=False, source="backfill")

    return run


def missing_times(store: CandleStore, series: SeriesId, start: int, end: int) -> list[int]:
    """Return the open times in ``[start, end]`` with no stored candle, ascending."""
    expected = series.timeframe.open_times(start, end)
    if not expected:
        return []
    have = {c.candle_time for c in store.read_range(series.text, expected[0], end)}
    return [t for t in expected if t not in have]


def fill_range(
    rest: BinanceRest, store: CandleStore, ingest: Ingest, series: SeriesId, start: int,
    end: int, progress: Progress = lambda done, total: None,
) -> int:
    """Fetch and store the closed candles missing in ``[start, end]``; returns how many came.

    One request covers a page from the first missing time on, so scattered holes (or a real
    exchange gap, fetched again each time and still empty) cost one request per page.

    Raises:
        UpstreamError: the exchange stayed unreachable (after retries) or refused the series.
    """
    if series.exchange != "binance":
        raise UpstreamError(f"no exchange to fetch {series.text} from (only binance series)")
    tf = series.timeframe
    page = binance.limits_for(series.market).klines_max_limit
    missing = missing_times(store, series, start, end)
    written = index = 0
    progress(0, len(missing))
    while index < len(missing):
        cursor = missing[index]
        stop = min(end, tf.shift(cursor, page - 1))
        candles = rest.klines_range(series, cursor, stop)
        if candles:
            ingest(series, candles)
            written += len(candles)
        index = bisect.bisect_right(missing, stop)
        progress(index, len(missing))
    return written
