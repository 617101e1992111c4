"""The debug journal: a bounded ring of recent backend events for ``WS /ws/debug``.

Events come from the log records our own modules already write at INFO and above (feed
connects and reconnects, gaps filled, actor starts, failures and restarts, factor rebuilds,
replay builds, slow consumers dropped), turned into the debug tab's event shape by a logging
handler (``runtime/logs.py``) that the runtime installs only while the debug API is on. So
every place that matters to an operator reports once, to the log, and the journal follows.

Event shape (what the chart's Debug tab checks)::

    {"ts_ms": 1700000000123, "source": "backend", "pipe": "write",
     "event": "write.actors.feed", "series_id": "binance:futures:BTC/USDT:1m",
     "level": "info", "message": "feed ...: gap ... filled with 3 candles",
     "data": {"logger": "trade_canvas.actors.feed"}}
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from typing import Any

from trade_canvas.actors.subscriber import Outbox, encode

SERIES_RE = re.compile(r"\b[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[^\s,()']+?:[0-9]+[mhdwM]\b")
_LEVELS = {logging.WARNING: "warn", logging.ERROR: "error", logging.CRITICAL: "error"}


def event_from_record(record: logging.LogRecord) -> dict[str, Any]:
    """Return the debug event of one log record."""
    module = record.name.removeprefix("trade_canvas.")
    pipe = "read" if module.startswith("http") else "write"
    message = record.getMessage()
    event: dict[str, Any] = {
        "ts_ms": int(record.created * 1000), "source": "backend", "pipe": pipe,
        "event": f"{pipe}.{module}", "level": _LEVELS.get(record.levelno, "info"),
        "message": message, "data": {"logger": record.name},
    }
    match = SERIES_RE.search(message)
    if match is not None:
        event["series_id"] = match.group(0)
    return event


class DebugJournal:
    """The last ``capacity`` events, and the connections that follow new ones."""

    def __init__(self, capacity: int) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._followers: dict[int, Outbox] = {}

    def record(self, event: dict[str, Any]) -> None:
        """Keep an event and push it to every follower (a slow one is dropped by its outbox)."""
        frame = encode({"type": "debug_event", "event": event})
        with self._lock:
            self._events.append(event)
            followers = list(self._followers.values())
        for outbox in followers:
            outbox.offer([frame])

    def snapshot(self) -> list[dict[str, Any]]:
        """Return the kept events, oldest first."""
        with self._lock:
            return list(self._events)

    def follow(self, outbox: Outbox) -> None:
        """Send the snapshot to ``outbox``, then every new event (no event lost in between)."""
        with self._lock:
            outbox.offer([encode({"type": "debug_snapshot", "events": list(self._events)})])
            self._followers[outbox.id] = outbox

    def resend(self, outbox: Outbox) -> None:
        """Send the snapshot again (a client's ``subscribe``)."""
        outbox.offer([encode({"type": "debug_snapshot", "events": self.snapshot()})])

    def unfollow(self, outbox: Outbox) -> None:
        """Stop sending new events to ``outbox``."""
        with self._lock:
            self._followers.pop(outbox.id, None)
