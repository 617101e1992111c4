"""Replay package builds and coverage fills: a bounded job runner, and the package cache on disk.

``ReplayJobActor`` (a process-wide child of the supervisor) runs at most ``max_running`` jobs
at once, each in its own greenlet, and queues the rest. Job records live in a ``JobBoard`` the
runtime owns, so they survive an actor restart and the facade reads them without asking. A job
id is taken by one job at a time; a failed job may be submitted again (the earlier backend kept
the error forever).

Packages are a cache: ``PackageFiles`` keeps them under ``<root>/replay_package_v1/<key>/``
(``metadata.json`` and one gzip file per window, each the exact ``GET /api/replay/window`` body),
written to a temporary directory and renamed, so a package is complete or absent. Packages
older than the age bound, then the oldest beyond the size bound, are deleted after each build
and at start; after a restart a request simply builds again.
"""

from __future__ import annotations

import collections
import gzip
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import pykka

from trade_canvas.actors.plumbing import ChildLink, report_failure
from trade_canvas.actors.messages import Crash, ReplayJobEnded, RunReplayJob
from trade_canvas.candles import Candle
from trade_canvas.factors import engine
from trade_canvas.factors import replay_package as rp
from trade_canvas.errors import InvalidInput
from trade_canvas.series import parse_series_id
from trade_canvas.storage import DRAW_PATCH_LIMIT, CandleStore

logger = logging.getLogger(__name__)

PACKAGE_DIR = "replay_package_v1"
KEY_RE = re.compile(r"^[0-9a-f]{24}$")
KEEP_FINISHED_JOBS = 1000


@dataclass
class Job:
    """One replay job's status, shown by ``GET /api/replay/status`` or ``coverage_status``."""

    job_id: str
    status: str = "building"  # building | done | error
    error: str | None = None
    started_ms: int = 0
    finished_ms: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


class JobBoard:
    """Every known replay job, readable from any greenlet; finished ones are evicted oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()

    def get(self, job_id: str) -> Job | None:
        """Return the job's record, if known."""
        with self._lock:
            return self._jobs.get(job_id)

    def claim(self, job_id: str, now_ms: int, info: dict[str, Any] | None = None) -> Job | None:
        """Register a new run of ``job_id``; None when a run of it is still building."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status == "building":
                return None
            job = Job(job_id, started_ms=now_ms, info=dict(info or {}))
            self._jobs[job_id] = job
            self._jobs.move_to_end(job_id)
            self._evict()
            return job

    def _evict(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status != "building"]
        for job_id in finished[: max(0, len(self._jobs) - KEEP_FINISHED_JOBS)]:
            del self._jobs[job_id]


class ReplayJobActor(pykka.ThreadingActor):
    """Runs replay jobs, at most ``max_running`` at a time, in submission order."""

    def __init__(
        self, board: JobBoard, files: "PackageFiles", link: ChildLink, *, max_running: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.board = board
        self.files = files
        self.link = link
        self.max_running = max_running
        self.clock = clock
        self.running: set[str] = set()
        self.waiting: collections.deque[RunReplayJob] = collections.deque()
        link.record.extra = lambda: {"running": len(self.running), "waiting": len(self.waiting)}

    def on_start(self) -> None:
        self.files.clean(self.clock())
        self.link.started()

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case RunReplayJob():
                self.waiting.append(message)
                self._next()
            case ReplayJobEnded():
                self._ended(message)
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        return None

    def _next(self) -> None:
        while self.waiting and len(self.running) < self.max_running:
            message = self.waiting.popleft()
            self.running.add(message.job_id)
            threading.Thread(target=self._run, args=(message,), daemon=True,
                             name=f"replay-job-{message.job_id}").start()

    def _run(self, message: RunReplayJob) -> None:
        error: str | None = None
        try:
            if self.board.get(message.job_id) is not None:
                message.work()
        except Exception as exc:  # noqa: BLE001 - a job's failure is its status, not a crash
            logger.warning("replay job %s failed: %s", message.job_id, exc)
            error = str(exc) or type(exc).__name__
        try:
            self.actor_ref.tell(ReplayJobEnded(message.job_id, error))
        except pykka.ActorDeadError:
            pass

    def _ended(self, message: ReplayJobEnded) -> None:
        self.running.discard(message.job_id)
        job = self.board.get(message.job_id)
        if job is not None and job.status == "building":
            job.status = "error" if message.error else "done"
            job.error = message.error
            job.finished_ms = int(self.clock() * 1000)
        self.files.clean(self.clock())
        self._next()


class PackageFiles:
    """The package cache directory."""

    def __init__(self, root: str, max_bytes: int, max_age_s: float) -> None:
        self.root = os.path.join(root, PACKAGE_DIR)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s

    def _dir(self, key: str) -> str:
        if not KEY_RE.match(key):
            raise InvalidInput("invalid package key")  # never a path made of client input
        return os.path.join(self.root, key)

    def exists(self, key: str) -> bool:
        """Whether the package ``key`` is complete on disk."""
        return os.path.exists(os.path.join(self._dir(key), "metadata.json"))

    def metadata(self, key: str) -> dict[str, Any] | None:
        """Return the package's ``metadata.json`` content, or None when absent."""
        try:
            with open(os.path.join(self._dir(key), "metadata.json"), "rb") as handle:
                return orjson.loads(handle.read())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def window_gzip(self, key: str, index: int) -> bytes | None:
        """Return window ``index``'s answer body, gzip-compressed, or None when absent."""
        try:
            with open(os.path.join(self._dir(key), f"window_{index:05d}.json.gz"), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write(self, key: str, metadata: dict[str, Any], windows: list[bytes]) -> int:
        """Write a package atomically; returns its size in bytes."""
        final = self._dir(key)
        tmp = os.path.join(self.root, f".tmp-{key}-{os.getpid()}-{threading.get_ident()}")
        os.makedirs(tmp, exist_ok=True)
        size = 0
        try:
            for index, body in enumerate(windows):
                data = gzip.compress(body, compresslevel=6)
                size += len(data)
                with open(os.path.join(tmp, f"window_{index:05d}.json.gz"), "wb") as handle:
                    handle.write(data)
            with open(os.path.join(tmp, "metadata.json"), "wb") as handle:
                handle.write(orjson.dumps(metadata))
            if os.path.exists(final):
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return size

    def clean(self, now: float) -> int:
        """Delete stale temporaries, packages past the age bound, then the oldest over the size
        bound; returns how many packages were deleted."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        packages = []
        for name in names:
            path = os.path.join(self.root, name)
            stamp = os.path.getmtime(path)
            if name.startswith(".tmp-"):
                if now - stamp > 3600:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            size = sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
            packages.append((stamp, size, path))
        packages.sort()
        total = sum(size for _, size, _ in packages)
        deleted = 0
        for stamp, size, path in packages:
            if now - stamp <= self.max_age_s and total <= self.max_bytes:
                continue
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            deleted += 1
        if deleted:
            logger.info("replay package cache: deleted %d old packages", deleted)
        return deleted


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """A package to build: the spec, its key and the bars (already read by the facade)."""

    spec: rp.PackageSpec
    key: str
    bars: tuple[Candle, ...]


def build_package(
    store: CandleStore, files: PackageFiles, request: BuildRequest, clock: Callable[[], float]
) -> dict[str, Any]:
    """Read the ledgers, build the package and write it; returns the build figures."""
    started = time.perf_counter()
    spec, bars = request.spec, request.bars
    sid, tf = spec.series_id, parse_series_id(spec.series_id).timeframe
    begin = tf.window_start(bars[0].candle_time, spec.window_candles)
    events = store.read_factor_events(sid, begin, spec.to)
    formed = store.read_latest_factor_event(sid, "zhongshu", "zhongshu.formed", begin)
    if formed is not None and formed.candle_time < begin:
        events.insert(0, formed)
    history = store.read_range(sid, begin, spec.to)
    versions = _read_versions(store, sid, spec.to)
    state = _state_at(store, sid, spec.to)
    read_s = time.perf_counter() - started

    def pause() -> None:
        time.sleep(0)  # let requests and actors run between chunks

    rows = rp.factor_rows(sid, bars, events, history, state, spec.window_candles, tf, pause)
    pause()
    times = [bar.candle_time for bar in bars]
    draws = rp.draw_windows(times, versions, spec.window_size, spec.snapshot_interval)
    bodies = rp.window_bodies(request.key, bars, draws, rows, spec.window_size)
    encoded = [orjson.dumps(body) for body in bodies]
    meta = {
        "schema_version": 1, "cache_key": request.key,
        "metadata": rp.metadata(spec, bars, rp.factor_schema(rows)),
        "created_at_ms": int(clock() * 1000),
        "window_bytes": [len(body) for body in encoded],
    }
    size = files.write(request.key, meta, encoded)
    figures = {"read_s": round(read_s, 3), "build_s": round(time.perf_counter() - started, 3),
               "bytes_on_disk": size, "largest_window_bytes": max(len(b) for b in encoded),
               "factor_rows": len(rows), "draw_versions": len(versions)}
    logger.info("replay package %s of %s built: %d bars, %s", request.key, sid, len(bars), figures)
    return figures


def _read_versions(store: CandleStore, sid: str, to: int) -> list[rp.VersionRow]:
    result: list[rp.VersionRow] = []
    after = 0
    while True:
        page = store.read_draw_versions(sid, after, to)
        result += [rp.VersionRow(v.version_id, v.instruction_id, v.kind, v.visible_time,
                                 orjson.loads(v.definition_json)) for v in page]
        if len(page) < DRAW_PATCH_LIMIT:
            return result
        after = page[-1].version_id
        time.sleep(0)


def _state_at(store: CandleStore, sid: str, at: int) -> engine.FactorState | None:
    snapshot = store.read_factor_snapshot(sid)
    if snapshot is None or snapshot.head_time != at:
        return None
    try:
        return engine.state_from_json(snapshot.state_json)
    except InvalidInput:
        return None
