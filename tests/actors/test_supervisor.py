"""Supervisor with started actors: restarts, backoff, isolation between series."""

import time
from typing import Any

import pykka
import pytest

from trade_canvas.actors.plumbing import ChildLink, ChildState, StatusBoard
from trade_canvas.actors.messages import AcquireFeed, Crash, EnsureSeries, Tick
from trade_canvas.actors.supervisor import Supervisor
from trade_canvas.errors import CapacityExceeded
from trade_canvas.feed_demand import FeedDemand
from trade_canvas.series import parse_series_id

A = parse_series_id("binance:spot:A/USDT:1m")
B = parse_series_id("binance:spot:B/USDT:1m")


class Echo(pykka.ThreadingActor):
    fail_start = False

    def __init__(self, link: ChildLink) -> None:
        super().__init__()
        self.link = link

    def on_start(self) -> None:
        if Echo.fail_start:
            raise RuntimeError("cannot start")
        self.link.started()

    def on_failure(self, *exc_info: Any) -> None:
        self.link.failed(exc_info[1])

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        if isinstance(message, Crash):
            raise RuntimeError(message.reason)
        return message


def blueprint(series, group):
    return {"echo": lambda link: Echo.start(link)}


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def supervisor():
    Echo.fail_start = False
    board = StatusBoard()
    ref = Supervisor.start(blueprint, board, backoff_initial_s=0.05, backoff_max_s=0.4)
    yield ref, board
    ref.stop()


def tick(ref) -> None:
    ref.tell(Tick(time.monotonic()))


def test_group_starts_once_and_runs(supervisor) -> None:
    ref, board = supervisor
    group = ref.ask(EnsureSeries(A), timeout=5)
    assert ref.ask(EnsureSeries(A), timeout=5) is group
    wait_for(lambda: group.children["echo"].state is ChildState.RUNNING)
    assert group.ref("echo").ask("hi", timeout=5) == "hi"
    kinds = [(r.kind, r.series_id) for r in board.records()]
    assert kinds == [("supervisor", None), ("echo", A.text)]


def test_crash_restarts_with_backoff_and_spares_other_series(supervisor) -> None:
    ref, board = supervisor
    group_a = ref.ask(EnsureSeries(A), timeout=5)
    group_b = ref.ask(EnsureSeries(B), timeout=5)
    wait_for(lambda: group_a.children["echo"].state is ChildState.RUNNING)
    first = group_a.ref("echo")
    first.tell(Crash("boom"))
    record = group_a.children["echo"]
    wait_for(lambda: record.state is ChildState.RESTARTING)
    assert "boom" in record.last_error
    wait_for(lambda: (tick(ref), record.state is ChildState.RUNNING)[1])
    assert record.restarts == 1
    assert group_a.ref("echo") is not first and group_a.ref("echo").ask("ok", timeout=5) == "ok"
    assert group_b.children["echo"].restarts == 0
    assert group_b.ref("echo").ask("still here", timeout=5) == "still here"
    snapshot = record.snapshot()
    assert snapshot["state"] == "running" and snapshot["restarts"] == 1


def test_backoff_doubles_up_to_the_cap(supervisor) -> None:
    ref, _ = supervisor
    group = ref.ask(EnsureSeries(A), timeout=5)
    record = group.children["echo"]
    seen = []
    for _ in range(5):
        wait_for(lambda: (tick(ref), record.state is ChildState.RUNNING)[1])
        group.ref("echo").tell(Crash("again"))
        wait_for(lambda: record.state is ChildState.RESTARTING)
        seen.append(record.backoff_s)
    assert seen == [0.05, 0.1, 0.2, 0.4, 0.4]


def test_failed_on_start_is_noticed_and_retried(supervisor) -> None:
    ref, _ = supervisor
    Echo.fail_start = True
    group = ref.ask(EnsureSeries(A), timeout=5)
    record = group.children["echo"]
    wait_for(lambda: (tick(ref), record.restarts >= 1)[1])
    Echo.fail_start = False
    wait_for(lambda: (tick(ref), record.state is ChildState.RUNNING)[1])
    assert record.last_error == "actor stopped unexpectedly"


C = parse_series_id("binance:spot:C/USDT:1m")
D = parse_series_id("binance:spot:D/USDT:1m")


def test_idle_groups_are_reaped_and_groups_in_use_kept() -> None:
    """Issue 13: series groups were never stopped (30k actors after 10k series)."""
    groups: dict = {}
    baseline = len(pykka.ActorRegistry.get_all())
    ref = Supervisor.start(blueprint, StatusBoard(), groups, series_idle_ttl_s=1.0)
    a = ref.ask(EnsureSeries(A), timeout=5)
    b = ref.ask(EnsureSeries(B), timeout=5)
    a.in_use = lambda: True  # e.g. its hub has a subscriber
    b_actor = b.children["echo"].ref
    now = time.monotonic()
    ref.ask(Tick(now + 0.5), timeout=5)
    assert set(groups) == {A.text, B.text}
    ref.ask(Tick(now + 1.5), timeout=5)
    assert set(groups) == {A.text} and not b_actor.is_alive()
    a.in_use = lambda: False  # the idle time counts from the last tick that saw it in use
    ref.ask(Tick(now + 2.0), timeout=5)
    assert set(groups) == {A.text}
    ref.ask(Tick(now + 3.0), timeout=5)
    assert groups == {}
    assert len(pykka.ActorRegistry.get_all()) == baseline + 1  # the supervisor only
    assert ref.ask(EnsureSeries(B), timeout=5) is groups[B.text]  # started again on next use
    ref.stop()


def test_at_the_cap_an_idle_group_makes_room_and_busy_ones_refuse() -> None:
    groups: dict = {}
    ref = Supervisor.start(blueprint, StatusBoard(), groups, max_series=2)
    a = ref.ask(EnsureSeries(A), timeout=5)
    ref.ask(EnsureSeries(B), timeout=5)
    a.in_use = lambda: True
    c = ref.ask(EnsureSeries(C), timeout=5)  # B was idle: evicted
    assert set(groups) == {A.text, C.text}
    c.in_use = lambda: True
    with pytest.raises(CapacityExceeded, match="series_capacity"):
        ref.ask(EnsureSeries(D), timeout=5)
    assert set(groups) == {A.text, C.text}
    ref.stop()


def test_a_refused_feed_starts_no_group() -> None:
    """Issue 13: each subscribe refused for feed capacity still left three actors behind."""
    groups: dict = {}
    ref = Supervisor.start(
        blueprint, StatusBoard(), groups, demand=FeedDemand(1),
        feed_blueprint=lambda series, group, job: (lambda link: Echo.start(link)),
    )
    assert ref.ask(AcquireFeed(A), timeout=5) is True
    count = len(pykka.ActorRegistry.get_all())
    for _ in range(3):
        with pytest.raises(CapacityExceeded):
            ref.ask(AcquireFeed(B), timeout=5)
    assert set(groups) == {A.text} and len(pykka.ActorRegistry.get_all()) == count
    ref.stop()


class LeaseSpy(pykka.ThreadingActor):
    """Stands in for the cluster lease actor: records what the supervisor wants."""

    def __init__(self, link: ChildLink, wanted: list) -> None:
        super().__init__()
        self.link, self.wanted = link, wanted

    def on_start(self) -> None:
        self.link.started()

    def on_receive(self, message: Any) -> Any:
        self.wanted.append(message.series_ids)


def test_cluster_factor_actor_runs_only_on_the_lease_owner_with_its_epoch() -> None:
    """Issue 16: every process folded the writes it received into one shared factor ledger."""
    from trade_canvas.actors.messages import LeasesChanged, StartGlobal

    groups: dict = {}
    started: list[tuple[str, int]] = []
    wanted: list = []

    def factor_blueprint(series, group, epoch):
        started.append((series.text, epoch))
        return lambda link: Echo.start(link)

    ref = Supervisor.start(blueprint, StatusBoard(), groups, cluster=True,
                           factor_blueprint=factor_blueprint)
    ref.ask(StartGlobal("leases", lambda link: LeaseSpy.start(link, wanted)), timeout=5)
    a = ref.ask(EnsureSeries(A), timeout=5)  # written or subscribed here: a lease is wanted
    wait_for(lambda: wanted and A.text in wanted[-1])
    assert "factor" not in a.children and started == []  # not the owner (yet)
    ref.ask(LeasesChanged({A.text: 3}), timeout=5)
    assert started == [(A.text, 3)] and "factor" in a.children
    first = a.children["factor"].ref
    ref.ask(LeasesChanged({A.text: 3}), timeout=5)  # renewed: the same actor goes on
    assert a.children["factor"].ref is first and started == [(A.text, 3)]
    ref.ask(LeasesChanged({A.text: 5}), timeout=5)  # lost and claimed back: a fresh actor
    assert started == [(A.text, 3), (A.text, 5)] and not first.is_alive()
    second = a.children["factor"].ref
    ref.ask(LeasesChanged({}), timeout=5)  # fenced or lost: no factor actor here any more
    assert "factor" not in a.children and not second.is_alive()
    assert "echo" in a.children  # the rest of the group (hub, store) keeps serving
    b = ref.ask(EnsureSeries(B), timeout=5)
    ref.ask(LeasesChanged({B.text: 1}), timeout=5)
    assert "factor" in b.children and "factor" not in a.children
    ref.stop()
