"""The replay market: recorded klines on one replay timeline, a clock, and intra-candle paths.

Pure: values in, values out; no I/O and no clock reads (the server passes wall time in).

Timeline. Every recorded symbol is shifted by a whole number of days so that its first day
starts at one ``anchor`` (the default anchor is 2020-01-01T00:00Z, where the BTCUSDT 1m
recording starts, so BTCUSDT keeps its real timestamps; the other recordings are moved there).
The replay clock maps wall seconds to replay milliseconds at ``speed`` replay seconds per wall
second; clients see replay time everywhere (``E``, ``serverTime``, kline times).

Candle path. While a candle forms, a stream sends ``N`` forming frames at ``open + k*width/(N+1)``
(k = 1..N) and one closed frame at ``close_ms + 1``. The price walks open -> low -> high -> close
for a rising candle (open -> high -> low -> close otherwise) in three straight legs, so the
partial high/low never leave the final range and the closed frame is exactly the recording.
REST shows the same partial state as the latest forming frame, so REST is never ahead of WS.
"""

from __future__ import annotations

import bisect
import csv
import io
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from trade_canvas.exchanges.binance import INTERVAL_MS, KLINE_INTERVALS

DAY_MS = 86_400_000
#: 2020-01-01T00:00:00Z: start of the BTCUSDT 1m recording.
DEFAULT_ANCHOR_MS = 1_577_836_800_000
_WEEK_OFFSET_MS = 4 * DAY_MS  # Binance weeks open on Monday; 1970-01-01 was a Thursday.


@dataclass(frozen=True, slots=True)
class Kline:
    """One kline with Binance's fields; ``close_ms`` is the last millisecond (open + width - 1)."""

    open_ms: int
    close_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    taker_base: float
    taker_quote: float
    first_trade_id: int = -1


@dataclass(frozen=True, slots=True)
class Dataset:
    """Recorded klines of one symbol and interval, and the decimals its prices are quoted in."""

    market: str
    symbol: str
    interval: str
    klines: tuple[Kline, ...]
    price_decimals: int
    qty_decimals: int


@dataclass(frozen=True, slots=True)
class Series:
    """Klines of one (market, symbol, interval) on the replay timeline, ready for lookups."""

    market: str
    symbol: str
    interval: str
    klines: tuple[Kline, ...]
    opens: tuple[int, ...]
    ends: tuple[int, ...]
    price_decimals: int
    qty_decimals: int


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A kline frame due at replay time ``event_ms``: the candle's state then."""

    event_ms: int
    kline: Kline
    closed: bool


@dataclass(frozen=True, slots=True)
class ReplayClock:
    """Wall time to replay time: ``replay_ms`` at wall second ``wall_s``, then ``speed``x."""

    replay_ms: int
    wall_s: float
    speed: float
    paused: bool = False
    epoch: int = 0

    def now_ms(self, wall_s: float) -> int:
        """Return replay time at wall second ``wall_s``."""
        if self.paused:
            return self.replay_ms
        return self.replay_ms + int((wall_s - self.wall_s) * self.speed * 1000)

    def rebased(self, wall_s: float, **changes: Any) -> ReplayClock:
        """Return the clock re-anchored at ``wall_s`` (time keeps flowing) with ``changes``."""
        return replace(self, replay_ms=self.now_ms(wall_s), wall_s=wall_s, **changes)

    def jumped(self, wall_s: float, replay_ms: int) -> ReplayClock:
        """Return the clock set to ``replay_ms``; streams skip the frames in between."""
        return replace(self, replay_ms=replay_ms, wall_s=wall_s, epoch=self.epoch + 1)

    def advanced(self, wall_s: float, delta_ms: int) -> ReplayClock:
        """Return the clock moved forward by ``delta_ms``; streams send every frame in between."""
        return replace(self, replay_ms=self.now_ms(wall_s) + delta_ms, wall_s=wall_s)


# --- loading ---------------------------------------------------------------------------------


def _decimals(texts: Iterable[str]) -> int:
    # Some recordings hold float artefacts (1.2147000000000001); Binance quotes <= 8 decimals.
    found = [len(text.partition(".")[2]) for text in texts]
    return max((d for d in found if d <= 8), default=8)


def _number(text: str, default: float) -> float:
    return float(text) if text.strip() else default


def parse_kline_csv(text: str, market: str, symbol: str, interval: str) -> Dataset:
    """Parse a recorded CSV (``open_time_ms,open,high,low,close,volume,close_time_ms,...``).

    Empty columns (OHLCV-only recordings) are estimated: quote volume = volume x mean price,
    takers = half, trades = 0 (then trade ids are -1 as on Binance).
    """
    rows = list(csv.DictReader(io.StringIO(text)))
    klines, next_trade_id = [], 1
    for row in rows:
        open_, high, low, close = (float(row[name]) for name in ("open", "high", "low", "close"))
        volume = float(row["volume"])
        quote = _number(row["quote_volume"], volume * (open_ + high + low + close) / 4)
        trades = int(row["trades"]) if row["trades"].strip() else 0
        klines.append(Kline(
            open_ms=int(row["open_time_ms"]), close_ms=int(row["close_time_ms"]),
            open=open_, high=high, low=low, close=close, volume=volume, quote_volume=quote,
            trades=trades, taker_base=_number(row["taker_buy_base"], volume / 2),
            taker_quote=_number(row["taker_buy_quote"], quote / 2),
            first_trade_id=next_trade_id if trades else -1,
        ))
        next_trade_id += trades
    sample = rows[:200]
    price_dec = _decimals(r[n] for r in sample for n in ("open", "high", "low", "close"))
    qty_dec = _decimals(r["volume"] for r in sample)
    return Dataset(market, symbol, interval, tuple(klines), price_dec, qty_dec)


def rebase(datasets: Iterable[Dataset], anchor_ms: int) -> list[Dataset]:
    """Shift each symbol's datasets by whole days so the symbol's first day starts at anchor."""
    datasets = list(datasets)
    first: dict[tuple[str, str], int] = {}
    for data in datasets:
        key = (data.market, data.symbol)
        start = data.klines[0].open_ms if data.klines else anchor_ms
        first[key] = min(first.get(key, start), start)
    result = []
    for data in datasets:
        start_day = first[(data.market, data.symbol)] // DAY_MS * DAY_MS
        shift = anchor_ms // DAY_MS * DAY_MS - start_day
        moved = tuple(replace(k, open_ms=k.open_ms + shift, close_ms=k.close_ms + shift) for k in data.klines)
        result.append(replace(data, klines=moved))
    return result


def synthesize_listed(datasets: Sequence[Dataset], exchange_info: dict[str, dict[str, Any]]) -> list[Dataset]:
    """Return a synthetic dataset for every listed TRADING symbol that has no recording.

    Each copies the klines of its market's finest recorded dataset(s) (spot: BTCUSDT 1m,
    futures: XRPUSDT 5m + 1h) with prices scaled by a factor derived from the symbol name, so
    every symbol has its own, deterministic, valid path. Used only with ``--synthesize-listed``
    (the load benchmark needs hundreds of distinct streams; tests keep the recordings alone).
    """
    recorded = {(d.market, d.symbol) for d in datasets}
    result = []
    for market, body in exchange_info.items():
        own = [d for d in datasets if d.market == market and d.interval in INTERVAL_MS]
        if not own:
            continue
        finest = min(own, key=lambda d: (INTERVAL_MS[d.interval], d.symbol))
        template = [d for d in own if d.symbol == finest.symbol]
        for item in body.get("symbols", []):
            symbol = item.get("symbol", "")
            if item.get("status") != "TRADING" or "_" in symbol or (market, symbol) in recorded:
                continue
            scale = 0.5 + zlib.crc32(symbol.encode()) % 1000 / 1000
            for data in template:
                klines = tuple(replace(k, open=k.open * scale, high=k.high * scale, low=k.low * scale,
                                       close=k.close * scale) for k in data.klines)
                result.append(replace(data, symbol=symbol, klines=klines))
    return result


# --- intervals and aggregation ---------------------------------------------------------------


def bucket_start(ms: int, interval: str) -> int:
    """Return the open time of the Binance ``interval`` candle containing ``ms``."""
    if interval == "1M":
        moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
        return int(datetime(moment.year, moment.month, 1, tzinfo=timezone.utc).timestamp() * 1000)
    width = INTERVAL_MS[interval]
    offset = _WEEK_OFFSET_MS if interval == "1w" else 0
    return (ms - offset) // width * width + offset


def bucket_end(start_ms: int, interval: str) -> int:
    """Return the open time of the candle after the one opening at ``start_ms``."""
    if interval == "1M":
        moment = datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc)
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)
    return start_ms + INTERVAL_MS[interval]


def _divides(base: str, interval: str) -> bool:
    if interval == "1M":
        return DAY_MS % INTERVAL_MS[base] == 0
    return INTERVAL_MS[interval] % INTERVAL_MS[base] == 0


def pick_base(datasets: Sequence[Dataset], interval: str) -> Dataset | None:
    """Return the widest dataset whose interval divides ``interval`` (None: not derivable)."""
    usable = [d for d in datasets if d.interval in INTERVAL_MS and _divides(d.interval, interval)]
    return max(usable, key=lambda d: INTERVAL_MS[d.interval], default=None)


def aggregate(klines: Sequence[Kline], interval: str) -> list[Kline]:
    """Roll klines up into ``interval`` buckets (first open, max high, min low, last close, sums)."""
    groups: dict[int, list[Kline]] = {}
    for kline in klines:
        groups.setdefault(bucket_start(kline.open_ms, interval), []).append(kline)
    return [_merge(start, bucket_end(start, interval) - 1, group) for start, group in groups.items()]


def _merge(open_ms: int, close_ms: int, group: list[Kline]) -> Kline:
    with_trades = [k.first_trade_id for k in group if k.first_trade_id >= 0]
    return Kline(
        open_ms, close_ms, group[0].open, max(k.high for k in group), min(k.low for k in group),
        group[-1].close, sum(k.volume for k in group), sum(k.quote_volume for k in group),
        sum(k.trades for k in group), sum(k.taker_base for k in group),
        sum(k.taker_quote for k in group), with_trades[0] if with_trades else -1,
    )


def build_series(datasets: Sequence[Dataset], interval: str) -> Series | None:
    """Return the ``interval`` series derivable from one symbol's datasets, or None."""
    base = pick_base(datasets, interval)
    if base is None:
        return None
    klines = base.klines if base.interval == interval else tuple(aggregate(base.klines, interval))
    return Series(
        base.market, base.symbol, interval, tuple(klines), tuple(k.open_ms for k in klines),
        tuple(k.close_ms + 1 for k in klines), base.price_decimals, base.qty_decimals,
    )


# --- candle path -----------------------------------------------------------------------------


def forming_ticks(width_ms: int) -> int:
    """Return how many forming frames a candle of ``width_ms`` sends (about one per 10 s, 5..59)."""
    return min(59, max(5, width_ms // 10_000 - 1))


def _path_price(kline: Kline, fraction: float) -> float:
    rising = kline.close >= kline.open
    points = (kline.open, kline.low if rising else kline.high, kline.high if rising else kline.low, kline.close)
    leg = min(2, int(fraction * 3))
    t = fraction * 3 - leg
    return points[leg] + (points[leg + 1] - points[leg]) * t


def partial(kline: Kline, tick: int, ticks: int) -> Kline:
    """Return the candle as it stood at forming tick ``tick`` of ``ticks`` (0 = just opened)."""
    fraction = tick / (ticks + 1)
    rising = kline.close >= kline.open
    price = _path_price(kline, fraction)
    passed = [kline.open]
    if fraction >= 1 / 3:
        passed.append(kline.low if rising else kline.high)
    if fraction >= 2 / 3:
        passed.append(kline.high if rising else kline.low)
    trades = int(kline.trades * fraction)
    return replace(
        kline, high=max(*passed, price), low=min(*passed, price), close=price,
        volume=kline.volume * fraction, quote_volume=kline.quote_volume * fraction, trades=trades,
        taker_base=kline.taker_base * fraction, taker_quote=kline.taker_quote * fraction,
        first_trade_id=kline.first_trade_id if trades else -1,
    )


def _tick_time(kline: Kline, tick: int, ticks: int) -> int:
    return kline.open_ms + tick * (kline.close_ms + 1 - kline.open_ms) // (ticks + 1)


def state_at(kline: Kline, now_ms: int) -> Kline:
    """Return the candle as the latest frame at or before ``now_ms`` showed it."""
    if now_ms > kline.close_ms:
        return kline
    ticks = forming_ticks(kline.close_ms + 1 - kline.open_ms)
    tick = 0
    while tick < ticks and _tick_time(kline, tick + 1, ticks) <= now_ms:
        tick += 1
    return partial(kline, tick, ticks)


def candle_events(kline: Kline) -> list[StreamEvent]:
    """Return every frame of one candle: the forming ones, then the closed one."""
    ticks = forming_ticks(kline.close_ms + 1 - kline.open_ms)
    events = [
        StreamEvent(_tick_time(kline, tick, ticks), partial(kline, tick, ticks), False)
        for tick in range(1, ticks + 1)
    ]
    events.append(StreamEvent(kline.close_ms + 1, kline, True))
    return events


def stream_events(series: Series, after_ms: int, upto_ms: int, max_candles: int = 2000) -> list[StreamEvent]:
    """Return the frames due in ``(after_ms, upto_ms]``, oldest first.

    More than ``max_candles`` candles in the window means the clock ran far ahead (a huge
    speed); only the newest ``max_candles`` candles are replayed then.
    """
    if upto_ms <= after_ms:
        return []
    first = bisect.bisect_right(series.ends, after_ms)
    last = bisect.bisect_right(series.opens, upto_ms)
    first = max(first, last - max_candles)
    return [
        event
        for kline in series.klines[first:last]
        for event in candle_events(kline)
        if after_ms < event.event_ms <= upto_ms
    ]


def visible_klines(
    series: Series, now_ms: int, start_ms: int | None, end_ms: int | None, limit: int
) -> list[Kline]:
    """Return what ``GET klines`` shows at ``now_ms``: closed candles plus the forming one.

    ``start_ms``/``end_ms`` bound open times (inclusive); without ``start_ms`` the newest
    ``limit`` candles up to ``end_ms`` are returned, as Binance does.
    """
    upper = now_ms if end_ms is None else min(end_ms, now_ms)
    stop = bisect.bisect_right(series.opens, upper)
    if start_ms is not None:
        begin = bisect.bisect_left(series.opens, start_ms)
        chosen = series.klines[begin:min(stop, begin + limit)] if begin < stop else ()
    else:
        chosen = series.klines[max(0, stop - limit):stop]
    return [state_at(kline, now_ms) for kline in chosen]


# --- wire shapes -----------------------------------------------------------------------------


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def kline_object(series: Series, kline: Kline, closed: bool) -> dict[str, Any]:
    """Return the ``k`` object of a kline frame."""
    p, q = series.price_decimals, series.qty_decimals
    last_id = kline.first_trade_id + kline.trades - 1 if kline.first_trade_id >= 0 else -1
    return {
        "t": kline.open_ms, "T": kline.close_ms, "s": series.symbol, "i": series.interval,
        "f": kline.first_trade_id, "L": last_id,
        "o": _fmt(kline.open, p), "c": _fmt(kline.close, p),
        "h": _fmt(kline.high, p), "l": _fmt(kline.low, p),
        "v": _fmt(kline.volume, q), "n": kline.trades, "x": closed,
        "q": _fmt(kline.quote_volume, p), "V": _fmt(kline.taker_base, q),
        "Q": _fmt(kline.taker_quote, p), "B": "0",
    }


def kline_frame(series: Series, event: StreamEvent) -> dict[str, Any]:
    """Return a raw-stream kline frame ``{"e":"kline","E":..,"s":..,"k":{...}}``."""
    return {
        "e": "kline", "E": event.event_ms, "s": series.symbol,
        "k": kline_object(series, event.kline, event.closed),
    }


def rest_row(series: Series, kline: Kline) -> list[Any]:
    """Return a REST klines row ``[open_ms,"o","h","l","c","v",close_ms,"q",n,"V","Q","0"]``."""
    p, q = series.price_decimals, series.qty_decimals
    return [
        kline.open_ms, _fmt(kline.open, p), _fmt(kline.high, p), _fmt(kline.low, p),
        _fmt(kline.close, p), _fmt(kline.volume, q), kline.close_ms,
        _fmt(kline.quote_volume, p), kline.trades, _fmt(kline.taker_base, q),
        _fmt(kline.taker_quote, p), "0",
    ]


def ticker_row(series: Series, now_ms: int, template: dict[str, Any]) -> dict[str, Any]:
    """Return ``template`` (a ticker/24hr row) recomputed from the last 24 h of ``series``."""
    start = bisect.bisect_left(series.opens, now_ms - DAY_MS + 1)
    stop = bisect.bisect_right(series.opens, now_ms)
    window = [state_at(kline, now_ms) for kline in series.klines[start:stop]]
    if not window:
        return {**template, "openTime": now_ms - DAY_MS, "closeTime": now_ms}
    p, q = series.price_decimals, series.qty_decimals
    first, last = window[0], window[-1]
    change = last.close - first.open
    volume = sum(k.volume for k in window)
    quote = sum(k.quote_volume for k in window)
    row = {
        **template,
        "priceChange": _fmt(change, p),
        "priceChangePercent": f"{change / first.open * 100:.3f}" if first.open else "0.000",
        "weightedAvgPrice": _fmt(quote / volume if volume else last.close, p),
        "lastPrice": _fmt(last.close, p), "openPrice": _fmt(first.open, p),
        "highPrice": _fmt(max(k.high for k in window), p),
        "lowPrice": _fmt(min(k.low for k in window), p),
        "volume": _fmt(volume, q), "quoteVolume": _fmt(quote, p),
        "openTime": now_ms - DAY_MS, "closeTime": now_ms, "count": sum(k.trades for k in window),
    }
    quotes = {"prevClosePrice": first.open, "bidPrice": last.close, "askPrice": last.close}
    row.update({key: _fmt(value, p) for key, value in quotes.items() if key in template})
    return row


class ReplayMarket:
    """Everything the replay exchange serves: rebased klines, exchangeInfo and ticker rows."""

    def __init__(
        self,
        datasets: Iterable[Dataset],
        exchange_info: dict[str, dict[str, Any]],
        tickers: dict[str, list[dict[str, Any]]],
    ) -> None:
        self._datasets: dict[tuple[str, str], list[Dataset]] = {}
        for data in datasets:
            self._datasets.setdefault((data.market, data.symbol), []).append(data)
        self._exchange_info = exchange_info
        self._tickers = tickers
        self._symbols = {
            market: {item["symbol"] for item in body.get("symbols", [])}
            for market, body in exchange_info.items()
        }
        self._series: dict[tuple[str, str, str], Series | None] = {}

    def knows(self, market: str, symbol: str) -> bool:
        """Return True when ``symbol`` is listed in the market's exchangeInfo or has data."""
        return symbol in self._symbols.get(market, ()) or (market, symbol) in self._datasets

    def data_symbols(self, market: str) -> list[str]:
        """Return the symbols with recorded klines in ``market``."""
        return sorted(symbol for m, symbol in self._datasets if m == market)

    def data_span(self, market: str, symbol: str) -> tuple[int, int] | None:
        """Return (first open ms, last close ms + 1) of the symbol's recordings."""
        datasets = [d for d in self._datasets.get((market, symbol), []) if d.klines]
        if not datasets:
            return None
        return min(d.klines[0].open_ms for d in datasets), max(d.klines[-1].close_ms + 1 for d in datasets)

    def series(self, market: str, symbol: str, interval: str) -> Series | None:
        """Return the symbol's klines for ``interval`` (None: no data or not derivable)."""
        key = (market, symbol, interval)
        if key not in self._series:
            datasets = self._datasets.get((market, symbol), [])
            valid = interval in KLINE_INTERVALS
            self._series[key] = build_series(datasets, interval) if valid and datasets else None
        return self._series[key]

    def exchange_info(self, market: str, now_ms: int) -> dict[str, Any]:
        """Return the market's exchangeInfo body with ``serverTime`` = replay time."""
        return {**self._exchange_info.get(market, {"symbols": []}), "serverTime": now_ms}

    def tickers(self, market: str, now_ms: int) -> list[dict[str, Any]]:
        """Return ticker/24hr rows; symbols with klines are computed from the last 24 h."""
        rows = []
        for template in self._tickers.get(market, []):
            series = self.series(market, template["symbol"], "1h") or self.series(
                market, template["symbol"], "5m"
            )
            rows.append(ticker_row(series, now_ms, template) if series else template)
        return rows
