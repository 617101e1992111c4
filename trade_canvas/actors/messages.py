"""Messages between actors: frozen dataclasses, because pykka does not copy messages.

Commands are imperative (``StoreCandles``), events past tense (``CandlesStored``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trade_canvas.candles import Candle
from trade_canvas.series import SeriesId


@dataclass(frozen=True, slots=True)
class EnsureSeries:
    """Start the actor group of a series if it is not running; answers the group."""

    series: SeriesId


@dataclass(frozen=True, slots=True)
class StopSeries:
    """Stop every actor of a series."""

    series_id: str


@dataclass(frozen=True, slots=True)
class StoreCandles:
    """Write closed candles (sorted, unique times); answers the count written."""

    candles: tuple[Candle, ...]
    publish: bool = True


@dataclass(frozen=True, slots=True)
class CandlesStored:
    """Closed candles are durable; subscribers may see them."""

    candles: tuple[Candle, ...]


@dataclass(frozen=True, slots=True)
class PublishForming:
    """Show a not-yet-closed candle to subscribers (never stored)."""

    candle: Candle


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Add (or re-cursor) a connection's subscription; catch-up follows at once."""

    outbox: Any
    since: int | None
    supports_batch: bool


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove a connection's subscription."""

    outbox: Any


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send one system message to every subscriber of the series."""

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Crash:
    """Make the receiving actor fail (debug API: proves supervision works)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """A child finished ``on_start``."""

    series_id: str | None
    kind: str
    generation: int


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A child died of an exception."""

    series_id: str | None
    kind: str
    generation: int
    error: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic supervisor wake-up: liveness checks and due restarts."""

    now: float
