from trade_canvas.actors.connection import ConnectBudget


def test_budget_postpones_attempts_over_the_window_limit() -> None:
    budget = ConnectBudget(limit=3, window_s=300)
    for t in (0, 10, 20):
        assert budget.wait_s(t) == 0
        budget.spend(t)
    assert budget.wait_s(30) == 270  # until the first attempt leaves the window
    assert budget.wait_s(300) == 0
    budget.spend(300)
    assert budget.wait_s(301) == 9  # attempts at 10, 20 and 300 remain


def test_processes_on_one_ip_share_the_budget() -> None:
    # Binance: 300 connection attempts per 5 minutes per IP; we keep to 80 % of it in total.
    assert ConnectBudget.share(300).limit == 240
    shares = [ConnectBudget.share(300, processes=n).limit for n in (1, 2, 3, 4, 7)]
    assert shares == [240, 120, 80, 60, 34]
    for n in (2, 3, 4, 7, 16):
        assert n * ConnectBudget.share(300, processes=n).limit <= 240
    assert ConnectBudget.share(300, processes=1000).limit == 1  # never zero: postponed, not dead
