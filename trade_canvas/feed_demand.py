"""Which series are followed live: pinned (whitelist) and on-demand feeds with refcounts (pure).

On-demand feeds are reference counted per subscription. A feed whose count drops to zero is
reaped after an idle TTL; when the cap is reached a new feed evicts the longest-idle one, and if
none is idle the caller gets ``CapacityExceeded``. Pinned feeds are never reaped or evicted and
do not count against the cap.

``FeedDemand`` is the whole model for one process. In cluster mode the same decisions are made
for every process at once by ``storage/feed_refs.py ClusterFeedDemand`` (``Demand``, the
interface both offer the supervisor); a property test checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from trade_canvas.errors import CapacityExceeded


@dataclass
class FeedJob:
    """One followed series."""

    series_id: str
    pinned: bool
    refcount: int = 0
    idle_since: float | None = None


@dataclass(frozen=True, slots=True)
class Acquired:
    """Outcome of an acquire: whether a feed must start and which ones to stop first."""

    start: bool
    evict: tuple[str, ...]


class Demand(Protocol):
    """What the supervisor asks of the feed demand, in one process or for the cluster."""

    jobs: dict[str, FeedJob]

    def pin(self, series_id: str) -> bool: ...

    def acquire(self, series_id: str, now: float) -> Acquired: ...

    def release(self, series_id: str, now: float) -> None: ...

    def expired(self, now: float, ttl_s: float) -> list[str]: ...

    def close(self) -> None: ...


class FeedDemand:
    """Reference counts and idle clocks of every followed series."""

    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self.jobs: dict[str, FeedJob] = {}

    def pin(self, series_id: str) -> bool:
        """Follow a series forever; True if its feed must start."""
        job = self.jobs.get(series_id)
        if job is not None:
            job.pinned = True
            job.idle_since = None
            return False
        self.jobs[series_id] = FeedJob(series_id, pinned=True)
        return True

    def acquire(self, series_id: str, now: float) -> Acquired:
        """Count one more subscriber of a series.

        Raises:
            CapacityExceeded: the cap is reached and no on-demand feed is idle.
        """
        job = self.jobs.get(series_id)
        if job is not None:
            job.refcount += 1
            job.idle_since = None
            return Acquired(start=False, evict=())
        evict: tuple[str, ...] = ()
        if self.max_jobs and self._ondemand_count() >= self.max_jobs:
            victim = self._longest_idle()
            if victim is None:
                raise CapacityExceeded("ondemand_ingest_capacity")
            del self.jobs[victim]
            evict = (victim,)
        self.jobs[series_id] = FeedJob(series_id, pinned=False, refcount=1)
        return Acquired(start=True, evict=evict)

    def release(self, series_id: str, now: float) -> None:
        """Count one subscriber less; at zero the idle clock starts."""
        job = self.jobs.get(series_id)
        if job is None or job.refcount <= 0:
            return
        job.refcount -= 1
        if job.refcount == 0 and not job.pinned:
            job.idle_since = now

    def expired(self, now: float, ttl_s: float) -> list[str]:
        """Forget and return the on-demand feeds idle for at least ``ttl_s``."""
        gone = [
            job.series_id
            for job in self.jobs.values()
            if not job.pinned and job.idle_since is not None and now - job.idle_since >= ttl_s
        ]
        for series_id in gone:
            del self.jobs[series_id]
        return gone

    def close(self) -> None:
        """Nothing to give back: the counts die with the process."""

    def _ondemand_count(self) -> int:
        return sum(1 for job in self.jobs.values() if not job.pinned)

    def _longest_idle(self) -> str | None:
        idle = [j for j in self.jobs.values() if not j.pinned and j.idle_since is not None]
        if not idle:
            return None
        return min(idle, key=lambda j: j.idle_since or 0.0).series_id
