"""SubscriberHub: fans one series' candles out to its subscribers.

A subscriber is a connection's ``Outbox`` (``actors/subscriber.py``) plus the hub's cursor of
what it has been sent. The hub only offers pre-encoded frames (JSON is encoded once per
distinct message, not per subscriber) and never waits on a socket: a connection whose queue is
full is told ``slow_consumer`` and dropped, so one slow client cannot slow the others or the
writer.

Subscriptions live in a ``HubState`` owned by the series group, not by the actor, so a hub that
crashes and restarts keeps its subscribers and catches each one up from its cursor: the store is
the source of truth, and nothing a subscriber missed while the hub was down is lost.

In cluster mode the hub also hands what it is told by this process (forming candles, draw
deltas, system messages) to ``relay``, which sends them to the other processes' hubs; what
arrives from them is marked ``remote`` and not relayed again.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pykka

from trade_canvas.actors import instruments
from trade_canvas.actors.plumbing import ChildLink, report_failure
from trade_canvas.actors.messages import (
    Broadcast,
    CandlesStored,
    Crash,
    DrawChanged,
    PublishForming,
    Subscribe,
    Unsubscribe,
)
from trade_canvas.actors.subscriber import Frame, Outbox, encode
from trade_canvas.candles import Candle
from trade_canvas.errors import TradeCanvasError
from trade_canvas.series import SeriesId
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

@dataclass(eq=False)
class Subscription:
    """One connection's view of a series: what it has been sent up to."""

    outbox: Outbox
    cursor: int | None
    supports_batch: bool
    draw: bool = False


class HubState:
    """Subscriptions of one series; outlives hub restarts."""

    def __init__(self) -> None:
        self.subscriptions: dict[int, Subscription] = {}


class SubscriberHub(pykka.ThreadingActor):
    """Delivers catch-up, live closed and forming candles and system messages of one series."""

    def __init__(
        self,
        series: SeriesId,
        store: CandleStore,
        state: HubState,
        link: ChildLink,
        *,
        catchup_limit: int,
        forming_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        relay: Callable[[str, PublishForming | Broadcast | DrawChanged], None] | None = None,
    ) -> None:
        super().__init__()
        self.series = series
        self.timeframe = series.timeframe
        self.store = store
        self.state = state
        self.link = link
        self.catchup_limit = catchup_limit
        self.forming_interval_s = forming_interval_s
        self.clock = clock
        self.relay = relay
        self._last_forming: tuple[int, float] | None = None
        link.record.extra = lambda: {"subscribers": len(state.subscriptions)}

    def on_start(self) -> None:
        for sub in list(self.state.subscriptions.values()):
            self._catch_up_or_drop(sub, sub.cursor)
        self.link.started()

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case CandlesStored():
                return self._deliver(message.candles, message.committed_at)
            case PublishForming():
                self._relay(message)
                return self._forming(message.candle, throttle=not message.remote)
            case Subscribe():
                return self._subscribe(message)
            case Unsubscribe():
                return self._unsubscribe(message.outbox)
            case Broadcast():
                self._relay(message)
                return self._broadcast(message.message)
            case DrawChanged():
                self._relay(message)
                return self._broadcast(message.message, draw_only=True)
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        logger.warning("hub %s ignored %r", self.series.text, message)
        return None

    def _relay(self, message: PublishForming | Broadcast | DrawChanged) -> None:
        if self.relay is not None and not message.remote:
            self.relay(self.series.text, message)

    def _subscribe(self, message: Subscribe) -> None:
        outbox = message.outbox
        current = self.state.subscriptions.get(outbox.id)
        if current is not None and message.since is None:
            # Already subscribed and no new cursor: the client has everything up to its cursor,
            # so a second full catch-up would only repeat it (and cost a store read each time).
            current.supports_batch, current.draw = message.supports_batch, message.draw
            return
        if outbox.room() < outbox.byte_limit // 2:
            # Checked before the store read: a client that is not reading gets no more catch-ups.
            self.state.subscriptions.pop(outbox.id, None)
            return self._refuse(outbox, "send buffer over half full")
        sub = Subscription(outbox, message.since, message.supports_batch, message.draw)
        self.state.subscriptions[outbox.id] = sub
        self._catch_up_or_drop(sub, message.since, client_asked=True)

    def _refuse(self, outbox: Outbox, why: str) -> None:
        if not outbox.offer([encode({
            "type": "error", "code": "rate_limited", "series_id": self.series.text,
            "message": f"catch-up refused ({why}); read what was sent, then subscribe again",
        })]):
            self.state.subscriptions.pop(outbox.id, None)

    def _unsubscribe(self, outbox: Outbox) -> None:
        self.state.subscriptions.pop(outbox.id, None)

    def _catch_up_or_drop(
        self, sub: Subscription, since: int | None, client_asked: bool = False
    ) -> None:
        # Boundary: a catch-up that fails must cost only its own subscription. Were the hub to
        # crash, its restart would replay the same catch-up (subscriptions outlive the actor)
        # and crash again, for every subscriber of the series.
        try:
            self._catch_up(sub, since, client_asked)
        except Exception as exc:
            self.state.subscriptions.pop(sub.outbox.id, None)
            if isinstance(exc, TradeCanvasError):
                logger.warning("hub %s dropped subscriber #%d: catch-up failed: %s",
                               self.series.text, sub.outbox.id, exc)
            else:
                logger.exception("hub %s dropped subscriber #%d: catch-up failed",
                                 self.series.text, sub.outbox.id)
            sub.outbox.offer([encode({
                "type": "error", "code": "unavailable", "series_id": self.series.text,
                "message": f"catch-up failed ({type(exc).__name__}); subscribe again",
            })])

    def _catch_up(self, sub: Subscription, since: int | None, client_asked: bool = False) -> None:
        sid = self.series.text
        if since is None:
            candles = self.store.read_tail(sid, self.catchup_limit)
        else:
            candles = self.store.read_since(sid, since, self.catchup_limit)
        frames: list[Frame] = []
        if candles and since is not None and since > 0:
            expected = self.timeframe.next_open(since)
            if candles[0].candle_time > expected:
                frames.append(self._gap_frame(expected, candles[0].candle_time))
        if candles:
            frames.extend(self._candle_frames(candles, sub.supports_batch, internal_gaps=False))
        if client_asked and sum(len(frame.wire()) for frame in frames) > sub.outbox.room():
            # A subscribe is the client's request: refuse it rather than drop the connection.
            self.state.subscriptions.pop(sub.outbox.id, None)
            return self._refuse(sub.outbox, "it does not fit the connection's send buffer")
        sub.cursor = candles[-1].candle_time if candles else since
        if frames and not sub.outbox.offer(frames):
            self._drop(sub)

    def _deliver(self, candles: Sequence[Candle], committed_at: float = 0.0) -> None:
        if not candles:
            return
        times = [c.candle_time for c in candles]
        last = times[-1]
        # Subscribers that kept up share a cursor, so what to send is worked out once per
        # (cursor, batch support), not per subscriber: the loop below is the per-socket cost.
        memo: dict[tuple[int | None, bool], list[Frame] | None] = {}
        sent = 0
        for sub in list(self.state.subscriptions.values()):
            key = (sub.cursor, sub.supports_batch)
            try:
                frames = memo[key]
            except KeyError:
                frames = memo[key] = self._frames_after(candles, times, sub.cursor,
                                                        sub.supports_batch)
            if frames is None:
                continue
            if sub.outbox.offer(frames):
                sub.cursor = last
                sent += len(frames)
            else:
                self._drop(sub)
        if sent:  # one observation per fan-out, none per subscriber
            instruments.WS_MESSAGES_SENT.inc(sent)
            if committed_at:
                instruments.FANOUT_SECONDS.observe(time.monotonic() - committed_at)

    def _frames_after(
        self, candles: Sequence[Candle], times: list[int], cursor: int | None,
        supports_batch: bool,
    ) -> list[Frame] | None:
        start = 0 if cursor is None else bisect.bisect_right(times, cursor)
        if start >= len(candles):
            return None  # already sent
        gap_after = cursor
        if gap_after is not None and times[start] <= self.timeframe.next_open(gap_after):
            gap_after = None
        return self._live_frames(candles[start:], gap_after, supports_batch)

    def _live_frames(
        self, candles: Sequence[Candle], gap_after: int | None, supports_batch: bool
    ) -> list[Frame]:
        frames = []
        if gap_after is not None:
            frames.append(self._gap_frame(self.timeframe.next_open(gap_after),
                                          candles[0].candle_time))
        frames.extend(self._candle_frames(candles, supports_batch, internal_gaps=True))
        return frames

    def _candle_frames(
        self, candles: Sequence[Candle], supports_batch: bool, *, internal_gaps: bool
    ) -> list[Frame]:
        sid = self.series.text
        if supports_batch and len(candles) > 1:
            return [encode({"type": "candles_batch", "series_id": sid,
                            "candles": [c.to_dict() for c in candles]})]
        frames = []
        expected: int | None = None  # the open after the previous candle's
        for candle in candles:
            if internal_gaps and expected is not None and candle.candle_time > expected:
                frames.append(self._gap_frame(expected, candle.candle_time))
            frames.append(encode({"type": "candle_closed", "series_id": sid, "candle": candle.to_dict()}))
            expected = self.timeframe.next_open(candle.candle_time)
        return frames

    def _gap_frame(self, expected: int, actual: int) -> Frame:
        return encode({"type": "gap", "series_id": self.series.text,
                       "expected_next_time": expected, "actual_time": actual})

    def _forming(self, candle: Candle, throttle: bool = True) -> None:
        # Remote ones come throttled by their sender (one hint per interval); throttled again
        # here, on arrival times, the newest update of a candle could be dropped.
        now = self.clock()
        last = self._last_forming
        if (throttle and last is not None and last[0] == candle.candle_time
                and now - last[1] < self.forming_interval_s):
            return
        self._last_forming = (candle.candle_time, now)
        frame = (encode({"type": "candle_forming", "series_id": self.series.text,
                         "candle": candle.to_dict()}),)
        subs = self.state.subscriptions.values()
        behind = [s for s in subs if s.cursor is None or candle.candle_time > s.cursor]
        self._offer_each(frame, behind)

    def _broadcast(self, message: dict[str, Any], draw_only: bool = False) -> None:
        frame = (encode(message),)
        subs = self.state.subscriptions.values()
        self._offer_each(frame, [s for s in subs if s.draw] if draw_only else list(subs))

    def _offer_each(self, frame: tuple[Frame, ...], subs: list[Subscription]) -> None:
        sent = 0
        for sub in subs:
            if sub.outbox.offer(frame):
                sent += 1
            else:
                self._drop(sub)
        instruments.WS_MESSAGES_SENT.inc(sent)

    def _drop(self, sub: Subscription) -> None:
        self.state.subscriptions.pop(sub.outbox.id, None)
        instruments.WS_MESSAGES_DROPPED.inc()
        if sub.outbox.close_code == "slow_consumer":
            logger.warning("dropped slow consumer #%d of %s", sub.outbox.id, self.series.text)
