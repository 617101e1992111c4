"""freqtrade backtests: input validation, command lines, temp config, data paths, result parsing.

Pure: values in, values out. Paths are only joined here, never touched;
``runner.py`` does the file system and the subprocess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from trade_canvas.errors import InvalidInput
from trade_canvas.series import Timeframe, parse_series_id

TradingMode = Literal["spot", "futures"]

# Always used with fullmatch: ``$`` alone also matches before a trailing newline.
STRATEGY_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASSET_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_PAIR_RE = re.compile(rf"^({_ASSET_RE})/({_ASSET_RE})(?::({_ASSET_RE}))?$")
_TIMERANGE_RE = re.compile(r"^([0-9]{8})?-([0-9]{8})?$")

# Binance's kline intervals, which freqtrade accepts for this exchange (shortest first).
FREQTRADE_TIMEFRAMES: tuple[str, ...] = (
    "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
)
_DATA_EXTENSIONS = ("feather", "parquet")

DEFAULT_EXCHANGE = "binance"
DEFAULT_STAKE_CURRENCY = "USDT"
STDOUT_TAIL_CHARS = 2000
NO_HISTORY_HINT = (
    "Download the missing timeframe data into datadir, or switch to an available timeframe."
)


@dataclass(frozen=True, slots=True)
class PairSpec:
    """A pair ``BASE/QUOTE`` or ``BASE/QUOTE:SETTLE`` (settle only for futures)."""

    base: str
    quote: str
    settle: str | None = None

    @property
    def symbol(self) -> str:
        """``BASE/QUOTE``: the store's symbol and the spot pair."""
        return f"{self.base}/{self.quote}"

    @property
    def text(self) -> str:
        return self.symbol if self.settle is None else f"{self.symbol}:{self.settle}"


@dataclass(frozen=True, slots=True)
class BacktestRequest:
    """A validated backtest request (``timerange`` None means all data)."""

    strategy_name: str
    pair: str
    timeframe: str
    timerange: str | None = None


@dataclass(frozen=True, slots=True)
class BacktestSummary:
    """The headline numbers of one strategy's backtest result."""

    strategy: str
    total_trades: int
    wins: int
    losses: int
    draws: int
    win_rate_pct: float | None
    profit_total_abs: float
    profit_total_pct: float
    max_drawdown_abs: float | None
    max_drawdown_pct: float | None
    stake_currency: str | None
    starting_balance: float | None
    final_balance: float | None
    backtest_start: str | None
    backtest_end: str | None
    timeframe: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape used in run results."""
        return {name: getattr(self, name) for name in self.__slots__}


# --- validation -------------------------------------------------------------------------------


def validate_strategy_name(name: object) -> str:
    """Return ``name`` if it is a Python identifier-like strategy class name.

    Raises:
        InvalidInput: anything else (it becomes a command argument and a class lookup).
    """
    if not isinstance(name, str) or STRATEGY_NAME_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"invalid strategy_name: {name!r} (expected letters, digits and _, not starting "
            "with a digit)"
        )
    return name


def parse_pair(text: object) -> PairSpec:
    """Parse ``BASE/QUOTE`` or ``BASE/QUOTE:SETTLE`` (surrounding blanks are not allowed).

    Raises:
        InvalidInput: on any other shape.
    """
    match = _PAIR_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(f"invalid pair: {text!r} (expected BASE/QUOTE or BASE/QUOTE:SETTLE)")
    return PairSpec(match.group(1), match.group(2), match.group(3))


def validate_timeframe(text: object) -> str:
    """Return ``text`` if freqtrade can backtest Binance data of that timeframe.

    Raises:
        InvalidInput: for anything not in FREQTRADE_TIMEFRAMES.
    """
    if not isinstance(text, str) or text not in FREQTRADE_TIMEFRAMES:
        raise InvalidInput(
            f"invalid timeframe: {text!r} (expected one of {', '.join(FREQTRADE_TIMEFRAMES)})"
        )
    return text


def _parse_day(text: str, side: str) -> date:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise InvalidInput(f"invalid timerange: {side} date {text} does not exist") from None


def validate_timerange(text: object) -> str | None:
    """Return a ``YYYYMMDD-YYYYMMDD`` timerange (either side may be empty), or None.

    None and ``""`` mean the whole data set.

    Raises:
        InvalidInput: bad shape, both sides empty, impossible dates, start after end.
    """
    if text is None or text == "":
        return None
    match = _TIMERANGE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None or match.group(0) == "-":
        raise InvalidInput(
            f"invalid timerange: {text!r} (expected YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD)"
        )
    start = _parse_day(match.group(1), "start") if match.group(1) else None
    end = _parse_day(match.group(2), "end") if match.group(2) else None
    if start is not None and end is not None and start > end:
        raise InvalidInput(f"invalid timerange: {text!r} starts after it ends")
    return str(text)


def validate_request(
    strategy_name: object, pair: object, timeframe: object, timerange: object = None
) -> BacktestRequest:
    """Validate the four request fields at once, in the order the API documents.

    Raises:
        InvalidInput: naming the first bad field.
    """
    return BacktestRequest(
        strategy_name=validate_strategy_name(strategy_name),
        pair=parse_pair(pair).text,
        timeframe=validate_timeframe(timeframe),
        timerange=validate_timerange(timerange),
    )


def trading_mode_of(base_config: Mapping[str, Any]) -> TradingMode:
    """Return the base config's ``trading_mode`` (default spot).

    Raises:
        InvalidInput: for margin or unknown modes, which we do not backtest.
    """
    mode = base_config.get("trading_mode") or "spot"
    if mode not in ("spot", "futures"):
        raise InvalidInput(f"unsupported trading_mode in freqtrade config: {mode!r}")
    return "futures" if mode == "futures" else "spot"


def freqtrade_pair(text: str, trading_mode: TradingMode) -> PairSpec:
    """Return the pair as freqtrade names it in ``trading_mode``.

    Futures pairs get a settle currency (``BTC/USDT`` -> ``BTC/USDT:USDT``; USD-M perpetuals
    settle in their quote); a settled pair in a spot config is an error, not a silent strip.

    Raises:
        InvalidInput: bad pair, or ``B/Q:S`` with a spot config.
    """
    spec = parse_pair(text)
    if trading_mode == "futures":
        return spec if spec.settle else PairSpec(spec.base, spec.quote, spec.quote)
    if spec.settle is not None:
        raise InvalidInput(
            f"pair {text!r} is a futures pair but the freqtrade config trades spot"
        )
    return spec


def series_id_for(
    pair: PairSpec, timeframe: str, trading_mode: TradingMode, exchange: str = DEFAULT_EXCHANGE
) -> str:
    """Return the candle store's series id for a pair, e.g. ``binance:futures:BTC/USDT:5m``.

    Freqtrade's ``1M`` is the store's ``1M`` (calendar months opening on the 1st, 00:00 UTC).

    Raises:
        InvalidInput: when the store cannot hold the timeframe (not ``<n>m|h|d|w`` or ``1M``).
    """
    return parse_series_id(f"{exchange}:{trading_mode}:{pair.symbol}:{timeframe}").text



def timerange_bounds(timerange: str | None) -> tuple[int | None, int | None]:
    """Return the UTC epoch seconds ``[start, end)`` of a validated timerange (None: open side).

    The end day is included whole: ``20200101-20200103`` ends at 2020-01-04 00:00.
    """
    if not timerange:
        return None, None
    start_text, _, end_text = timerange.partition("-")
    start = _day_seconds(start_text) if start_text else None
    end = _day_seconds(end_text) + _DAY_S if end_text else None
    return start, end


_DAY_S = 86_400


def _day_seconds(text: str) -> int:
    return (date(int(text[:4]), int(text[4:6]), int(text[6:])) - date(1970, 1, 1)).days * _DAY_S


def export_window(
    timerange: str | None, timeframe: Timeframe, head_time: int, max_candles: int,
    warmup_candles: int,
) -> tuple[int, int]:
    """Return the inclusive ``(first, last)`` candle times to export from the store for a run.

    ``warmup_candles`` before the timerange's start feed the strategy's startup candles; without
    a start the newest ``max_candles`` up to ``head_time`` are taken, and never more than that.
    """
    start, end = timerange_bounds(timerange)
    last = head_time if end is None else min(head_time, end - 1)
    newest_first = timeframe.window_start(last, max_candles - 1)
    first = newest_first if start is None else max(
        timeframe.window_start(start, warmup_candles), newest_first)
    return first, last

# --- data files -------------------------------------------------------------------------------


def pair_file_stem(pair: PairSpec) -> str:
    """Return freqtrade's file-name form of a pair (``/`` and ``:`` become ``_``)."""
    return pair.text.replace("/", "_").replace(":", "_")


def _timeframe_file_part(timeframe: str) -> str:
    # freqtrade writes month candles as "1Mo" so that 1M and 1m differ on case-blind disks.
    return timeframe.replace("M", "Mo")


def data_file_path(
    datadir: Path, pair: PairSpec, timeframe: str, trading_mode: TradingMode,
    extension: str = "feather",
) -> Path:
    """Return where freqtrade reads ``pair``'s candles in ``datadir``.

    Spot ``<datadir>/BTC_USDT-5m.feather``; futures
    ``<datadir>/futures/BTC_USDT_USDT-5m-futures.feather`` (the pair must carry its settle).
    """
    name = f"{pair_file_stem(pair)}-{_timeframe_file_part(timeframe)}"
    if trading_mode == "futures":
        return datadir / "futures" / f"{name}-futures.{extension}"
    return datadir / f"{name}.{extension}"


def expected_data_paths(
    datadir: Path, pair: PairSpec, timeframe: str, trading_mode: TradingMode
) -> list[Path]:
    """Return every file that would satisfy freqtrade for this pair (feather, then parquet)."""
    return [data_file_path(datadir, pair, timeframe, trading_mode, ext) for ext in _DATA_EXTENSIONS]


def data_listing_dir(datadir: Path, trading_mode: TradingMode) -> Path:
    """Return the directory whose file names ``available_timeframes`` expects."""
    return datadir / "futures" if trading_mode == "futures" else datadir


def available_timeframes(
    file_names: Iterable[str], pair: PairSpec, trading_mode: TradingMode
) -> list[str]:
    """Return the timeframes that have a data file for ``pair``, shortest first.

    Args:
        file_names: bare names in ``data_listing_dir(datadir, trading_mode)``.
    """
    suffix = "-futures" if trading_mode == "futures" else ""
    exts = "|".join(_DATA_EXTENSIONS)
    pattern = re.compile(rf"^{re.escape(pair_file_stem(pair))}-(\w+){suffix}\.(?:{exts})$")
    found = set()
    for name in file_names:
        match = pattern.fullmatch(name)
        timeframe = match.group(1).replace("Mo", "M") if match else None
        if timeframe in FREQTRADE_TIMEFRAMES:
            found.add(timeframe)
    return [tf for tf in FREQTRADE_TIMEFRAMES if tf in found]


def download_data_command(
    bin_path: str, config: Path, userdir: Path, pair: PairSpec, timeframe: str,
    trading_mode: TradingMode,
) -> str:
    """Return the ``freqtrade download-data`` command a user can run to fetch missing data."""
    command = (
        f"{bin_path} download-data -c {config} --userdir {userdir} --pairs {pair.text} "
        f"--timeframes {timeframe}"
    )
    return command + (" --trading-mode futures" if trading_mode == "futures" else "")


# --- command lines and config -----------------------------------------------------------------


def child_command(
    python: str, bin_path: str, offline_markets: bool, args: Sequence[str]
) -> list[str]:
    """Return the argv that runs freqtrade with ``args``.

    Offline: ``python -m trade_canvas.freqtrade.offline <args>`` (synthesized markets, no
    network). Otherwise the freqtrade executable ``bin_path`` runs as is.
    """
    if offline_markets:
        return [python, "-m", "trade_canvas.freqtrade.offline", *args]
    return [bin_path, *args]


def _common_args(userdir: Path | None, strategy_path: Path | None) -> list[str]:
    args = ["--logfile", "/dev/null", "--no-color"]
    if userdir is not None:
        args += ["--userdir", str(userdir)]
    if strategy_path is not None:
        args += ["--strategy-path", str(strategy_path)]
    return args


def list_strategies_args(
    userdir: Path | None, strategy_path: Path | None, recursive: bool = True
) -> list[str]:
    """Return freqtrade arguments that print one strategy name per line."""
    args = ["list-strategies", "-1", *_common_args(userdir, strategy_path)]
    return args + (["--recursive-strategy-search"] if recursive else [])


def backtesting_args(
    request: BacktestRequest, pair: PairSpec, *, config: Path, datadir: Path,
    export_dir: Path, userdir: Path | None, strategy_path: Path | None,
) -> list[str]:
    """Return freqtrade arguments for one backtest exporting trades into ``export_dir``."""
    args = ["backtesting", "--strategy", request.strategy_name,
            *_common_args(userdir, strategy_path),
            "--timeframe", request.timeframe, "--pairs", pair.text, "-c", str(config),
            "--datadir", str(datadir)]
    if request.timerange:
        args += ["--timerange", request.timerange]
    return args + ["--export", "trades", "--backtest-directory", str(export_dir)]


# Keys freqtrade lets a config override on the strategy: copied only when the base config sets
# them, so the strategy's own ROI, stoploss, trailing and order settings stay in force (the
# earlier backend forced ``stoploss: -1`` and ``minimal_roi: {}``, silently changing results).
_STRATEGY_OVERRIDES = (
    "minimal_roi", "stoploss", "trailing_stop", "trailing_stop_positive",
    "trailing_stop_positive_offset", "trailing_only_offset_is_reached", "use_exit_signal",
    "exit_profit_only", "exit_profit_offset", "ignore_roi_if_entry_signal",
    "ignore_buying_expired_candle_after", "order_types", "order_time_in_force",
    "unfilledtimeout", "position_adjustment_enable", "max_entry_position_adjustment",
)
_COPIED = ("protections", "futures_funding_rate", "liquidation_buffer", "dataformat_ohlcv")
_DEFAULTS: dict[str, Any] = {
    "dry_run_wallet": 1000, "max_open_trades": 3, "stake_currency": DEFAULT_STAKE_CURRENCY,
    "stake_amount": "unlimited", "tradable_balance_ratio": 0.99,
    "fiat_display_currency": "USD", "cancel_open_orders_on_exit": False,
    # Order-book pricing: Binance futures tickers carry no price, so freqtrade refuses ticker
    # pricing there; backtests never read either.
    "entry_pricing": {"price_side": "same", "use_order_book": True, "order_book_top": 1},
    "exit_pricing": {"price_side": "same", "use_order_book": True, "order_book_top": 1},
}
_SCHEMA_URL = "https://schema.freqtrade.io/schema.json"


def build_config(
    base: Mapping[str, Any], request: BacktestRequest, pair: PairSpec, datadir: Path
) -> dict[str, Any]:
    """Return the minimal freqtrade config for one backtest of ``pair``.

    Built fresh, not copied: only the keys named here come from ``base``, so a live config's
    API keys, Telegram and API-server settings never reach the backtest.
    """
    mode = trading_mode_of(base)
    exchange = base.get("exchange") or {}
    config: dict[str, Any] = {"$schema": base.get("$schema", _SCHEMA_URL), "dry_run": True}
    config.update({key: base.get(key, default) for key, default in _DEFAULTS.items()})
    config.update({key: base[key] for key in (*_STRATEGY_OVERRIDES, *_COPIED) if key in base})
    config.update({
        "trading_mode": mode,
        "margin_mode": base.get("margin_mode") or ("isolated" if mode == "futures" else ""),
        "timeframe": request.timeframe,
        "datadir": str(datadir),
        "exchange": {
            "name": exchange.get("name", DEFAULT_EXCHANGE),
            "ccxt_config": exchange.get("ccxt_config", {}),
            "ccxt_async_config": exchange.get("ccxt_async_config", {}),
            "pair_whitelist": [pair.text],
            "pair_blacklist": list(exchange.get("pair_blacklist", [])),
        },
        "pairlists": [{"method": "StaticPairList"}],
        "internals": {"process_throttle_secs": 5},
    })
    return config


def render_config(config: Mapping[str, Any]) -> str:
    """Return the config as compact JSON text."""
    return json.dumps(config, ensure_ascii=False, separators=(",", ":"))


# --- output parsing ---------------------------------------------------------------------------


def parse_strategy_list(stdout: str) -> list[str]:
    """Return the sorted, de-duplicated strategy names in ``list-strategies -1`` output."""
    names = {line.strip() for line in stdout.splitlines()}
    return sorted(name for name in names if STRATEGY_NAME_RE.fullmatch(name))


def pick_result_member(names: Iterable[str]) -> str | None:
    """Return the export zip member holding the backtest result JSON, if any."""
    candidates = [n for n in names if n.endswith(".json") and not n.endswith("_config.json")]
    preferred = [n for n in candidates if Path(n).name.startswith("backtest-result-")]
    chosen = preferred or candidates
    return sorted(chosen)[0] if chosen else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _pct(ratio: Any) -> float | None:
    value = _float(ratio)
    return round(value * 100, 4) if value is not None else None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _strategy_stats(result: Mapping[str, Any], strategy: str) -> Mapping[str, Any]:
    strategies = result.get("strategy")
    if not isinstance(strategies, Mapping) or not strategies:
        raise InvalidInput("backtest result has no 'strategy' section")
    stats = strategies.get(strategy)
    if stats is None and len(strategies) == 1:
        stats = next(iter(strategies.values()))
    if not isinstance(stats, Mapping):
        raise InvalidInput(f"backtest result has no entry for strategy {strategy!r}")
    return stats


def summarize_result(result: Mapping[str, Any], strategy: str) -> BacktestSummary:
    """Return the headline numbers from a parsed ``backtest-result-*.json``.

    Raises:
        InvalidInput: when the JSON lacks the strategy section.
    """
    stats = _strategy_stats(result, strategy)
    trades = stats.get("trades")
    total = _int(stats.get("total_trades", len(trades) if isinstance(trades, list) else 0))
    wins, losses, draws = (_int(stats.get(k)) for k in ("wins", "losses", "draws"))
    pct = stats.get("profit_total")
    dd_pct = stats.get("max_drawdown_account", stats.get("max_relative_drawdown"))
    return BacktestSummary(
        strategy=strategy, total_trades=total, wins=wins, losses=losses, draws=draws,
        win_rate_pct=_pct(stats.get("winrate")) if total else None,
        profit_total_abs=_float(stats.get("profit_total_abs")) or 0.0,
        profit_total_pct=_pct(pct) or 0.0,
        max_drawdown_abs=_float(stats.get("max_drawdown_abs")),
        max_drawdown_pct=_pct(dd_pct),
        stake_currency=stats.get("stake_currency"),
        starting_balance=_float(stats.get("starting_balance")),
        final_balance=_float(stats.get("final_balance")),
        backtest_start=stats.get("backtest_start"), backtest_end=stats.get("backtest_end"),
        timeframe=stats.get("timeframe"),
    )


def parse_result_json(text: str | bytes, strategy: str) -> BacktestSummary:
    """Parse the result JSON text and summarize it.

    Raises:
        InvalidInput: when the text is not JSON or lacks the strategy section.
    """
    try:
        result = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"backtest result is not JSON: {exc}") from None
    if not isinstance(result, Mapping):
        raise InvalidInput("backtest result is not a JSON object")
    return summarize_result(result, strategy)


def tail(text: str, limit: int) -> str:
    """Return the last ``limit`` characters of ``text``."""
    return text[-limit:] if len(text) > limit else text
