"""A subscriber connection: what the server sends one client, and what that client subscribes to.

A WebSocket client gets an ``Outbox``: a bounded queue of ``Frame``s (RFC 6455 text frames, each
encoded once and shared by every connection it goes to) drained by that socket's writer, plus its
``Subscriptions``. An SSE client of the top markets gets a ``MarketStream`` of ``StreamEvent``s.
Hubs and pollers only offer to these queues and never wait on a socket; a client whose queue is
full is closed (``slow_consumer``), so one slow client cannot slow the others.

The WebSocket upgrade and the socket's reader and writer are in ``http/ws.py``; the framing of
what the server sends is here, so the hub deals in subscribers and frames, not in RFC 6455.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import orjson

from trade_canvas.actors import instruments

_ids = itertools.count(1)
_CLOSE = object()


class Frame:
    """One server message, encoded once and shared by every subscriber it goes to.

    ``wire()`` is the complete WebSocket text frame (RFC 6455, server to client: unmasked, no
    compression), built on first use and then reused, so fanning a message out to N sockets
    costs N socket writes, not N JSON encodings and N frame builds.
    """

    __slots__ = ("text", "_wire")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        """Return the WebSocket frame bytes of this message."""
        if self._wire is None:
            payload = self.text.encode()
            size = len(payload)
            if size < 126:
                header = bytes((0x81, size))
            elif size < 65536:
                header = bytes((0x81, 126)) + size.to_bytes(2, "big")
            else:
                header = bytes((0x81, 127)) + size.to_bytes(8, "big")
            self._wire = header + payload
        return self._wire


def encode(message: dict[str, Any]) -> Frame:
    """Encode one server message."""
    return Frame(orjson.dumps(message).decode())


class _Remainder:
    """The unsent end of a direct write, queued for the connection's writer."""

    __slots__ = ("data", "text")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.text = ""

    def wire(self) -> bytes:
        return self.data


class Outbox:
    """One connection's bounded send queue; each item is the frames of one publish.

    A plain deque and an event rather than ``queue.Queue``: offering is the per-subscriber step
    of every fan-out, so it must be a bounds check, an append and a wake-up, nothing more.

    When the socket layer sets ``direct`` (a write that never waits: it sends what the kernel
    buffer takes and returns the byte count), an offer to an idle connection writes at once, and
    only what the socket would not take is queued for the writer. A client that keeps up then
    costs one system call per message, with no writer wake-up; a slow one still fills its queue
    and is dropped, never waited on.

    Both the messages and the bytes pending are bounded (``limit``, ``byte_limit``): a message
    can be a 5000-candle catch-up, so counting messages alone let one client that stopped reading
    hold hundreds of megabytes. The bytes the writer took but has not finished sending count
    until ``sent()``.
    """

    def __init__(self, limit: int, byte_limit: int = 64 << 20) -> None:
        self.id = next(_ids)
        self.limit = limit
        self.byte_limit = byte_limit
        self.closed = False
        self.close_code: str | None = None
        self.subscriptions = Subscriptions()
        self._items: collections.deque[Any] = collections.deque()
        self._ready = threading.Event()
        self._sending = False
        self._bytes = 0  # queued, plus what the writer is sending
        self._taken = 0  # bytes of the writer's current write
        self.direct: Callable[[bytes], int] | None = None

    def offer(self, frames: Sequence[Frame]) -> bool:
        """Queue frames; False if the connection is closed or was just dropped as too slow."""
        if self.closed:
            return False
        if self.direct is not None and not self._items and not self._sending:
            data = frames[0].wire() if len(frames) == 1 else b"".join(f.wire() for f in frames)
            sent = self.direct(data)
            if sent >= len(data):
                return True
            frames = (_Remainder(data[sent:]),)  # type: ignore[assignment]
        size = sum(len(frame.wire()) for frame in frames)
        if len(self._items) >= self.limit or self._bytes + size > self.byte_limit:
            what = (f"{self.limit} messages" if len(self._items) >= self.limit
                    else f"{self.byte_limit} bytes")
            instruments.WS_SLOW_CONSUMERS.inc()  # once: a closed outbox never gets here
            self.close("slow_consumer", encode({
                "type": "error", "code": "slow_consumer",
                "message": f"more than {what} pending; disconnecting",
            }))
            return False
        self._items.append(tuple(frames))
        self._bytes += size
        self._ready.set()
        return True

    def room(self) -> int:
        """Return how many more bytes may be queued before the connection counts as too slow."""
        return 0 if self.closed else max(0, self.byte_limit - self._bytes)

    def close(self, code: str | None = None, last_frame: Frame | None = None) -> None:
        """Stop accepting frames; pending ones are discarded if ``last_frame`` is given."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if last_frame is not None:
            self._items.clear()
            self._items.append((last_frame,))
            self._bytes = self._taken + len(last_frame.wire())
        self._items.append(_CLOSE)
        self._ready.set()

    def discard(self) -> None:
        """Close and free every pending frame (the connection is gone)."""
        self.close()
        self._items.clear()
        self._items.append(_CLOSE)
        self._bytes = self._taken = 0
        self._ready.set()

    def take(self, timeout: float | None = None) -> list[Frame] | None:
        """Return every frame queued so far (at least one), or None once closed and drained.

        Raises:
            queue.Empty: nothing arrived within ``timeout``.
        """
        if not self._items:
            self._ready.clear()
            if not self._items and not self._ready.wait(timeout):
                raise queue.Empty
        frames: list[Frame] = []
        while self._items:
            item = self._items.popleft()
            if item is _CLOSE:
                if frames:
                    self._items.appendleft(item)
                    break
                return None
            frames.extend(item)
        self._sending = True
        self._taken = sum(len(frame.wire()) for frame in frames)
        return frames

    def sent(self) -> None:
        """The writer finished sending what ``take`` returned."""
        self._sending = False
        self._bytes = max(0, self._bytes - self._taken)
        self._taken = 0

    def pending(self) -> int:
        """Return how many publishes wait to be sent."""
        return len(self._items)

    def pending_bytes(self) -> int:
        """Return the bytes queued or being written."""
        return self._bytes


class Subscriptions:
    """The series one connection subscribes to, and those whose live feed it holds a ref on.

    Owned by the connection; only the runtime facade changes it (subscribe, unsubscribe,
    close), so releasing what a connection held is decided in one place.
    """

    __slots__ = ("series", "feeds")

    def __init__(self) -> None:
        self.series: set[str] = set()
        self.feeds: set[str] = set()

    def __len__(self) -> int:
        return len(self.series)

    def hold_feed(self, series_id: str) -> None:
        """Record that this connection holds a ref on the series' live feed."""
        self.feeds.add(series_id)

    def holds_feed(self, series_id: str) -> bool:
        """Return whether this connection holds a ref on the series' live feed."""
        return series_id in self.feeds

    def add(self, series_id: str) -> None:
        """Record a subscription."""
        self.series.add(series_id)

    def remove(self, series_id: str) -> tuple[bool, bool]:
        """Forget a series; returns (it was subscribed, its feed ref was held)."""
        held = series_id in self.feeds
        subscribed = series_id in self.series
        self.feeds.discard(series_id)
        self.series.discard(series_id)
        return subscribed, held

    def everything(self) -> list[str]:
        """Return every series subscribed or held."""
        return sorted(self.series | self.feeds)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One SSE event, encoded once for every stream: ``top_markets`` (with id) or ``error``."""

    kind: str
    event_id: int | None
    data: bytes


class MarketStream:
    """One SSE client's bounded event queue."""

    _ids = itertools.count(1)

    def __init__(
        self, market: str, quote_asset: str, limit: int, interval_s: float, max_pending: int = 64
    ) -> None:
        self.id = next(MarketStream._ids)
        self.key: tuple[str, str, int] = (market, quote_asset, limit)
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.closed = False
        self.sent_items: bytes | None = None
        self._queue: queue.Queue[StreamEvent | None] = queue.Queue()

    def offer(self, event: StreamEvent) -> bool:
        """Queue an event; False (and the stream closes) when closed or too far behind."""
        if self.closed:
            return False
        if self._queue.qsize() >= self.max_pending:
            self.close()
            return False
        self._queue.put_nowait(event)
        return True

    def close(self) -> None:
        """End the stream: the reader gets what is queued, then None."""
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    def take(self, timeout: float) -> StreamEvent | None:
        """Return the next event, or None once closed.

        Raises:
            queue.Empty: nothing arrived within ``timeout``.
        """
        return self._queue.get(timeout=timeout)
