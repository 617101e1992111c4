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
