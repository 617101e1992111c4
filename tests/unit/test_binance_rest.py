"""RestLimiter: per-minute weight budgets, divided among the processes that share an IP."""

from __future__ import annotations

import pytest

from trade_canvas.binance_rest import BinanceRest, RateLimited, RestLimiter


class Clock:
    def __init__(self, now: float = 600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def spend_minute(limiter: RestLimiter, weight: int = 10) -> int:
    """Spend weight until the limiter would make us wait; return what was spent."""
    spent = 0
    while limiter._wait_for(limiter.clock(), weight) == 0:
        limiter.acquire(weight)
        spent += weight
    return spent


@pytest.mark.parametrize("processes, share", [(1, 4800), (2, 2400), (3, 1600), (4, 1200)])
def test_each_process_spends_its_share_of_the_ip_budget(processes: int, share: int) -> None:
    clock = Clock()
    limiters = [RestLimiter(6000, clock=clock, sleep=clock.sleep, processes=processes)
                for _ in range(processes)]
    assert all(lim.budget == share and lim.ip_budget == 4800 for lim in limiters)
    spent = [spend_minute(lim) for lim in limiters]
    assert spent == [share] * processes
    assert sum(spent) <= 4800  # together under 80 % of Binance's 6000 per minute per IP


def test_a_request_over_the_share_waits_for_the_next_minute() -> None:
    clock = Clock(630.0)
    limiter = RestLimiter(2400, clock=clock, sleep=clock.sleep, processes=2)
    assert limiter.budget == 960
    spend_minute(limiter)
    limiter.acquire(10)  # sleeps to the next minute instead of spending over the share
    assert clock.now == 660.0 and limiter.used == 10
    limiter.max_wait_s = 1.0
    spend_minute(limiter)
    with pytest.raises(RateLimited):
        limiter.acquire(10)


def test_the_ips_weight_reported_by_binance_counts_against_the_ip_budget() -> None:
    clock = Clock()
    limiter = RestLimiter(6000, clock=clock, sleep=clock.sleep, processes=4)
    limiter.acquire(10)
    limiter.observe_used_weight(1000)  # the other three processes spent too: still fits
    assert limiter.used == 10 and limiter.ip_used == 1000
    assert limiter._wait_for(clock(), 10) == 0
    limiter.observe_used_weight(4795)  # the IP as a whole is at its budget
    assert limiter._wait_for(clock(), 10) > 0
    clock.now += 60
    assert limiter._wait_for(clock(), 10) == 0  # a new minute


def test_one_process_adopts_the_ips_weight_as_its_own() -> None:
    clock = Clock()
    limiter = RestLimiter(6000, clock=clock, sleep=clock.sleep)
    limiter.acquire(10)
    limiter.observe_used_weight(4795)  # another program on the IP
    assert limiter.used == 4795 and limiter._wait_for(clock(), 10) > 0


def test_client_divides_every_hosts_limiter() -> None:
    rest = BinanceRest({"spot": "https://api.binance.com", "futures": "https://fapi.binance.com"},
                       processes_per_ip=3)
    assert rest.limiter("spot").budget == 1600 and rest.limiter("futures").budget == 640
    assert rest.limiter("spot").snapshot()["processes_per_ip"] == 3
