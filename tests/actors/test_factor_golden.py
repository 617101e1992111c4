"""The factor actor's output on the recorded real klines is pinned (events, versions, deltas)."""

from __future__ import annotations

import pytest

from tests.fakes import factor_golden


def effective(steps: list[list]) -> list[list]:
    """Drop pushes that left a client's overlay as it was (the first recording sent one)."""
    kept, last = [], [factor_golden.digest([]), 0]
    for to_time, active, cursor in steps:
        if [active, cursor] != last:
            kept.append([to_time, active, cursor])
            last = [active, cursor]
    return kept


@pytest.mark.parametrize("name", sorted(factor_golden.RUNS))
def test_factor_output_on_real_data_matches_golden(name: str) -> None:
    golden = factor_golden.load_golden()[name]
    record, client = factor_golden.run(factor_golden.RUNS[name]())
    assert record["events"] == golden["events"]
    assert record["versions"] == golden["versions"]
    # after every push, a draw client holds exactly the active set of the recorded run
    assert record["steps"] == effective(golden["steps"])
    assert client.other == []  # no system message for a first computation
