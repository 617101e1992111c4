"""Write stored candles as freqtrade data files (feather), so freqtrade backtests our data.

pandas and pyarrow come with freqtrade and are imported on first use only: importing this
module costs nothing on a server without freqtrade.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from trade_canvas.freqtrade.commands import PairSpec, TradingMode, data_file_path
from trade_canvas.candles import Candle, dedupe_sorted

if TYPE_CHECKING:
    import pandas  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

OHLCV_COLUMNS = ("date", "open", "high", "low", "close", "volume")


def candles_frame(candles: Sequence[Candle]) -> "pandas.DataFrame":
    """Return freqtrade's OHLCV frame: ``date`` as UTC datetime (ms), float prices/volume."""
    import pandas

    rows = dedupe_sorted(candles)
    frame = pandas.DataFrame(
        [c.to_row() for c in rows], columns=["candle_time", *OHLCV_COLUMNS[1:]]
    )
    frame.insert(0, "date", pandas.to_datetime(frame.pop("candle_time"), unit="s", utc=True))
    frame["date"] = frame["date"].astype("datetime64[ms, UTC]")
    return frame.astype({name: "float64" for name in OHLCV_COLUMNS[1:]})


def write_feather(path: Path, candles: Sequence[Candle]) -> Path:
    """Write ``candles`` to ``path`` atomically (temp file, then rename) and return it."""
    frame = candles_frame(candles)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        frame.to_feather(partial, compression="lz4")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    logger.debug("wrote %d candles to %s", len(frame), path)
    return path


def export_candles(
    datadir: Path, pair: PairSpec, timeframe: str, trading_mode: TradingMode,
    candles: Sequence[Candle], merge: bool = False,
) -> Path:
    """Write candles where freqtrade looks for ``pair``/``timeframe`` and return the path.

    Futures pairs must carry their settle currency (``BTC/USDT:USDT``); see
    ``backtest.freqtrade_pair``. With ``merge`` an existing file's rows are kept and the new
    candles fill the times it lacks.
    """
    path = data_file_path(datadir, pair, timeframe, trading_mode)
    if merge and path.exists():
        have = read_feather(path)
        known = {c.candle_time for c in have}
        candles = [*have, *(c for c in candles if c.candle_time not in known)]
    return write_feather(path, candles)


def read_feather(path: Path) -> list[Candle]:
    """Read a freqtrade OHLCV feather file."""
    import pandas

    frame = pandas.read_feather(path)
    seconds = frame["date"].astype("int64") // _UNIT_DIVISOR[str(frame["date"].dtype.unit)]
    return [Candle(int(t), float(o), float(h), float(lo), float(c), float(v))
            for t, o, h, lo, c, v in zip(seconds, frame["open"], frame["high"], frame["low"],
                                         frame["close"], frame["volume"])]


_UNIT_DIVISOR = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000}


def read_binance_klines_csv(path: Path) -> list[Candle]:
    """Read a recorded Binance klines CSV (``open_time_ms,open,high,low,close,volume,...``)."""
    with path.open(newline="") as handle:
        return [_csv_candle(row) for row in csv.DictReader(handle)]


def _csv_candle(row: dict[str, str]) -> Candle:
    return Candle(
        candle_time=int(row["open_time_ms"]) // 1000, open=float(row["open"]),
        high=float(row["high"]), low=float(row["low"]), close=float(row["close"]),
        volume=float(row["volume"]),
    )


def aggregate(candles: Iterable[Candle], seconds: int) -> list[Candle]:
    """Fold candles into buckets of ``seconds`` (open of first, close of last, sum volume)."""
    buckets: dict[int, list[Candle]] = {}
    for candle in dedupe_sorted(candles):
        buckets.setdefault(candle.candle_time - candle.candle_time % seconds, []).append(candle)
    return [
        Candle(t, group[0].open, max(c.high for c in group), min(c.low for c in group),
               group[-1].close, sum(c.volume for c in group))
        for t, group in sorted(buckets.items())
    ]
