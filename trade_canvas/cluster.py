"""Cluster mode's decisions, as pure values: lease fencing, fair shares, hint sequences.

Several processes share one Postgres database (README "Running several processes"). Each series is
owned by at most one process at a time through a lease row with a fencing epoch; the owner runs
its feed. Every candle write bumps the series' sequence number in the same transaction, and a
notification ("hint") carries ``(series, seq, candles)`` to the other processes. Hints are lossy,
the store is the log: a process that sees a sequence jump re-reads the store from its cursor.

Time is an argument everywhere (monotonic seconds of the caller); nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

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

    def renewed(self, sent_at: float) -> bool:
        """Record a committed renewal sent at ``sent_at``; True if this lifts a fence."""
        self.renewed_at = max(self.renewed_at, sent_at)
        lifted, self.fenced = self.fenced, False
        return lifted

    def deadline(self) -> float:
        """Return the monotonic time at which this process must fence."""
        return self.renewed_at + self.ttl_s - self.tick_s

    def fence_due(self, now: float) -> bool:
        """True (once) when the deadline passed without a renewal."""
        if self.fenced or now < self.deadline():
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


def decode_hint(payload: str) -> Hint | None:
    """Parse a payload; None for anything malformed (a hint is never worth a crash)."""
    try:
        kind, series_id, seq, node, rows = json.loads(payload)
        candles = None if rows == "-" else tuple(Candle(*row) for row in rows)
        if not isinstance(kind, str) or not isinstance(series_id, str) or not isinstance(seq, int):
            return None
        return Hint(kind, series_id, seq, candles, str(node))
    except (ValueError, TypeError):
        return None


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
