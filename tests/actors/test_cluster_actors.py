"""Cluster-mode handoff without a stream on two upstream connections.

A series asked for by another node is handed over (its lease freed) only once the stream
actor of this process no longer holds its stream upstream: dialed, subscribed, or waiting for
its UNSUBSCRIBE frame behind the per-connection message rate.
"""

from __future__ import annotations

from typing import Any

from trade_canvas.actors.cluster import LeaseActor
from trade_canvas.actors.connection import StreamConnections
from trade_canvas.actors.messages import (
    AddStream,
    ConnectionOpened,
    LeasesChanged,
    RemoveStream,
    Tick,
)
from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.cluster import LeaseKeeper
from trade_canvas.storage.leases import Node, TickResult

A, B = "btcusdt@kline_1m", "ethusdt@kline_1m"


class Recorder:
    """Stands in for an actor ref: keeps what it is told."""

    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)


class FakeSocket:
    def __init__(self) -> None:
        self.frames: list[str] = []

    def send(self, frame: str) -> None:
        self.frames.append(frame)


def link(kind: str) -> ChildLink:
    record = ChildRecord(kind=kind, series_id=None, start=lambda link: None)  # type: ignore[arg-type,return-value]
    return ChildLink(record, None)


def test_stream_actor_publishes_what_it_holds_upstream_until_the_unsubscribe_is_sent() -> None:
    upstream: dict[str, frozenset[str]] = {}
    clock = [1000.0]
    actor = StreamConnections("spot", "ws://127.0.0.1:9", link("streams:spot"),
                              streams_per_connection=10, silence_timeout_s=3600,
                              clock=lambda: clock[0], upstream=upstream)
    feed = Recorder()
    actor.on_receive(AddStream(A, feed))  # dialing a connection named after A
    assert upstream["spot"] == {A}
    conn = next(iter(actor.connections.values()))
    actor.on_receive(AddStream(B, feed))  # joins the connection: subscribed by a frame later
    ws = FakeSocket()
    conn.ws = ws  # type: ignore[assignment]
    actor.on_receive(ConnectionOpened(conn.id, conn.generation, (A,)))
    assert upstream["spot"] == {A}
    clock[0] += 1
    actor.on_receive(Tick(clock[0]))  # SUBSCRIBE B
    assert upstream["spot"] == {A, B} and '"SUBSCRIBE"' in ws.frames[-1]
    actor.on_receive(RemoveStream(A))  # the feed stopped: not routed, still subscribed
    assert upstream["spot"] == {A, B}
    actor.on_receive(Tick(clock[0] + 0.01))  # within the message rate: nothing sent yet
    assert upstream["spot"] == {A, B} and len(ws.frames) == 1
    clock[0] += 1
    actor.on_receive(Tick(clock[0]))  # UNSUBSCRIBE A
    assert '"UNSUBSCRIBE"' in ws.frames[-1] and upstream["spot"] == {B}
    actor.on_receive(RemoveStream(B))  # the last stream: the connection closes at once
    assert upstream["spot"] == frozenset()


class FakeLeases:
    """The lease table as the actor sees it: another node asked for S1."""

    def __init__(self) -> None:
        self.node = Node("n1", "n1", 1)
        self.handed: list[tuple[str, ...]] = []

    def tick(self, wanted: list[str], hand_over: tuple[str, ...] = ()) -> TickResult:
        self.handed.append(tuple(hand_over))
        if "S1" in hand_over:
            return TickResult({"S2": 1}, 2, released=("S1",))
        return TickResult({"S1": 4, "S2": 1}, 2, asked=("S1",))


def test_an_asked_series_is_handed_over_only_once_its_stream_is_gone_here() -> None:
    leases, supervisor = FakeLeases(), Recorder()
    held = {"S1"}
    record = ChildRecord(kind="leases", series_id=None, start=lambda link: None)  # type: ignore[arg-type,return-value]
    actor = LeaseActor(leases, LeaseKeeper(3.0, 0.5, 0.0), ChildLink(record, supervisor),  # type: ignore[arg-type]
                       clock=lambda: 1.0, still_upstream=lambda sid: sid in held)
    actor.on_receive(Tick(1.0))
    assert supervisor.told == [LeasesChanged({"S2": 1})]  # S1: stop its feed and factor
    actor.on_receive(Tick(1.0))
    actor.on_receive(Tick(1.0))
    assert leases.handed == [(), (), ()]  # its UNSUBSCRIBE has not gone out yet
    held.clear()
    actor.on_receive(Tick(1.0))
    assert leases.handed[-1] == ("S1",)
    assert supervisor.told == [LeasesChanged({"S2": 1})]  # nothing else changed here


def test_a_stale_removal_keeps_the_new_feed_and_a_fence_drops_everything() -> None:
    from trade_canvas.actors.messages import DropAllStreams

    upstream: dict[str, frozenset[str]] = {}
    actor = StreamConnections("spot", "ws://127.0.0.1:9", link("streams:spot"),
                              streams_per_connection=10, silence_timeout_s=3600,
                              upstream=upstream)
    old, new = Recorder(), Recorder()
    actor.on_receive(AddStream(A, old))
    actor.on_receive(RemoveStream(A, old))
    actor.on_receive(AddStream(A, new))  # a feed started again for the same series
    actor.on_receive(RemoveStream(A, old))  # the old feed's removal, arriving late
    assert actor.routes[A] is new and upstream["spot"] == {A}
    actor.on_receive(AddStream(B, new))
    actor.on_receive(DropAllStreams())  # fenced: nothing upstream, whatever the feeds do
    assert upstream["spot"] == frozenset() and actor.routes == {} and actor.connections == {}


def test_supervisor_unroutes_stopped_feeds_and_stops_stuck_children_together() -> None:
    """A fence with feeds stuck on the store (a partition) took one stop wait per feed."""
    import threading
    import time

    import pykka

    from trade_canvas.actors import supervisor as supervisor_module
    from trade_canvas.actors.messages import AcquireFeed
    from trade_canvas.actors.plumbing import StatusBoard
    from trade_canvas.actors.supervisor import Supervisor
    from trade_canvas.feed_demand import FeedDemand
    from trade_canvas.series import parse_series_id

    release = threading.Event()

    class Stuck(pykka.ThreadingActor):
        def __init__(self, link: ChildLink) -> None:
            super().__init__()
            self.link = link

        def on_start(self) -> None:
            self.link.started()

        def on_receive(self, message: Any) -> Any:
            release.wait(10)  # a store call that does not come back

    unrouted: list[str] = []
    supervisor_module.STOP_WAIT_S, saved = 1.0, supervisor_module.STOP_WAIT_S
    ref = Supervisor.start(lambda series, group: {}, StatusBoard(), cluster=True,
                           feed_blueprint=lambda series, group, job: Stuck.start,
                           unroute=lambda series, feed: unrouted.append(series.text),
                           demand=FeedDemand(0))
    try:
        ids = [parse_series_id(f"binance:spot:S{i}/USDT:1m") for i in range(4)]
        ref.ask(LeasesChanged({s.text: 1 for s in ids}), timeout=5)
        for series in ids:
            ref.ask(AcquireFeed(series), timeout=5)
        groups = ref.proxy().groups.get(timeout=5)
        for series in ids:
            groups[series.text].children["feed"].ref.tell("work")  # each one gets stuck
        started = time.monotonic()
        ref.ask(LeasesChanged({}), timeout=10)  # fenced
        took = time.monotonic() - started
        assert sorted(unrouted) == sorted(s.text for s in ids)
        assert all("feed" not in groups[s.text].children for s in ids)
        assert took < 3.0, took  # one shared wait of STOP_WAIT_S (1 s), not four in a row
    finally:
        release.set()
        supervisor_module.STOP_WAIT_S = saved
        ref.stop()
