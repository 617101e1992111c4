"""WebSocket subscriber processes: each holds many sockets and stamps every receipt.

``start(port, plan)`` forks client processes; each opens its share of sockets, subscribes each
to its series, reports ready, then reads all of them with one selector loop until told to stop
(or its deadline passes) and sends back what arrived (a subscribe answered ``unavailable``,
which the server sends while a new series' hub is still starting, is sent again): per socket ``(series_id, candle_time,
received_at)`` for every closed candle (``candle_closed`` or inside ``candles_batch``).

With ``draw=True`` every subscribe frame asks for the factor overlay too, and each socket also
logs ``(series_id, to_candle_time, received_at)`` of every ``draw_delta`` and their total bytes
(payload, without the frame header). ``since`` is sent with every subscribe (the newest candle
time the client already holds), so sockets joining a series with a long history are not caught
up with its stored tail.
"""

from __future__ import annotations

import multiprocessing
import resource
import selectors
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from benchmarks.client import FrameReader, encode_client_frame, subscribe_frame, ws_connect
from benchmarks.processes import raise_fd_limit

MAX_LIFETIME_S = 900.0
MAX_RESUBSCRIBES = 20
_CTX = multiprocessing.get_context("fork")


@dataclass
class SocketLog:
    """What one socket received."""

    series: tuple[str, ...]
    closed_candles: list[tuple[str, int, float]]
    errors: Counter[str]
    closed_by_server: bool
    draw_deltas: list[tuple[str, int, float]] = field(default_factory=list)
    draw_bytes: int = 0


@dataclass(frozen=True)
class Options:
    """What every subscribe frame of a ``Subscribers`` group carries."""

    supports_batch: bool = True
    draw: bool = False
    since: int | None = None

    def frame(self, series_id: str) -> bytes:
        """Return the subscribe frame of ``series_id``."""
        return subscribe_frame(series_id, self.supports_batch, self.draw, self.since)


def _hold(port: int, plan: list[tuple[str, ...]], options: Options, pipe: Connection) -> None:
    raise_fd_limit()
    sockets = []
    try:
        for series in plan:
            sock = ws_connect(port)
            for series_id in series:
                sock.sendall(options.frame(series_id))
            sockets.append(sock)
    except Exception as exc:  # noqa: BLE001  reported to the driver, which fails the benchmark
        pipe.send(("error", f"connect failed after {len(sockets)} sockets: {exc!r}"))
        return
    pipe.send(("ready", len(sockets)))
    logs = [SocketLog(series, [], Counter(), False) for series in plan]
    _read(sockets, logs, pipe, options)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send(("done", {"logs": logs, "cpu_s": usage.ru_utime + usage.ru_stime}))
    for sock in sockets:
        sock.close()


def _read(sockets: list[Any], logs: list[SocketLog], pipe: Connection, options: Options) -> None:
    selector = selectors.DefaultSelector()
    readers = [FrameReader() for _ in sockets]
    for index, sock in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    clock, loads = time.monotonic, orjson.loads
    deadline = clock() + MAX_LIFETIME_S
    while clock() < deadline:
        ready = selector.select(0.02)
        # One stamp per wake-up: the data of every ready socket was in its buffer by then, so
        # the time this process spends parsing earlier sockets is not charged to later ones.
        received_at = clock()
        for key, _ in ready:
            index, sock = key.data, key.fileobj
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            log = logs[index]
            if not data:
                selector.unregister(sock)
                log.closed_by_server = True
                continue
            for opcode, payload in readers[index].feed(data):
                if opcode == 0x1:
                    again = _record(loads(payload), log, received_at, len(payload))
                    if again is not None and log.errors["unavailable"] <= MAX_RESUBSCRIBES:
                        # The protocol's answer while a new series' hub is still starting.
                        sock.setblocking(True)
                        sock.sendall(options.frame(again))
                        sock.setblocking(False)
                elif opcode == 0x9:
                    sock.setblocking(True)
                    sock.sendall(encode_client_frame(payload, 0xA))
                    sock.setblocking(False)
                elif opcode == 0x8:
                    log.closed_by_server = True
        if pipe.poll():
            if pipe.recv() == "stop":
                return


def _record(message: dict[str, Any], log: SocketLog, received_at: float, size: int) -> str | None:
    """Log one server message; return a series to subscribe again (``unavailable``)."""
    kind = message.get("type")
    if kind == "draw_delta":
        log.draw_deltas.append((message["series_id"], message["to_candle_time"], received_at))
        log.draw_bytes += size
    elif kind == "candle_closed":
        log.closed_candles.append((message["series_id"], message["candle"]["candle_time"], received_at))
    elif kind == "candles_batch":
        sid = message["series_id"]
        log.closed_candles.extend((sid, c["candle_time"], received_at) for c in message["candles"])
    elif kind == "error":
        log.errors[str(message.get("code"))] += 1
        if message.get("code") == "unavailable" and message.get("series_id"):
            return str(message["series_id"])
    elif kind == "gap":
        log.errors["gap"] += 1
    return None


class Subscribers:
    """A few client processes holding the sockets of ``plan`` (one tuple of series per socket)."""

    def __init__(self, port: int, plan: list[tuple[str, ...]], processes: int = 2,
                 supports_batch: bool = True, ready_timeout_s: float = 180.0,
                 draw: bool = False, since: int | None = None) -> None:
        self.plan = plan
        options = Options(supports_batch, draw, since)
        shares = [plan[i::processes] for i in range(processes) if plan[i::processes]]
        self.children = []
        for share in shares:
            parent, child = _CTX.Pipe()
            proc = _CTX.Process(target=_hold, args=(port, share, options, child), daemon=True)
            proc.start()
            self.children.append((proc, parent, share))
        deadline = time.monotonic() + ready_timeout_s
        try:
            for proc, pipe, _ in self.children:
                if not pipe.poll(max(0.1, deadline - time.monotonic())):
                    raise RuntimeError("subscriber process not ready in time")
                kind, detail = pipe.recv()
                if kind != "ready":
                    raise RuntimeError(f"subscriber process failed: {detail}")
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout_s: float = 120.0) -> tuple[list[SocketLog], float]:
        """Stop reading; return every socket's log and the client processes' CPU seconds."""
        logs: list[SocketLog] = []
        cpu = 0.0
        for _, pipe, _ in self.children:
            pipe.send("stop")
        for proc, pipe, _ in self.children:
            if not pipe.poll(timeout_s):
                raise RuntimeError("subscriber process did not report")
            kind, detail = pipe.recv()
            if kind != "done":
                raise RuntimeError(f"subscriber process failed: {detail}")
            logs.extend(detail["logs"])
            cpu += detail["cpu_s"]
            proc.join(timeout=10)
        return logs, cpu

    def kill(self) -> None:
        """Terminate every client process (after a failure)."""
        for proc, _, _ in self.children:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)


def hub_subscribers(server: Any, series_ids: set[str]) -> int:
    """Return how many subscriptions the hubs of ``series_ids`` hold right now."""
    board = server.get_json("/api/runtime/actors")
    return sum(a.get("subscribers", 0) for a in board["actors"]
               if a["kind"] == "hub" and a["series_id"] in series_ids)


def wait_subscribed(server: Any, series_ids: set[str], expected: int, timeout_s: float = 120.0,
                    stall_s: float = 10.0) -> int:
    """Poll the status board until the hubs hold ``expected`` subscriptions; return the count.

    Gives up early when the count has not moved for ``stall_s`` (the caller reports the gap).
    """
    deadline = time.monotonic() + timeout_s
    seen, moved_at = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_seen = hub_subscribers(server, series_ids)
        if now_seen >= expected:
            return now_seen
        if now_seen != seen:
            seen, moved_at = now_seen, time.monotonic()
        elif time.monotonic() - moved_at > stall_s:
            break
        time.sleep(0.2)
    return seen
