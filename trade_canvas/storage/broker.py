"""Cluster hints over Postgres LISTEN/NOTIFY: a batching notifier and a listener per process.

NOTIFY is a hint, never the data: it is sent after the write committed, in a transaction of its
own (a NOTIFY inside the write transaction holds Postgres' global notify lock through the
commit's fsync and halved commit throughput when measured), batched for a couple of
milliseconds, with ``synchronous_commit=off`` (set for the notifier's session, so a batch is one
autocommit statement: one round trip). A crash between commit and notify, a full queue
or a dropped listener costs only a hint; the followers' sequence check repairs it from the
store. Payloads stay below 8000 bytes (candles are left out when they do not fit).

The listener has its own autocommit connection that never runs a transaction (notifications
wait while the receiving session is inside one). On every (re)connect it LISTENs first and then
reports ``on_connected``, so the caller resyncs after the point where loss was possible. A
self-ping (a ``p`` hint from this process) that does not come back in time recycles the
connection, which catches a connection that died silently.

Both know no actors: they call the callables they are given.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import psycopg
from psycopg import sql

from trade_canvas.candles import Candle
from trade_canvas.cluster import (
    AnyHint, FormingBatcher, FormingHint, Hint, decode_hint, encode_hints, from_elsewhere,
)
from trade_canvas.storage.postgres import close_quietly, redact_dsn

logger = logging.getLogger(__name__)

BATCH_MAX = 500  # notifications per notify transaction
QUEUE_MAX = 100_000  # hints waiting to be sent; beyond, they are dropped (followers resync)


def _connect(dsn: str, name: str, timeout_s: float) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout_s + 0.999)),
                           application_name=name[:63], keepalives=1, keepalives_idle=5,
                           keepalives_interval=2, keepalives_count=3)


class Notifier:
    """Sends hints in batches from a background thread; ``send`` never blocks."""

    def __init__(self, dsn: str, channel: str, node_name: str, *, batch_s: float = 0.002,
                 connect_timeout_s: float = 2.0) -> None:
        self.dsn = dsn
        self.channel = channel
        self.node_name = node_name
        self.batch_s = batch_s
        self.connect_timeout_s = connect_timeout_s
        self.counters = {"sent": 0, "batches": 0, "errors": 0, "dropped": 0, "too_big": 0}
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_MAX)
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None
        self._query = sql.SQL("SELECT pg_notify({}, x) FROM unnest(%s::text[]) x").format(
            sql.Literal(channel)).as_string(None)

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._run, name="cluster-notifier", daemon=True)
        self._thread.start()

    def send(self, hint: AnyHint) -> None:
        """Queue one hint (dropped, and counted, when the queue is full or it cannot fit)."""
        payloads = encode_hints(hint)
        if not payloads:
            self.counters["too_big"] += 1
        for payload in payloads:
            try:
                self._queue.put_nowait(payload)
            except queue.Full:
                self.counters["dropped"] += 1

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_s
            while len(batch) < BATCH_MAX:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._flush(batch)
                    return
                batch.append(item)
            self._flush(batch)

    def _flush(self, batch: list[str]) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = _connect(self.dsn, f"trade_canvas.notify:{self.node_name}",
                                      self.connect_timeout_s)
                self._conn.execute("SET synchronous_commit = off")
            self._conn.execute(self._query, (batch,))
            self.counters["sent"] += len(batch)
            self.counters["batches"] += 1
        except psycopg.Error as exc:
            # Only hints are lost; the followers' position check repairs them.
            self.counters["errors"] += 1
            self.counters["dropped"] += len(batch)
            logger.warning("cluster notifier: %d hints lost (%s)", len(batch),
                           " ".join(str(exc).split()))
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Send what is queued, then stop."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close()


class FormingRelay:
    """Forming candles for the other processes: one ``f`` hint per interval, many series each.

    ``offer`` only records the newest candle of the series (it never blocks the caller, an
    actor); a thread sends what waits at most once every ``interval_s``.
    """

    def __init__(self, notifier: Notifier, node_id: str, interval_s: float) -> None:
        self.notifier = notifier
        self.node_id = node_id
        self.batcher = FormingBatcher(interval_s)
        self.counters = {"offered": 0, "hints": 0}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._run, name="cluster-forming", daemon=True)
        self._thread.start()

    def offer(self, series_id: str, candle: Candle) -> None:
        """Send ``candle`` with the next forming hint (replacing an older one of the series)."""
        with self._wake:
            self.counters["offered"] += 1
            self.batcher.offer(series_id, candle)
            self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while not self._stopping:
                due = self.batcher.due()
                now = time.monotonic()
                if due is None or due > now:
                    self._wake.wait(None if due is None else due - now)
                    continue
                items = self.batcher.take(now)
                self.counters["hints"] += 1
                self.notifier.send(FormingHint(self.node_id, tuple(items)))

    def stop(self) -> None:
        """Stop the thread (what waits is dropped: forming candles are best effort)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(2.0)


class Listener:
    """LISTENs on the cluster channel and hands every hint to ``on_hint``."""

    def __init__(
        self, dsn: str, channel: str, node_name: str, *,
        on_hint: Callable[[AnyHint], None], on_connected: Callable[[], None],
        ping: Callable[[], None], ping_every_s: float, connect_timeout_s: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.node_name = node_name
        self.on_hint = on_hint
        self.on_connected = on_connected
        self.ping = ping
        self.ping_every_s = ping_every_s
        self.connect_timeout_s = connect_timeout_s
        self.connected = False
        self.down_since: float | None = time.monotonic()
        self.last_ping_back = time.monotonic()
        self.counters = {"connects": 0, "notifications": 0, "malformed": 0, "pings_missed": 0}
        self.last_error: str | None = None
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None
        self._where = redact_dsn(dsn)

    def start(self) -> None:
        """Start the listening thread."""
        self._thread = threading.Thread(target=self._run, name="cluster-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._listen()
                backoff = 0.1
            except psycopg.Error as exc:
                self.last_error = " ".join(str(exc).split())
                logger.warning("cluster listener at %s lost its connection: %s", self._where,
                               self.last_error)
            self._mark_down()
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 2.0)

    def _listen(self) -> None:
        conn = self._conn = _connect(self.dsn, f"trade_canvas.listen:{self.node_name}",
                                     self.connect_timeout_s)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self.connected, self.down_since = True, None
        self.counters["connects"] += 1
        self.last_ping_back = time.monotonic()
        self.on_connected()  # LISTEN first, then resync: nothing falls between the two
        next_ping = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_ping:
                self.ping()
                next_ping = now + self.ping_every_s
            if now - self.last_ping_back > 3 * self.ping_every_s:
                self.counters["pings_missed"] += 1
                raise psycopg.OperationalError(
                    f"no self-ping back in {3 * self.ping_every_s:g}s; reconnecting")
            for notify in conn.notifies(timeout=self.ping_every_s / 2, stop_after=1000):
                self._received(notify.payload)

    def _received(self, payload: str) -> None:
        self.counters["notifications"] += 1
        hint = decode_hint(payload)
        if hint is None:
            self.counters["malformed"] += 1
            return
        if hint.kind == "p":
            if hint.node == self.node_name:
                self.last_ping_back = time.monotonic()
            return
        if from_elsewhere(hint, self.node_name):
            self.on_hint(hint)

    def _mark_down(self) -> None:
        if self.connected:
            self.down_since = time.monotonic()
        self.connected = False
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def stop(self) -> None:
        """Stop listening and close the connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._mark_down()
