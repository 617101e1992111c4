"""Backtests in the runtime: settings mapping, the BacktestActor's start, and its facade.

Kept out of ``system.py`` because it is one concept of its own (freqtrade paths, the store
export before a run, the waits) and ``Runtime`` only needs a handle on it: the HTTP resources
call ``runtime.backtests.<method>``, which asks the actor with explicit timeouts and reads
candles from the store, like the rest of the facade.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import pykka

from trade_canvas.actors.backtest import BacktestActor, strategies_and_wait
from trade_canvas.actors.messages import (
    ExportCandles,
    GetBacktest,
    GetPairTimeframes,
    ListBacktests,
    RunBacktest,
)
from trade_canvas.candles import Candle
from trade_canvas.config import Settings
from trade_canvas.errors import InvalidInput, NotFound, Unavailable
from trade_canvas.freqtrade import commands as bt
from trade_canvas.freqtrade.runner import freqtrade_missing
from trade_canvas.freqtrade.values import BacktestJob, BacktestResult, BacktestSettings
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.runtime import history
from trade_canvas.series import (
    SeriesId, expected_latest_closed_time, parse_series_id, parse_timeframe,
)
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0
EXPORT_TIMEOUT_S = 120.0  # first export imports pandas; 500k rows take a few seconds more
EXPORT_MAX_CANDLES = 500_000
EXPORT_WARMUP_CANDLES = 1_000  # before the timerange, for the strategy's startup candles
READ_CHUNK = 10_000
RESULT_WAIT_SLACK_S = 30.0


def _resolve(root: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else root / path


def backtest_settings(settings: Settings, cwd: Path | None = None) -> BacktestSettings:
    """Map the ``TRADE_CANVAS_FREQTRADE_*``/``BACKTEST_*`` settings onto the actor's settings.

    ``FREQTRADE_ROOT`` resolves against ``cwd`` (default: the working directory); every other
    relative path resolves against the root.
    """
    root = _resolve((cwd or Path.cwd()), settings.freqtrade_root).resolve()
    return BacktestSettings(
        root=root,
        config_path=_resolve(root, settings.freqtrade_config),
        userdir=_resolve(root, settings.freqtrade_userdir),
        datadir=_resolve(root, settings.freqtrade_datadir) if settings.freqtrade_datadir else None,
        strategy_path=(_resolve(root, settings.freqtrade_strategy_path)
                       if settings.freqtrade_strategy_path else None),
        bin=settings.freqtrade_bin,
        offline_markets=settings.freqtrade_offline_markets,
        subprocess_timeout_s=settings.freqtrade_subprocess_timeout_s,
        require_trades=settings.backtest_require_trades,
        max_concurrent=settings.backtest_max_concurrent,
        queue_size=settings.backtest_queue_size,
        keep_results=settings.backtest_keep_results,
    )


class Backtests:
    """Facade over the BacktestActor; safe to call from any request greenlet."""

    def __init__(
        self, settings: BacktestSettings, actor: pykka.ActorRef[Any], store: CandleStore,
        fetch: Callable[[SeriesId, int, int, history.Progress], int] | None = None,
    ) -> None:
        self.settings = settings
        self.actor = actor
        self.store = store
        self.fetch = fetch  # fills the store over REST (TRADE_CANVAS_BACKTEST_FETCH_MISSING)

    def freqtrade_missing(self) -> str | None:
        """Return why freqtrade cannot run here (not installed, executable missing), or None."""
        return freqtrade_missing(self.settings)

    def _require_freqtrade(self) -> None:
        problem = self.freqtrade_missing()
        if problem is not None:
            raise Unavailable(problem)

    def _ask(self, message: Any, timeout: float = ASK_TIMEOUT_S) -> Any:
        try:
            return self.actor.ask(message, timeout=timeout)
        except pykka.ActorDeadError as exc:
            raise Unavailable("backtest actor is not running") from exc

    def strategies(self, recursive: bool = True) -> list[str]:
        """Return the strategy names freqtrade finds (runs ``list-strategies``)."""
        self._require_freqtrade()
        try:
            return strategies_and_wait(self.actor, self.settings.subprocess_timeout_s + 10,
                                       recursive)
        except pykka.ActorDeadError as exc:
            raise Unavailable("backtest actor is not running") from exc

    def pair_timeframes(self, pair: str) -> dict[str, Any]:
        """Return ``{pair, trading_mode, datadir, available_timeframes}`` for ``pair``."""
        bt.parse_pair(pair)
        return dict(self._ask(GetPairTimeframes(pair)))

    def run(self, request: bt.BacktestRequest) -> BacktestResult:
        """Run one backtest and wait for its result, exporting stored candles first if needed.

        Raises:
            Unavailable: freqtrade missing, the actor gone, or no result in time (the run goes
                on and its id is in the message).
            CapacityExceeded: every slot busy and the queue full.
            InvalidInput, ConfigError: bad pair for the config, bad freqtrade setup.
        """
        self._require_freqtrade()
        info = self._ask(GetPairTimeframes(request.pair))
        exported: tuple[str, int] | None = None
        have_file = request.timeframe in info["available_timeframes"]
        prepare = None
        if self.fetch is not None and bt.timerange_bounds(request.timerange)[0] is not None:
            def prepare(report: Callable[[dict[str, Any]], None]) -> None:
                nonlocal exported
                exported = self._fetch_and_export(request, info["trading_mode"], have_file, report)
        elif not have_file:
            exported = self._export_from_store(request, info["trading_mode"])
        done: pykka.Future[BacktestResult] = pykka.ThreadingFuture()
        job: BacktestJob = self._ask(RunBacktest(request, reply_to=done, prepare=prepare))
        try:
            result = done.get(timeout=self._result_wait_s())
        except pykka.Timeout:
            raise Unavailable(
                f"backtest {job.job_id} is still running; poll GET /api/backtest/results/"
                f"{job.job_id}") from None
        if result.status == "no_ohlcv_history":
            result = dataclasses.replace(result, detail={
                **result.detail, "series_id": exported[0] if exported else None,
                "exported_candles": exported[1] if exported else 0})
        return result

    def _result_wait_s(self) -> float:
        # A run may wait behind every queued one, each bounded by the child timeout.
        rounds = 1 + math.ceil(self.settings.queue_size / self.settings.max_concurrent)
        return rounds * (self.settings.subprocess_timeout_s + 2 * 5.0) + RESULT_WAIT_SLACK_S

    def _export_from_store(
        self, request: bt.BacktestRequest, trading_mode: bt.TradingMode
    ) -> tuple[str, int] | None:
        spec = bt.freqtrade_pair(request.pair, trading_mode)
        try:
            series_id = bt.series_id_for(spec, request.timeframe, trading_mode)
        except InvalidInput:
            return None  # a timeframe the store cannot hold
        candles = self._read_for_export(series_id, request)
        if candles:
            path = self._ask(ExportCandles(request.pair, request.timeframe, tuple(candles)),
                             timeout=EXPORT_TIMEOUT_S)
            logger.info("exported %d candles of %s to %s", len(candles), series_id, path)
        return series_id, len(candles)

    def _fetch_and_export(
        self, request: bt.BacktestRequest, trading_mode: bt.TradingMode, have_file: bool,
        report: Callable[[dict[str, Any]], None],
    ) -> tuple[str, int] | None:
        """Fetch the closed candles the store lacks for the timerange, then export them.

        An existing data file keeps its rows and gains the ones it lacks.
        """
        assert self.fetch is not None
        spec = bt.freqtrade_pair(request.pair, trading_mode)
        try:
            series = parse_series_id(bt.series_id_for(spec, request.timeframe, trading_mode))
        except InvalidInput:
            return None  # a timeframe the store cannot hold
        closed = expected_latest_closed_time(int(time.time()), series.timeframe)
        first, last = bt.export_window(request.timerange, series.timeframe, closed,
                                       EXPORT_MAX_CANDLES,
                                       EXPORT_WARMUP_CANDLES)

        def progress(done: int, total: int) -> None:
            report({"step": "fetching_candles", "series_id": series.text,
                    "done_candles": done, "missing_candles": total,
                    "pct": 100.0 if total == 0 else round(done / total * 100, 1)})

        fetched = self.fetch(series, first, last, progress)
        candles = self._read_for_export(series.text, request)
        report({"step": "exporting", "series_id": series.text, "fetched_candles": fetched,
                "candles": len(candles)})
        if candles:
            self._ask(ExportCandles(request.pair, request.timeframe, tuple(candles),
                                    merge=have_file), timeout=EXPORT_TIMEOUT_S)
        report({"step": "running", "series_id": series.text, "fetched_candles": fetched,
                "candles": len(candles)})
        return series.text, len(candles)

    def _read_for_export(self, series_id: str, request: bt.BacktestRequest) -> list[Candle]:
        head = self.store.head_time(series_id)
        if head is None:
            return []
        tf = parse_timeframe(request.timeframe)
        first, last = bt.export_window(request.timerange, tf, head, EXPORT_MAX_CANDLES,
                                       EXPORT_WARMUP_CANDLES)
        candles: list[Candle] = []
        since = first - 1  # read_since is exclusive
        while True:
            # Short indexed reads with a yield between them: SQLite does not cooperate with
            # gevent, so one long read would stall every request and actor.
            chunk = self.store.read_since(series_id, since, READ_CHUNK)
            candles.extend(c for c in chunk if c.candle_time <= last)
            if len(chunk) < READ_CHUNK or chunk[-1].candle_time >= last:
                return candles
            since = chunk[-1].candle_time
            time.sleep(0)

    def results(self, limit: int) -> list[BacktestJob]:
        """Return running and queued jobs, then finished ones, newest first (at most ``limit``)."""
        jobs: tuple[BacktestJob, ...] = self._ask(ListBacktests())
        return list(jobs[:limit])

    def result(self, job_id: str) -> BacktestJob:
        """Return one job by id.

        Raises:
            NotFound: unknown id (or finished so long ago it was dropped).
        """
        job: BacktestJob | None = self._ask(GetBacktest(job_id))
        if job is None:
            raise NotFound(f"backtest not found: {job_id}")
        return job

    def stop(self) -> None:
        """Stop the actor; waiting callers get Unavailable, running children finish or time out."""
        try:
            self.actor.stop(block=True, timeout=10)
        except pykka.Timeout:
            logger.error("backtest actor did not stop within 10s")


def start_backtests(
    settings: Settings, store: CandleStore, rest: BinanceRest | None = None,
    ingest: history.Ingest | None = None,
) -> Backtests:
    """Start the BacktestActor from the settings and return its facade.

    Never fails for lack of freqtrade: that is reported per request (503), so a server
    without the backtest extra still serves market data. With
    ``TRADE_CANVAS_BACKTEST_FETCH_MISSING`` (and ``rest``/``ingest``), a run over a timerange
    first fetches the closed candles the store lacks.
    """
    mapped = backtest_settings(settings)
    actor = BacktestActor.start(mapped, store=store)
    problem = freqtrade_missing(mapped)
    logger.info("backtests: userdir=%s config=%s%s", mapped.userdir, mapped.config_path,
                f" (unavailable: {problem})" if problem else "")
    fetch = None
    if settings.backtest_fetch_missing and rest is not None and ingest is not None:
        fetch = lambda series, first, last, progress: history.fill_range(  # noqa: E731
            rest, store, ingest, series, first, last, progress)
    return Backtests(mapped, actor, store, fetch)
