import pytest

from trade_canvas.errors import CapacityExceeded
from trade_canvas.feed_demand import FeedDemand


def test_refcount_and_idle_reap() -> None:
    demand = FeedDemand(max_jobs=8)
    assert demand.acquire("a", 0).start is True
    assert demand.acquire("a", 1).start is False
    demand.release("a", 2)
    assert demand.expired(100, 60) == []
    demand.release("a", 3)
    assert demand.jobs["a"].idle_since == 3
    assert demand.expired(62, 60) == []
    assert demand.expired(63, 60) == ["a"]
    assert "a" not in demand.jobs


def test_reacquire_stops_the_idle_clock() -> None:
    demand = FeedDemand(max_jobs=8)
    demand.acquire("a", 0)
    demand.release("a", 1)
    demand.acquire("a", 2)
    assert demand.expired(1000, 60) == []


def test_cap_evicts_the_longest_idle_then_refuses() -> None:
    demand = FeedDemand(max_jobs=2)
    demand.acquire("a", 0)
    demand.acquire("b", 0)
    demand.release("b", 5)
    demand.release("a", 7)
    assert demand.acquire("c", 8).evict == ("b",)
    assert demand.acquire("d", 9).evict == ("a",)
    with pytest.raises(CapacityExceeded):
        demand.acquire("e", 10)
    assert set(demand.jobs) == {"c", "d"}


def test_pinned_never_reaped_evicted_or_counted() -> None:
    demand = FeedDemand(max_jobs=1)
    assert demand.pin("w") is True
    demand.acquire("w", 0)
    demand.release("w", 1)
    assert demand.acquire("a", 2).evict == ()
    assert demand.expired(10_000, 1) == []
    assert demand.jobs["w"].pinned


def test_unlimited_and_spurious_release() -> None:
    demand = FeedDemand(max_jobs=0)
    for i in range(100):
        demand.acquire(str(i), 0)
    demand.release("unknown", 1)
    assert len(demand.jobs) == 100
