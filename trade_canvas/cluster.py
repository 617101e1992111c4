"""Cluster mode's decisions, as pure values: lease fencing, fair shares, hint sequences.

Several processes share one Postgres database (README "Running several processes"). Each series is
owned by at most one process at a time through a lease row with a fencing epoch; the owner runs
its feed. Every candle write bumps the series' sequence number in the same transaction, and a
notification ("hint") carries ``(series, seq, candles)`` to the other processes. Hints are lossy,
the store is the log: a process that sees a sequence jump re-reads the store from its cursor.
What the store does not sequence (forming candles, draw deltas, system messages) travels as
best-effort hints of its own kinds (f, d, b), which the sending process ignores.

Time is an argument everywhere (monotonic seconds of the caller); nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence, Union

from trade_canvas.candles import Candle

# A NOTIFY payload must stay below 8000 bytes; candles that do not fit are left out ("-").
HINT_PAYLOAD_MAX = 7900
# The shortest a candle row can encode to, with its comma: ``[0,0,0,0,0,0],``. More candles than
# HINT_PAYLOAD_MAX / this cannot fit, so a big batch is not encoded only to be thrown away.
ROW_MIN_BYTES = 14


class LeaseKeeper:
    """When this process must stop acting as an owner: no renewal for ``ttl - tick`` seconds.

    The renewal's deadline counts from when the renew transaction was *sent*: Postgres sets
    ``expires_at = now() + ttl`` at the transaction's start, which is later, so a process that
    fences at ``sent + ttl - tick`` has stopped before any other one can claim its series.
    Read by two callers (the lease actor after a failed tick, the watchdog while a tick hangs);
    ``fence_due`` answers True once per lapse.
    """

    def __init__(self, ttl_s: float, tick_s: float, now: float) -> None:
        self.ttl_s = ttl_s
        self.tick_s = tick_s
        self.renewed_at = now  # boot counts as a renewal of the nothing we own yet
        self.fenced = False
        self.fenced_at: float | None = None
        self.connection_lost = False

    def renewed(self, sent_at: float) -> bool:
        """Record a committed renewal sent at ``sent_at``; True if this lifts a fence."""
        self.renewed_at = max(self.renewed_at, sent_at)
        self.connection_lost = False
        lifted, self.fenced = self.fenced, False
        return lifted

    def lost(self) -> None:
        """The lease connection was lost: fence at the next check instead of at the deadline
        (the others may reap this node two ticks after its last heartbeat, before the TTL)."""
        self.connection_lost = True

    def deadline(self) -> float:
        """Return the monotonic time at which this process must fence."""
        return self.renewed_at + self.ttl_s - self.tick_s

    def fence_due(self, now: float) -> bool:
        """True (once) when the deadline passed without a renewal, or the connection was lost."""
        if self.fenced or (now < self.deadline() and not self.connection_lost):
            return False
        self.fenced, self.fenced_at = True, now
        return True


def fair_share(wanted: int, alive: int) -> int:
    """Return how many series one of ``alive`` processes claims of ``wanted`` (rounded up)."""
    return math.ceil(wanted / max(1, alive))


def claim_room(wanted: int, alive: int, owned: int) -> int:
    """Return how many free series to claim now, besides those free for more than two ticks."""
    return max(0, fair_share(wanted, alive) - owned)


# -- hints (NOTIFY payloads)


@dataclass(frozen=True, slots=True)
class Hint:
    """One notification: ``kind`` c (closed, pushed), w (written, not pushed), r (released)."""

    kind: str
    series_id: str
    seq: int = 0
    candles: tuple[Candle, ...] | None = None  # None: not inline, read the store
    node: str = ""


def encode_hint(hint: Hint) -> str:
    """Return the compact JSON payload; the candles are dropped when they do not fit.

    >>> encode_hint(Hint("c", "binance:spot:BTC/USDT:1m", 7, (Candle(60, 1, 2, 0.5, 1.5, 3),)))
    '["c","binance:spot:BTC/USDT:1m",7,"",[[60,1,2,0.5,1.5,3]]]'
    """
    candles = hint.candles
    rows: Any = "-"
    if candles is not None and len(candles) * ROW_MIN_BYTES <= HINT_PAYLOAD_MAX:
        rows = [list(c.to_row()) for c in candles]
    text = json.dumps([hint.kind, hint.series_id, hint.seq, hint.node, rows],
                      separators=(",", ":"))
    if len(text.encode()) > HINT_PAYLOAD_MAX and rows != "-":
        text = json.dumps([hint.kind, hint.series_id, hint.seq, hint.node, "-"],
                          separators=(",", ":"))
    return text


def decode_hint(payload: str) -> AnyHint | None:
    """Parse a payload; None for anything malformed (a hint is never worth a crash)."""
    try:
        kind, series_id, seq, node, data = json.loads(payload)
        if not isinstance(kind, str) or not isinstance(series_id, str) or not isinstance(seq, int):
            return None
        node = str(node)
        if kind == FormingHint.kind:
            return FormingHint(node, tuple((str(sid), Candle(*row)) for sid, *row in data))
        if kind == DrawHint.kind:
            return _decode_draw(series_id, node, data)
        if kind == BroadcastHint.kind:
            return BroadcastHint(series_id, node, dict(data)) if isinstance(data, dict) else None
        candles = None if data == "-" else tuple(Candle(*row) for row in data)
        return Hint(kind, series_id, seq, candles, node)
    except (ValueError, TypeError):
        return None


# -- messages for the subscribers of other processes: forming candles, draw deltas, broadcasts
#
# These are not in the store's sequence: a lost one is not repaired by a resync. Forming
# candles are best effort (the next update replaces them); a lost draw delta shows as a
# ``from_version_id`` that is not the client's cursor, and the client re-reads
# ``GET /api/draw/delta`` (the same rule as for a delta missed on one process).


@dataclass(frozen=True, slots=True)
class FormingHint:
    """Forming candles of many series, the newest per series since the last hint."""

    kind: ClassVar[str] = "f"
    node: str
    candles: tuple[tuple[str, Candle], ...]


@dataclass(frozen=True, slots=True)
class DrawRef:
    """A draw delta too big for a hint: enough to rebuild it from the store.

    ``removed_ids`` is None when even those did not fit; the rebuilt message then carries
    the whole ``active_ids`` list (replace the visible set), which any client applies.
    """

    from_version: int
    to_version: int
    to_time: int
    removed_ids: tuple[str, ...] | None
    active: bool  # the message carries the whole active_ids list


@dataclass(frozen=True, slots=True)
class DrawHint:
    """A ``draw_delta`` message of the series' factor actor: inline, or a reference."""

    kind: ClassVar[str] = "d"
    series_id: str
    node: str
    message: Mapping[str, Any] | None = None
    ref: DrawRef | None = None


@dataclass(frozen=True, slots=True)
class BroadcastHint:
    """A ``system`` message for every subscriber of the series."""

    kind: ClassVar[str] = "b"
    series_id: str
    node: str
    message: Mapping[str, Any]


AnyHint = Union[Hint, FormingHint, DrawHint, BroadcastHint]
RELAYED_KINDS = frozenset({FormingHint.kind, DrawHint.kind, BroadcastHint.kind})


def from_elsewhere(hint: AnyHint, node: str) -> bool:
    """False for a relayed hint (f, d, b) of this process itself: its own subscribers had
    that message already. Other kinds are left to the caller (its own writes and releases)."""
    return hint.kind not in RELAYED_KINDS or hint.node != node


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def encode_hints(hint: AnyHint, limit: int = HINT_PAYLOAD_MAX) -> list[str]:
    """Return the payloads that carry ``hint`` (none when it cannot be carried at all).

    Forming candles are split over as many payloads as they need; a draw delta goes inline
    when it fits, else as a ``DrawRef``; a broadcast too big for one payload is dropped.

    >>> encode_hints(FormingHint("n1", (("binance:spot:A/B:1m", Candle(60, 1, 2, 0.5, 1.5, 3)),)))
    ['["f","",0,"n1",[["binance:spot:A/B:1m",60,1,2,0.5,1.5,3]]]']
    """
    if isinstance(hint, FormingHint):
        return _encode_forming(hint, limit)
    if isinstance(hint, DrawHint):
        text = _encode_draw(hint, limit)
        return [] if text is None else [text]
    if isinstance(hint, BroadcastHint):
        text = _dumps([hint.kind, hint.series_id, 0, hint.node, hint.message])
        return [text] if len(text.encode()) <= limit else []
    return [encode_hint(hint)]


def _encode_forming(hint: FormingHint, limit: int) -> list[str]:
    head = _dumps([hint.kind, "", 0, hint.node])[:-1] + ",["
    payloads: list[str] = []
    rows: list[str] = []
    size = len(head) + 2
    for series_id, candle in hint.candles:
        row = _dumps([series_id, *candle.to_row()])
        if len(head) + len(row.encode()) + 2 > limit:
            continue  # cannot fit even alone (an absurd series id)
        if rows and size + 1 + len(row.encode()) > limit:
            payloads.append(head + ",".join(rows) + "]]")
            rows, size = [], len(head) + 2
        size += len(row.encode()) + (1 if rows else 0)
        rows.append(row)
    if rows:
        payloads.append(head + ",".join(rows) + "]]")
    return payloads


def draw_ref(message: Mapping[str, Any]) -> DrawRef:
    """Return the reference that rebuilds the ``draw_delta`` message from the store."""
    return DrawRef(int(message["from_version_id"]), int(message["next_cursor"]["version_id"]),
                   int(message["to_candle_time"]), tuple(message.get("removed_ids", ())),
                   "active_ids" in message)


def _encode_draw(hint: DrawHint, limit: int) -> str | None:
    if hint.message is not None:
        text = _dumps([hint.kind, hint.series_id, 0, hint.node, hint.message])
        if len(text.encode()) <= limit:
            return text
    ref = hint.ref or (draw_ref(hint.message) if hint.message is not None else None)
    if ref is None:
        return None
    fields = [ref.from_version, ref.to_version, ref.to_time,
              None if ref.removed_ids is None else list(ref.removed_ids), ref.active]
    text = _dumps([hint.kind, hint.series_id, 0, hint.node, fields])
    if len(text.encode()) > limit:  # too many removed ids: send the whole active list instead
        fields[3:] = [None, True]
        text = _dumps([hint.kind, hint.series_id, 0, hint.node, fields])
    return text if len(text.encode()) <= limit else None


def _decode_draw(series_id: str, node: str, data: Any) -> DrawHint | None:
    if isinstance(data, dict):
        return DrawHint(series_id, node, message=data)
    start, end, to_time, removed, active = data
    if not all(isinstance(v, int) for v in (start, end, to_time)):
        return None
    ids = None if removed is None else tuple(str(i) for i in removed)
    return DrawHint(series_id, node, ref=DrawRef(start, end, to_time, ids, bool(active)))


def draw_message(body: Mapping[str, Any], ref: DrawRef) -> dict[str, Any] | None:
    """Rebuild a pushed ``draw_delta`` message from a ``GET /api/draw/delta`` body.

    ``body`` was read with cursor ``ref.from_version`` at ``ref.to_time``. Versions after
    ``ref.to_version`` (written since by later folds) are left out, so the message ends
    where the original did and the next one chains on. None when the store no longer holds
    exactly ``(from_version, to_version]`` (a rebuild cleared the ledger, the patch was cut):
    that message is lost, and clients see the next one's ``from_version_id`` differ.
    """
    if body.get("to_candle_time") != ref.to_time:
        return None
    patch = [dict(row) for row in body["instruction_catalog_patch"]
             if int(row["version_id"]) <= ref.to_version]
    last = max((int(row["version_id"]) for row in patch), default=ref.from_version)
    if last != ref.to_version:
        return None
    message: dict[str, Any] = {
        "type": "draw_delta", **body, "instruction_catalog_patch": patch,
        "next_cursor": {"version_id": last, "point_time": None},
        "from_version_id": ref.from_version,
        "removed_ids": list(ref.removed_ids or ()),
    }
    if not ref.active and ref.removed_ids is not None:
        del message["active_ids"]
    return message


class FormingBatcher:
    """The forming candles waiting for the next ``f`` hint: the newest per series.

    One hint leaves at most every ``interval_s``; the first after a quiet spell leaves at once.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.pending: dict[str, Candle] = {}
        self.last_sent = -math.inf

    def offer(self, series_id: str, candle: Candle) -> None:
        """Keep ``candle`` unless a newer candle of the series is already waiting."""
        waiting = self.pending.get(series_id)
        if waiting is None or candle.candle_time >= waiting.candle_time:
            self.pending[series_id] = candle

    def due(self) -> float | None:
        """Return when the next hint may leave (None: nothing waits)."""
        return self.last_sent + self.interval_s if self.pending else None

    def take(self, now: float) -> list[tuple[str, Candle]]:
        """Return what waits (by series) and start a new interval at ``now``."""
        items = sorted(self.pending.items())
        self.pending = {}
        self.last_sent = now
        return items



# -- following another process's writes


class Step(enum.Enum):
    """What a follower does with a hint."""

    DROP = "drop"  # already delivered (a duplicate, or our own write seen again)
    DELIVER = "deliver"  # the next one in sequence, candles inline
    SKIP = "skip"  # the next one in sequence, stored but not to be pushed
    RESYNC = "resync"  # a jump, or no candles inline: read the store from the cursor


class SeqFollower:
    """Where one series stands for this process: the last sequence number delivered.

    ``delivered`` None means not known yet (the series was just taken up here): the first hint
    then resyncs, since an earlier hint may have been missed.
    """

    def __init__(self) -> None:
        self.delivered: int | None = None
        self.resyncs = 0

    def step(self, seq: int, inline: bool, publish: bool = True) -> Step:
        """Decide about the hint numbered ``seq`` and move ``delivered`` if it is taken."""
        if self.delivered is not None and seq <= self.delivered:
            return Step.DROP
        if self.delivered is not None and seq == self.delivered + 1 and (inline or not publish):
            self.delivered = seq
            return Step.DELIVER if publish else Step.SKIP
        return Step.RESYNC

    def resynced(self, seq: int) -> None:
        """The store was read up to (at least) sequence ``seq``."""
        self.resyncs += 1
        if self.delivered is None or seq > self.delivered:
            self.delivered = seq

    def behind(self, head_seq: int) -> bool:
        """Whether the position check shows writes this process has not delivered."""
        return self.delivered is None or head_seq > self.delivered


def candles_after(candles: Sequence[Candle], cursor: int | None) -> list[Candle]:
    """Return the candles newer than ``cursor`` (all of them for None)."""
    return [c for c in candles if cursor is None or c.candle_time > cursor]
