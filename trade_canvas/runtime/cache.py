"""Encoded candle-read responses, reused until the series is written again.

A chart that many clients open reads the same tail over and over; serving the already encoded
JSON skips the query, the row-to-dict work and the encoding. Entries are keyed by the series'
write generation (bumped by its store actor after every commit), so a write invalidates them at
once; a short age limit also bounds staleness from writers outside this process (the backfill
command). The cache is bounded by total bytes, least recently used first out.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable


class WriteGenerations:
    """A counter per series, bumped after each committed write."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def bump(self, series_id: str) -> None:
        """Record a write to ``series_id``."""
        self._counts[series_id] = self._counts.get(series_id, 0) + 1

    def get(self, series_id: str) -> int:
        """Return the series' generation."""
        return self._counts.get(series_id, 0)


class ResponseCache:
    """LRU of encoded responses keyed by (request key, write generation)."""

    def __init__(
        self,
        max_bytes: int,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple, tuple[int, float, bytes]] = (
            collections.OrderedDict()
        )

    def get(self, key: tuple, generation: int) -> bytes | None:
        """Return the cached body if it is from this generation and young enough."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != generation or self.clock() - entry[1] > self.max_age_s:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[2]

    def put(self, key: tuple, generation: int, body: bytes) -> None:
        """Store a body, evicting the least recently used ones over the byte budget."""
        if len(body) > self.max_bytes // 4:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= len(old[2])
            self._entries[key] = (generation, self.clock(), body)
            self.size += len(body)
            while self.size > self.max_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self.size -= len(dropped)

    def snapshot(self) -> dict[str, int]:
        """Return counters for the status endpoint."""
        return {"entries": len(self._entries), "bytes": self.size, "hits": self.hits,
                "misses": self.misses}
