"""Replay in the runtime: the chart's replay routes over the ReplayJobActor and the package cache.

The facade checks a request against the store (head, coverage, factor head), computes the
package key and hands the build to the actor; status and windows are read from the job board
and the cache directory. A package's bars are the newest ``window_candles`` stored candles at
or before the cut-off (counted, not a time span), so a series with a real exchange gap can be
replayed; ``coverage_missing`` means fewer candles are stored than asked for.
"""

from __future__ import annotations

import functools
import gzip
import logging
import time
from typing import Any, Callable

import orjson
import pykka

from trade_canvas.actors.plumbing import ChildLink
from trade_canvas.actors.messages import RunReplayJob, StartGlobal
from trade_canvas.actors.replay_packages import (
    KEY_RE, BuildRequest, Job, JobBoard, PackageFiles, ReplayJobActor, build_package,
)
from trade_canvas.binance_rest import BinanceRest
from trade_canvas.actors.supervisor import SeriesGroup
from trade_canvas.candles import Candle
from trade_canvas.config import Settings
from trade_canvas.errors import Conflict, InvalidInput, NotFound, TradeCanvasError, Unavailable
from trade_canvas.factors import replay_package as rp
from trade_canvas.runtime import history
from trade_canvas.series import SeriesId, expected_latest_closed_time
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

KIND = "replay_jobs"
START_TIMEOUT_S = 5.0
PREPARE_WAIT_S = 3.0  # the chart never retries prepare: give the factor actor a moment
DEFAULT_WINDOW_CANDLES = 2000
COVERAGE_ROUNDS = 3  # REST fills of one coverage job: the span, then twice further back


class ReplayPackages:
    """Facade of the replay routes."""

    def __init__(
        self, store: CandleStore, globals_group: SeriesGroup, board: JobBoard,
        files: PackageFiles, rest: BinanceRest, ingest: history.Ingest,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.globals_group = globals_group
        self.board = board
        self.files = files
        self.rest = rest
        self.ingest = ingest
        self.clock = clock

    # -- reads of the store

    def _floor(self, series: SeriesId, t: int) -> int | None:
        rows = self.store.read_range(series.text, series.timeframe.window_start(t, 5000), t)
        return rows[-1].candle_time if rows else None

    def _cut_off(self, series: SeriesId, to_time: int | None) -> int:
        requested = self.store.head_time(series.text) if to_time is None else to_time
        aligned = None if requested is None else self._floor(series, requested)
        if aligned is None:
            raise NotFound("no_data")
        return aligned

    def newest_bars(self, series: SeriesId, to: int, count: int) -> list[Candle]:
        """Return the newest ``count`` stored candles at or before ``to`` (fewer if not stored)."""
        span = count * series.timeframe.seconds  # a month's nominal width is its longest
        for widen in (1, 2, 8, 32):
            bars = self.store.read_range(series.text, to - span * widen + 1, to)
            if len(bars) >= count:
                return bars[-count:]
        return bars

    # -- routes

    def prepare(self, series: SeriesId, to_time: int | None, window: int | None) -> dict[str, Any]:
        """Return the ``POST /api/replay/prepare`` body once the factor ledger reached the cut-off.

        Raises:
            NotFound: ``no_data``. Conflict: ``ledger_out_of_sync:factor`` after a short wait.
        """
        requested = self.store.head_time(series.text) if to_time is None else to_time
        aligned = self._cut_off(series, to_time)
        deadline = time.monotonic() + PREPARE_WAIT_S
        head = self.store.factor_head_time(series.text)
        while (head is None or head < aligned) and time.monotonic() < deadline:
            time.sleep(0.1)
            head = self.store.factor_head_time(series.text)
        if head is None or head < aligned:
            raise Conflict("ledger_out_of_sync:factor")
        return {
            "ok": True, "series_id": series.text, "requested_time": requested,
            "aligned_time": aligned,
            "window_candles": min(5000, max(100, window or DEFAULT_WINDOW_CANDLES)),
            "factor_head_time": head, "overlay_head_time": head, "computed": False,
        }

    def build(
        self, series: SeriesId, to_time: int | None, window_candles: int, window_size: int,
        snapshot_interval: int,
    ) -> dict[str, Any]:
        """Start (or find) the package build; returns ``{"status","job_id","cache_key"}``.

        Raises:
            NotFound: ``no_data``. Conflict: ``coverage_missing`` (fewer stored candles than
            asked for) or ``ledger_out_of_sync:replay`` (the factor ledger is behind).
        """
        to = self._cut_off(series, to_time)
        bars = self.newest_bars(series, to, window_candles)
        if len(bars) < window_candles:
            raise Conflict("coverage_missing")
        factor_head = self.store.factor_head_time(series.text)
        if factor_head is None or factor_head < to:
            raise Conflict("ledger_out_of_sync:replay")
        spec = rp.PackageSpec(series.text, series.timeframe.seconds, to, window_candles,
                              window_size, max(5, snapshot_interval))
        key = rp.cache_key(spec, self.store.head_time(series.text) or to, factor_head,
                           self.store.last_draw_version(series.text))
        answer = {"status": "done", "job_id": key, "cache_key": key}
        if self.files.exists(key):
            return answer
        job = self.board.claim(key, int(self.clock() * 1000), {"series_id": series.text})
        if job is None:
            return dict(answer, status="building")
        request = BuildRequest(spec, key, tuple(bars))
        work = lambda job: job.info.update(  # noqa: E731
            build_package(self.store, self.files, request, self.clock))
        self._submit(key, work)
        return dict(answer, status="building")

    def _submit(self, job_id: str, work: Callable[[Job], Any]) -> None:
        ref = self.globals_group.ref(KIND)
        job = self.board.get(job_id)
        try:
            if ref is None:
                raise pykka.ActorDeadError("restarting")
            # The runner calls ``work`` only while the board knows the job.
            run = functools.partial(work, job) if job is not None else (lambda: None)
            ref.tell(RunReplayJob(job_id, run))
        except pykka.ActorDeadError as exc:
            if job is not None:
                job.status, job.error = "error", "replay job runner restarting; retry"
            raise Unavailable("replay job runner is restarting; retry shortly") from exc

    def status(self, job_id: str, include_preload: bool) -> dict[str, Any]:
        """Return the ``GET /api/replay/status`` body.

        Raises:
            NotFound: ``not_found`` for a job neither running nor on disk (or a malformed id).
        """
        if not KEY_RE.match(job_id):
            raise NotFound("not_found")
        stored = self.files.metadata(job_id)
        answer: dict[str, Any] = {"status": "building", "job_id": job_id, "cache_key": job_id,
                                  "error": None, "metadata": None, "preload_window": None}
        if stored is not None:
            meta = stored["metadata"]
            answer.update(status="done", metadata=meta)
            if include_preload:
                last = (meta["total_candles"] - 1) // meta["window_size"]
                answer["preload_window"] = self._window(job_id, last)["window"]
            return answer
        job = self.board.get(job_id)
        if job is None:
            raise NotFound("not_found")
        if job.status == "done":  # finished but deleted by the cache bound since
            raise NotFound("not_found")
        return dict(answer, status=job.status, error=job.error)

    def _window(self, job_id: str, index: int) -> dict[str, Any]:
        data = self.files.window_gzip(job_id, index)
        if data is None:
            raise NotFound("not_found")
        return orjson.loads(gzip.decompress(data))  # type: ignore[no-any-return]

    def window_gzip(self, job_id: str, target_idx: int) -> bytes:
        """Return the gzip-compressed ``GET /api/replay/window`` body of the window at an index.

        Raises:
            NotFound: no such package. InvalidInput: ``target_idx_out_of_range``.
        """
        if not KEY_RE.match(job_id):
            raise NotFound("not_found")
        stored = self.files.metadata(job_id)
        if stored is None:
            raise NotFound("not_found")
        meta = stored["metadata"]
        if target_idx >= meta["total_candles"]:
            raise InvalidInput("target_idx_out_of_range")
        data = self.files.window_gzip(job_id, target_idx // meta["window_size"])
        if data is None:
            raise NotFound("not_found")
        return data

    def ensure_coverage(
        self, series: SeriesId, target: int, to_time: int | None
    ) -> dict[str, Any]:
        """Start filling the newest ``target`` candles over REST; returns the job's id."""
        to = to_time if to_time is not None else self.store.head_time(series.text)
        if to is None:
            to = expected_latest_closed_time(int(self.clock()), series.timeframe)
        job_id = f"coverage_{series.text}:{to}:{target}"
        existing = self.board.get(job_id)
        if existing is not None and existing.status != "error":
            return {"status": existing.status, "job_id": job_id, "error": None}
        job = self.board.claim(job_id, int(self.clock() * 1000),
                               {"series_id": series.text, "required": target, "to": to})
        if job is None:
            return {"status": "building", "job_id": job_id, "error": None}
        self._submit(job_id, lambda job: self._cover(job, series, to, target))
        return {"status": "building", "job_id": job_id, "error": None}

    def _cover(self, job: Job, series: SeriesId, to: int, target: int) -> None:
        tf = series.timeframe
        closed = expected_latest_closed_time(int(self.clock()), tf)
        end = min(to, closed)

        def progress(done: int, total: int) -> None:
            job.info.update(progress_done=done, progress_total=total)

        failure = ""
        start = tf.window_start(end, target + 1)
        ready = 0
        try:
            # Bars are counted, not spanned: over a real exchange gap, reach further back (a
            # bounded number of times) until the newest ``target`` candles exist.
            for _ in range(COVERAGE_ROUNDS):
                history.fill_range(self.rest, self.store, self.ingest, series, start, end,
                                   progress)
                ready = len(self.newest_bars(series, to, target))
                if ready >= target:
                    break
                start = tf.window_start(start, max(target - ready, 1) * 2)
        except TradeCanvasError as exc:
            failure = f": {exc}"
        ready = len(self.newest_bars(series, to, target))
        job.info.update(ready=ready, head_time=self.store.head_time(series.text) or 0)
        if ready < target:
            raise RuntimeError(f"coverage_missing{failure}")

    def coverage_status(self, job_id: str) -> dict[str, Any]:
        """Return the ``GET /api/replay/coverage_status`` body (404 ``not_found`` if unknown)."""
        job = self.board.get(job_id) if job_id.startswith("coverage_") else None
        if job is None:
            raise NotFound("not_found")
        building = job.status == "building"
        return {
            "status": job.status, "job_id": job_id,
            "candles_ready": 0 if building else job.info.get("ready", 0),
            "required_candles": job.info.get("required"),
            "head_time": None if building else job.info.get("head_time", 0),
            "error": job.error,
        }


def start_replay_packages(
    settings: Settings, store: CandleStore, rest: BinanceRest, ingest: history.Ingest,
    supervisor: pykka.ActorRef[Any], globals_group: SeriesGroup,
) -> ReplayPackages:
    """Start the job runner as the supervisor's process-wide child; return the facade."""
    board = JobBoard()
    files = PackageFiles(settings.artifacts_dir, settings.replay_cache_mb << 20,
                         settings.replay_cache_ttl_s)

    def start(link: ChildLink) -> pykka.ActorRef[Any]:
        return ReplayJobActor.start(board, files, link, max_running=settings.replay_max_builds)

    supervisor.ask(StartGlobal(KIND, start), timeout=START_TIMEOUT_S)
    return ReplayPackages(store, globals_group, board, files, rest, ingest)

