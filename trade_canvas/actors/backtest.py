"""BacktestActor: runs freqtrade backtests as child processes, a few at a time, never blocking.

The actor owns only bookkeeping: the job table, the wait queue and the run slots. Each run
happens in its own thread (a greenlet under gevent's monkey-patching, where ``subprocess`` is
cooperative), which tells the actor ``_RunFinished`` when done. So a status query never waits
behind a backtest, and the actor never blocks on a child.

How the runtime facade uses it (every message here is *asked*, with a timeout)::

    done = pykka.ThreadingFuture()
    job = actor.ask(RunBacktest(request, reply_to=done), timeout=5)  # BacktestJob, queued
    result = done.get(timeout=settings.subprocess_timeout_s + 30)    # BacktestResult

or simply ``run_backtest_and_wait(actor, request, timeout)``. ``RunBacktest`` raises
``CapacityExceeded`` (through the ask) when every slot is busy and the queue is full.
``GetBacktest(job_id)`` and ``ListBacktests()`` answer at once from memory. What a run does
(the child process, its limits, the export it leaves) is ``freqtrade_run.py``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import pykka

from trade_canvas import backtest as bt
from trade_canvas.actors.freqtrade_run import (
    BacktestResult,
    export_candles,
    list_strategies,
    pair_timeframes,
    run_backtest,
)
from trade_canvas.candles import Candle
from trade_canvas.errors import CapacityExceeded, TradeCanvasError, Unavailable, UpstreamError

logger = logging.getLogger(__name__)

MiB = 1024 * 1024

JobState = Literal["queued", "running", "done"]


@dataclass(frozen=True, slots=True)
class BacktestSettings:
    """Where freqtrade lives and how runs are bounded (built by ``config/`` from the env).

    ``datadir`` None: the base config's ``datadir`` (relative to the config file), else
    ``<userdir>/data``. ``python`` runs the offline wrapper; ``bin`` runs freqtrade directly when
    ``offline_markets`` is off and appears in download hints.
    """

    root: Path
    config_path: Path
    userdir: Path
    datadir: Path | None = None
    strategy_path: Path | None = None
    bin: str = "freqtrade"
    python: str = sys.executable
    offline_markets: bool = True
    subprocess_timeout_s: float = 120.0
    require_trades: bool = False
    max_concurrent: int = 2
    queue_size: int = 8
    keep_results: int = 50
    output_cap_bytes: int = MiB


@dataclass(frozen=True, slots=True)
class BacktestJob:
    """One submitted backtest as the listing shows it; ``result`` once ``state`` is done."""

    job_id: str
    request: bt.BacktestRequest
    state: JobState
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: BacktestResult | None = None
    progress: dict[str, Any] | None = None  # e.g. fetching missing candles before the run

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape used by the listing endpoint."""
        return {
            "id": self.job_id, "state": self.state,
            "request": {"strategy_name": self.request.strategy_name, "pair": self.request.pair,
                        "timeframe": self.request.timeframe,
                        "timerange": self.request.timerange},
            "submitted_at": self.submitted_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "progress": self.progress,
            "result": self.result.to_dict() if self.result else None,
        }


# --- messages (ask them; see the module docstring) --------------------------------------------


@dataclass(frozen=True, slots=True)
class RunBacktest:
    """Queue a backtest; answers the queued BacktestJob, later sets ``reply_to`` to the result."""

    request: bt.BacktestRequest
    reply_to: pykka.Future[BacktestResult] | None = None
    # Called in the job's thread before freqtrade runs, with a function reporting progress
    # (a dict shown as the job's ``progress``); an UpstreamError ends the job as
    # ``exchange_unreachable``. The runtime fetches and exports missing candles here.
    prepare: Callable[[Callable[[dict[str, Any]], None]], None] | None = None


@dataclass(frozen=True, slots=True)
class GetBacktest:
    """Answer the BacktestJob with this id, or None."""

    job_id: str


@dataclass(frozen=True, slots=True)
class ListBacktests:
    """Answer running and queued jobs, then the last finished ones, newest first."""


@dataclass(frozen=True, slots=True)
class ListStrategies:
    """Run ``freqtrade list-strategies`` in a thread; sets ``reply_to`` to the sorted names.

    The ask answers None at once; ``reply_to`` gets the names or an exception.
    """

    reply_to: pykka.Future[list[str]]
    recursive: bool = True


@dataclass(frozen=True, slots=True)
class GetPairTimeframes:
    """Answer ``{pair, trading_mode, datadir, available_timeframes}`` (a directory listing)."""

    pair: str


@dataclass(frozen=True, slots=True)
class ExportCandles:
    """Write stored candles as freqtrade's data file for the pair; answers the file path.

    Runs in the actor (a pandas write of a few thousand rows); ``pair`` is as the request
    gives it, the trading mode comes from the base config.
    """

    pair: str
    timeframe: str
    candles: tuple[Candle, ...]
    merge: bool = False  # keep the rows of an existing file, adding the new ones


@dataclass(frozen=True, slots=True)
class _Progress:
    job_id: str
    progress: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _RunFinished:
    job_id: str
    result: BacktestResult


@dataclass(frozen=True, slots=True)
class _ListingFinished:
    pass


Runner = Callable[[BacktestSettings, str, bt.BacktestRequest], BacktestResult]

# --- the actor --------------------------------------------------------------------------------


class BacktestActor(pykka.ThreadingActor):
    """Queues backtests and runs at most ``max_concurrent`` at once, each in its own thread."""

    def __init__(
        self, settings: BacktestSettings, clock: Callable[[], float] = time.time,
        runner: Runner = run_backtest,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._clock = clock
        self._runner = runner
        self._jobs: OrderedDict[str, BacktestJob] = OrderedDict()  # queued and running
        self._queue: deque[str] = deque()
        self._waiters: dict[str, pykka.Future[BacktestResult]] = {}
        self._finished: deque[BacktestJob] = deque(maxlen=settings.keep_results)
        self._listings = 0
        self._prepares: dict[str, Any] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case RunBacktest():
                return self._submit(message)
            case GetBacktest(job_id=job_id):
                return self._find(job_id)
            case ListBacktests():
                return self._list()
            case _RunFinished(job_id=job_id, result=result):
                return self._on_finished(job_id, result)
            case ListStrategies():
                return self._start_listing(message)
            case _ListingFinished():
                self._listings -= 1
                return None
            case GetPairTimeframes(pair=pair):
                return pair_timeframes(self._settings, pair)
            case ExportCandles(pair=pair, timeframe=timeframe, candles=candles, merge=merge):
                return export_candles(self._settings, pair, timeframe, candles, merge)
            case _Progress(job_id=job_id, progress=progress):
                if job_id in self._jobs:
                    self._jobs[job_id] = replace(self._jobs[job_id], progress=progress)
                return None
            case _:
                logger.warning("BacktestActor: unexpected message %r", message)
                return None

    def _running_count(self) -> int:
        return sum(1 for job in self._jobs.values() if job.state == "running")

    def _submit(self, message: RunBacktest) -> BacktestJob:
        if (self._running_count() >= self._settings.max_concurrent
                and len(self._queue) >= self._settings.queue_size):
            raise CapacityExceeded(
                f"backtest queue full ({self._settings.max_concurrent} running, "
                f"{self._settings.queue_size} queued); retry later")
        job = BacktestJob(uuid.uuid4().hex[:12], message.request, "queued", self._clock())
        self._jobs[job.job_id] = job
        self._queue.append(job.job_id)
        if message.reply_to is not None:
            self._waiters[job.job_id] = message.reply_to
        if message.prepare is not None:
            self._prepares[job.job_id] = message.prepare
        logger.debug("backtest %s queued: %r", job.job_id, message.request)
        self._start_ready()
        return self._jobs[job.job_id]

    def _start_ready(self) -> None:
        while self._queue and self._running_count() < self._settings.max_concurrent:
            job = replace(self._jobs[self._queue.popleft()], state="running",
                          started_at=self._clock())
            self._jobs[job.job_id] = job
            threading.Thread(target=self._work,
                             args=(job.job_id, job.request, self._prepares.pop(job.job_id, None)),
                             name=f"backtest-{job.job_id}", daemon=True).start()

    def _work(self, job_id: str, request: bt.BacktestRequest, prepare: Any = None) -> None:
        # Runs outside the actor: only the tells touch it.
        result = self._prepare(job_id, prepare) if prepare is not None else None
        if result is None:
            result = self._runner(self._settings, job_id, request)
        try:
            self.actor_ref.tell(_RunFinished(job_id, result))
        except pykka.ActorDeadError:
            logger.info("backtest %s finished after the actor stopped", job_id)

    def _prepare(self, job_id: str, prepare: Any) -> BacktestResult | None:
        def report(progress: dict[str, Any]) -> None:
            try:
                self.actor_ref.tell(_Progress(job_id, dict(progress)))
            except pykka.ActorDeadError:
                pass

        try:
            prepare(report)
        except UpstreamError as exc:
            return BacktestResult(job_id, "error", -1, 0, detail={
                "message": "exchange_unreachable", "error": str(exc)})
        except TradeCanvasError as exc:
            return BacktestResult(job_id, "error", -1, 0, detail={
                "message": type(exc).__name__, "error": str(exc)})
        return None

    def _on_finished(self, job_id: str, result: BacktestResult) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        done = replace(job, state="done", finished_at=self._clock(), result=result)
        self._finished.appendleft(done)
        waiter = self._waiters.pop(job_id, None)
        if waiter is not None:
            waiter.set(result)
        self._start_ready()

    def _find(self, job_id: str) -> BacktestJob | None:
        if job_id in self._jobs:
            return self._jobs[job_id]
        return next((job for job in self._finished if job.job_id == job_id), None)

    def _list(self) -> tuple[BacktestJob, ...]:
        active = sorted(self._jobs.values(), key=lambda job: job.submitted_at, reverse=True)
        return (*active, *self._finished)

    def _start_listing(self, message: ListStrategies) -> None:
        if self._listings >= self._settings.max_concurrent:
            message.reply_to.set_exception(
                (CapacityExceeded, CapacityExceeded("strategy listing busy; retry later"), None))
            return
        self._listings += 1
        threading.Thread(target=self._list_worker, args=(message,), daemon=True,
                         name="backtest-list-strategies").start()

    def _list_worker(self, message: ListStrategies) -> None:
        try:
            message.reply_to.set(list_strategies(self._settings, message.recursive))
        except Exception:  # boundary: the asker gets the error, the thread must not die loud
            message.reply_to.set_exception()
        try:
            self.actor_ref.tell(_ListingFinished())
        except pykka.ActorDeadError:
            pass

    def on_stop(self) -> None:
        for job_id, waiter in self._waiters.items():
            waiter.set_exception((Unavailable, Unavailable(
                f"backtest {job_id} abandoned: backtest actor stopped"), None))
        self._waiters.clear()


def run_backtest_and_wait(
    actor: pykka.ActorRef[BacktestActor], request: bt.BacktestRequest, timeout_s: float,
    ask_timeout_s: float = 5.0,
) -> BacktestResult:
    """Submit ``request`` and block until its result (for the runtime facade, not actors).

    Raises:
        CapacityExceeded: the queue is full.
        pykka.Timeout: no result within ``timeout_s`` (the run goes on and stays listed).
    """
    done: pykka.Future[BacktestResult] = pykka.ThreadingFuture()
    actor.ask(RunBacktest(request, reply_to=done), timeout=ask_timeout_s)
    return done.get(timeout=timeout_s)


def strategies_and_wait(
    actor: pykka.ActorRef[BacktestActor], timeout_s: float, recursive: bool = True
) -> list[str]:
    """Ask for the strategy list and block until it arrives (for the runtime facade)."""
    done: pykka.Future[list[str]] = pykka.ThreadingFuture()
    actor.ask(ListStrategies(done, recursive), timeout=5.0)
    return done.get(timeout=timeout_s)
