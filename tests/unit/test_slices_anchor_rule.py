"""The slices' candidate-anchor rule (the original's step 4), table-driven (pure)."""

from __future__ import annotations

import pytest

from tests.unit.test_factor_slices import A1, A2, ingest
from trade_canvas.factors.slices import build_view, head_anchor_ref, slices_payload

SID = "binance:futures:BTC/USDT:1m"


def seg(start: int, end: int, p0: float, p1: float, direction: int) -> dict:
    return {"start_time": start, "end_time": end, "start_price": p0, "end_price": p1,
            "direction": direction}


def ref(kind: str, start: int, end: int, direction: int, p0: float = 0.0, p1: float = 0.0) -> dict:
    return dict(seg(start, end, p0, p1, direction), kind=kind)


EXT = seg(100, 300, 10.0, 30.0, 1)  # strength 20
CAND = seg(300, 350, 30.0, 25.0, -1)  # strength 5
STRONG = seg(300, 350, 30.0, 1.0, -1)  # strength 29
CONFIRMED = [seg(40, 60, 5.0, 9.0, 1), seg(40, 80, 5.0, 12.0, 1)]  # the longer: strength 7


@pytest.mark.parametrize("base,head,expected", [
    # the original's own unit test: a stored 100->300 ref (Δ20) beats a 300->350 candidate (Δ5)
    (ref("candidate", 100, 300, 1, 10, 30), {"extending": EXT, "candidate": CAND}, "base"),
    (ref("candidate", 100, 300, 1, 10, 30), {"extending": EXT, "candidate": STRONG}, "candidate"),
    (None, {"extending": EXT, "candidate": CAND}, "candidate"),
    (ref("confirmed", 300, 320, 1), {"extending": EXT, "candidate": CAND}, "candidate"),  # same start
    (ref("candidate", 100, 300, 1), {"extending": EXT, "candidate": None}, "base"),
    # a base naming no head pen and no confirmed pen has strength -1
    (ref("confirmed", 7, 9, 1, 0, 1000), {"extending": EXT, "candidate": CAND}, "candidate"),
    # strength of the longest confirmed pen with the same start and direction: 7 > 5
    (ref("confirmed", 40, 60, 1, 0, 0), {"extending": EXT, "candidate": CAND}, "base"),
])
def test_rule(base, head, expected) -> None:
    result = head_anchor_ref(base, head, CONFIRMED)
    want = dict(head["candidate"], kind="candidate") if expected == "candidate" else base
    assert result == want


@pytest.mark.parametrize("bad", [
    ref("pending", 100, 300, 1), ref("confirmed", 0, 300, 1), ref("confirmed", 100, 300, 0),
])
def test_unnormal_base_is_null(bad) -> None:
    assert head_anchor_ref(bad, {"extending": None, "candidate": None}, []) is None
    assert head_anchor_ref(bad, {"extending": EXT, "candidate": CAND}, [])["kind"] == "candidate"


@pytest.mark.parametrize("prices", [A1, A2])
def test_served_candidate_ref_is_the_head_candidate_or_not_candidate(prices) -> None:
    # What the chart needs: a candidate ref it can highlight, i.e. equal to pen.head.candidate.
    for at in range(60 * 8, 60 * (len(prices) + 1), 60):
        state, events, candles = ingest(prices, at)
        body = slices_payload(SID, build_view(at, events, candles, state))
        if "anchor" not in body["snapshots"]:
            continue
        current = body["snapshots"]["anchor"]["head"]["current_anchor_ref"]
        head = body["snapshots"]["pen"]["head"]
        if current is not None and current["kind"] == "candidate" and head["candidate"]:
            keys = ("start_time", "end_time", "direction")
            extending_only = all(current[k] == head["extending"][k] for k in keys)
            # an extending-equal candidate survives only when the head candidate is weaker
            if extending_only:
                cand = head["candidate"]
                assert abs(cand["end_price"] - cand["start_price"]) <= abs(
                    current["end_price"] - current["start_price"])
