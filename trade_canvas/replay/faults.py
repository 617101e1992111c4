"""Fault plans the tests arm on the replay exchange (pure: frames in, actions out).

WebSocket faults act on one connection's outgoing data frames (kline frames; method replies
are not counted). REST faults answer the next N REST requests with an error status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trade_canvas.errors import InvalidInput

WsFaultKind = Literal["drop", "silence", "duplicate", "reorder", "malformed"]
WS_FAULT_KINDS: tuple[str, ...] = ("drop", "silence", "duplicate", "reorder", "malformed")
REST_FAULT_STATUSES = (418, 429, 500, 502, 503, 504)

#: What "malformed" sends, in turn: invalid JSON, then well-formed JSON of the wrong shape.
GARBAGE_FRAMES: tuple[str, ...] = (
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline",',
    "not json at all",
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":"oops"}}',
    '{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":-5,"o":"x","x":"maybe"}}',
    "[1,2,3]",
    '{"stream":42,"data":null}',
)


@dataclass(frozen=True, slots=True)
class WsFault:
    """One WebSocket fault.

    ``drop``: after ``after_frames`` more data frames (and, with ``mid_candle``, right after a
    forming frame) close the TCP connection without a close frame (``clean``: send close 1001).
    ``silence``: after ``after_frames`` frames send nothing more (pings are still answered:
    a hung feed whose socket stays healthy). ``duplicate``/``reorder``: the next ``count``
    frames are sent twice / swapped pairwise. ``malformed``: send ``count`` garbage frames now.
    """

    kind: WsFaultKind
    after_frames: int = 0
    count: int = 1
    mid_candle: bool = False
    clean: bool = False


@dataclass(frozen=True, slots=True)
class RestFault:
    """Answer the next ``count`` REST requests with ``status`` (and Retry-After for 418/429)."""

    status: int
    count: int = 1
    retry_after: int = 1


def _int(raw: dict[str, Any], name: str, default: int, minimum: int = 0) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"fault field {name!r} must be an integer >= {minimum}")
    return value


def parse_ws_fault(raw: object) -> WsFault:
    """Parse ``{"kind":"drop","after_frames":3,"mid_candle":true}`` and friends.

    Raises:
        InvalidInput: unknown kind or bad numbers.
    """
    if not isinstance(raw, dict) or raw.get("kind") not in WS_FAULT_KINDS:
        raise InvalidInput(f"ws fault needs 'kind', one of {', '.join(WS_FAULT_KINDS)}")
    return WsFault(
        kind=raw["kind"],
        after_frames=_int(raw, "after_frames", 0),
        count=_int(raw, "count", 1, minimum=1),
        mid_candle=bool(raw.get("mid_candle", False)),
        clean=bool(raw.get("clean", False)),
    )


def parse_rest_fault(raw: object) -> RestFault:
    """Parse ``{"status":429,"count":2,"retry_after":3}``.

    Raises:
        InvalidInput: unsupported status or bad numbers.
    """
    if not isinstance(raw, dict) or raw.get("status") not in REST_FAULT_STATUSES:
        raise InvalidInput(f"rest fault needs 'status', one of {REST_FAULT_STATUSES}")
    return RestFault(raw["status"], _int(raw, "count", 1, 1), _int(raw, "retry_after", 1))


@dataclass(frozen=True, slots=True)
class Send:
    """Send this text frame."""

    text: str


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection now (``clean``: with a close frame first)."""

    clean: bool


Action = Send | Drop


@dataclass(slots=True)
class _Armed:
    fault: WsFault
    seen: int = 0
    done: int = 0


@dataclass(slots=True)
class FaultRunner:
    """The faults armed on one connection, applied frame by frame."""

    armed: list[_Armed] = field(default_factory=list)
    silent: bool = False
    held: str | None = None
    garbage_sent: int = 0

    def arm(self, fault: WsFault) -> None:
        """Add a fault; it counts frames from now on."""
        self.armed.append(_Armed(fault))

    def clear(self) -> None:
        """Disarm everything and end a silence."""
        self.armed.clear()
        self.silent = False
        self.held = None

    def describe(self) -> list[dict[str, Any]]:
        """Return the armed faults for the state endpoint."""
        return [{"kind": a.fault.kind, "seen": a.seen, "done": a.done} for a in self.armed]

    def due_now(self) -> list[Action]:
        """Return actions due right away: garbage of ``malformed`` faults, a ``drop`` at 0."""
        actions: list[Action] = []
        for armed in list(self.armed):
            fault = armed.fault
            if fault.kind == "malformed":
                for _ in range(fault.count):
                    actions.append(Send(GARBAGE_FRAMES[self.garbage_sent % len(GARBAGE_FRAMES)]))
                    self.garbage_sent += 1
                self.armed.remove(armed)
            elif fault.kind == "drop" and fault.after_frames == 0 and not fault.mid_candle:
                self.armed.remove(armed)
                actions.append(Drop(fault.clean))
        return [a for a in actions if isinstance(a, Drop)] if self.silent else actions

    def process(self, text: str, forming: bool) -> list[Action]:
        """Return what to do with one outgoing data frame."""
        if self.silent:
            return []
        actions: list[Action] = [Send(text)]
        for armed in list(self.armed):
            actions = self._apply(armed, actions, forming)
            if self.silent:
                return []
        return actions

    def _apply(self, armed: _Armed, actions: list[Action], forming: bool) -> list[Action]:
        fault = armed.fault
        armed.seen += 1
        if armed.seen <= fault.after_frames and fault.kind in ("duplicate", "reorder"):
            return actions
        if fault.kind == "drop":
            if armed.seen >= fault.after_frames and (forming or not fault.mid_candle):
                self.armed.remove(armed)
                return [*actions, Drop(fault.clean)]
            return actions
        if fault.kind == "silence":
            if armed.seen > fault.after_frames:
                self.armed.remove(armed)
                self.silent = True
            return actions
        return self._reshape(armed, actions)

    def _reshape(self, armed: _Armed, actions: list[Action]) -> list[Action]:
        armed.done += 1
        if armed.done >= armed.fault.count * (2 if armed.fault.kind == "reorder" else 1):
            self.armed.remove(armed)
        if armed.fault.kind == "duplicate":
            return [*actions, *actions]
        sends = [a.text for a in actions if isinstance(a, Send)]
        if self.held is None and len(sends) == 1:
            self.held = sends[0]
            return [a for a in actions if not isinstance(a, Send)]
        held, self.held = self.held, None
        return [*actions, Send(held)] if held is not None else actions
