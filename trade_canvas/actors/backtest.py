"""BacktestActor: runs freqtrade backtests as child processes, a few at a time, never blocking.

The actor owns only bookkeeping: the job table, the wait queue and the run slots. Each run
happens in its own thread (a greenlet under gevent's monkey-patching, where ``subprocess`` is
cooperative), which tells the actor ``BacktestFinished`` when done. So a status query never waits
behind a backtest, and the actor never blocks on a child.

How the runtime facade uses it (every message here is *asked*, with a timeout)::

    done = pykka.ThreadingFuture()
    job = actor.ask(RunBacktest(request, reply_to=done), timeout=5)  # BacktestJob, queued
    result = done.get(timeout=settings.subprocess_timeout_s + 30)    # BacktestResult

or simply ``run_backtest_and_wait(actor, request, timeout)``. ``RunBacktest`` raises
``CapacityExceeded`` (through the ask) when every slot is busy and the queue is full.
``GetBacktest(job_id)`` and ``ListBacktests()`` answer at once from memory. What a run does
(the child process, its limits, the export it leaves) is ``freqtrade/runner.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any, Callable

import pykka

from trade_canvas.actors.messages import (
    BacktestFinished,
    BacktestProgressed,
    ExportCandles,
    GetBacktest,
    GetPairTimeframes,
    ListBacktests,
    ListStrategies,
    RunBacktest,
    StrategiesListed,
)
from trade_canvas.errors import CapacityExceeded, TradeCanvasError, Unavailable, UpstreamError
from trade_canvas.freqtrade import commands as bt
from trade_canvas.freqtrade.runner import (
    export_candles,
    list_strategies,
    pair_timeframes,
    run_backtest,
)
from trade_canvas.freqtrade.values import BacktestJob, BacktestResult, BacktestSettings
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

Runner = Callable[[BacktestSettings, str, bt.BacktestRequest], BacktestResult]

# --- the actor --------------------------------------------------------------------------------


class BacktestActor(pykka.ThreadingActor):
    """Queues backtests and runs at most ``max_concurrent`` at once, each in its own thread."""

    def __init__(
        self, settings: BacktestSettings, clock: Callable[[], float] = time.time,
        runner: Runner = run_backtest, store: CandleStore | None = None,
    ) -> None:
        super().__init__()
        self._settings = settings
        # Where finished jobs are kept across restarts (and seen by every process of a
        # cluster); without one, or while it fails, this process's own finished jobs.
        self._store = store
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
            case BacktestFinished(job_id=job_id, result=result):
                return self._on_finished(job_id, result)
            case ListStrategies():
                return self._start_listing(message)
            case StrategiesListed():
                self._listings -= 1
                return None
            case GetPairTimeframes(pair=pair):
                return pair_timeframes(self._settings, pair)
            case ExportCandles(pair=pair, timeframe=timeframe, candles=candles, merge=merge):
                return export_candles(self._settings, pair, timeframe, candles, merge)
            case BacktestProgressed(job_id=job_id, progress=progress):
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
            self.actor_ref.tell(BacktestFinished(job_id, result))
        except pykka.ActorDeadError:
            logger.info("backtest %s finished after the actor stopped", job_id)

    def _prepare(self, job_id: str, prepare: Any) -> BacktestResult | None:
        def report(progress: dict[str, Any]) -> None:
            try:
                self.actor_ref.tell(BacktestProgressed(job_id, dict(progress)))
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
        self._save(done)
        waiter = self._waiters.pop(job_id, None)
        if waiter is not None:
            waiter.set(result)
        self._start_ready()

    def _save(self, job: BacktestJob) -> None:
        if self._store is None:
            return
        record = json.dumps(job.to_dict(), default=str)
        try:
            self._store.save_backtest(job.job_id, job.finished_at or 0.0, record,
                                      self._settings.keep_results)
        except Exception as exc:  # boundary: the unsupervised actor must outlive a store fault
            logger.warning("backtest %s: result not stored (%s); kept in memory", job.job_id, exc)

    def _finished_jobs(self) -> list[BacktestJob]:
        """Return the finished jobs, newest first, from the store when it answers."""
        if self._store is not None:
            try:
                records = self._store.read_backtests(self._settings.keep_results)
                return [BacktestJob.from_dict(json.loads(record)) for record in records]
            except Exception as exc:  # boundary: as in _save
                logger.warning("stored backtests unreadable (%s); listing this process's", exc)
        return list(self._finished)

    def _find(self, job_id: str) -> BacktestJob | None:
        if job_id in self._jobs:
            return self._jobs[job_id]
        return next((job for job in self._finished_jobs() if job.job_id == job_id), None)

    def _list(self) -> tuple[BacktestJob, ...]:
        active = sorted(self._jobs.values(), key=lambda job: job.submitted_at, reverse=True)
        return (*active, *self._finished_jobs())

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
            self.actor_ref.tell(StrategiesListed())
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
