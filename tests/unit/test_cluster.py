"""Cluster decisions on a fake clock: lease fencing never overlaps a claim; hint sequences."""

from __future__ import annotations

import random

import pytest

from trade_canvas.candles import Candle
from trade_canvas.cluster import (
    HINT_PAYLOAD_MAX, BroadcastHint, DrawHint, DrawRef, FormingBatcher, FormingHint, Hint,
    LeaseKeeper, SeqFollower, Step, claim_room, decode_hint, draw_message, draw_ref,
    encode_hint, encode_hints, fair_share, from_elsewhere,
)

TICK, TTL = 0.5, 3.0


def test_keeper_fences_once_at_ttl_minus_tick_and_a_renewal_lifts_it() -> None:
    keeper = LeaseKeeper(TTL, TICK, now=0.0)
    keeper.renewed(10.0)
    assert keeper.deadline() == 12.5
    assert not keeper.fence_due(12.49)
    assert keeper.fence_due(12.5) and keeper.fenced and keeper.fenced_at == 12.5
    assert not keeper.fence_due(13.0)  # once per lapse
    assert keeper.renewed(13.0) and not keeper.fenced
    assert not keeper.renewed(13.5)
    keeper.renewed(1.0)  # a late answer never moves the deadline back
    assert keeper.deadline() == 16.0


def test_keeper_fences_at_once_when_the_lease_connection_is_lost() -> None:
    # The others may reap a node whose control session closed two ticks after its last
    # heartbeat, long before the TTL: a node that lost its connection must not wait for it.
    keeper = LeaseKeeper(TTL, TICK, now=0.0)
    keeper.renewed(10.0)
    keeper.lost()
    assert keeper.fence_due(10.2) and keeper.fenced_at == 10.2
    assert not keeper.fence_due(10.3)  # once per lapse
    assert keeper.renewed(11.0) and not keeper.fence_due(12.0)  # a renewal ends it


@pytest.mark.parametrize("wanted, alive, owned, room", [
    (30, 3, 0, 10), (30, 3, 10, 0), (31, 3, 5, 6), (1, 3, 0, 1), (0, 2, 0, 0), (5, 0, 0, 5),
])
def test_fair_share(wanted: int, alive: int, owned: int, room: int) -> None:
    assert claim_room(wanted, alive, owned) == room
    assert fair_share(wanted, alive) * max(1, alive) >= wanted


class LeaseTable:
    """The lease rows' rules (storage/leases.py) on a fake clock: renew if still ours, claim if
    expired, the new expiry counted from when the transaction reached the server."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str | None, int, float]] = {}

    def tick(self, node: str, wanted: list[str], at: float) -> dict[str, int]:
        owned = {}
        for sid in wanted:
            holder, epoch, expires = self.rows.get(sid, (None, 0, at))
            if holder == node:
                self.rows[sid] = (node, epoch, at + TTL)
                owned[sid] = epoch
            elif expires <= at:
                self.rows[sid] = (node, epoch + 1, at + TTL)
                owned[sid] = epoch + 1
        return owned


@pytest.mark.parametrize("seed", range(30))
def test_random_freezes_and_failures_never_let_two_nodes_feed_one_series(seed: int) -> None:
    rng = random.Random(seed)
    table = LeaseTable()
    series = [f"s{i}" for i in range(4)]
    names = ["a", "b", "c"]
    keepers = {n: LeaseKeeper(TTL, TICK, 0.0) for n in names}
    believed: dict[str, dict[str, int]] = {n: {} for n in names}
    frozen_until = {n: 0.0 for n in names}
    next_tick = {n: rng.uniform(0, TICK) for n in names}
    step, now = 0.01, 0.0
    claims = 0
    while now < 60.0:
        now = round(now + step, 4)
        for n in names:
            if rng.random() < 0.002:
                frozen_until[n] = now + rng.uniform(0.5, 6.0)  # GC pause, SIGSTOP, partition
            # The watchdog runs even while a tick hangs (only a frozen process stops it).
            if now >= frozen_until[n] and keepers[n].fence_due(now):
                believed[n] = {}
            if now < frozen_until[n] or now < next_tick[n]:
                continue
            next_tick[n] = now + TICK
            sent = now
            if rng.random() < 0.15:
                continue  # the transaction failed: nothing is known
            arrives = sent + rng.uniform(0.0, 0.3)  # the server's now(), later than the send
            owned = table.tick(n, series, arrives)
            answered = arrives + rng.uniform(0.0, 0.3)
            keepers[n].renewed(sent)
            if answered >= keepers[n].deadline():
                keepers[n].fence_due(answered)
                believed[n] = {}
                continue
            claims += sum(1 for sid, e in owned.items() if believed[n].get(sid) != e)
            believed[n] = owned
        for sid in series:
            feeding = [n for n in names if sid in believed[n] and now >= frozen_until[n]]
            # A frozen process does nothing, but must still not believe it owns after waking:
            # on waking the watchdog fences it before anything else.
            assert len(feeding) <= 1, (seed, now, sid, feeding)
    assert claims >= len(series)


def test_hint_payloads_round_trip_and_big_batches_leave_the_candles_out() -> None:
    candles = tuple(Candle(60 * i, 1.5, 2.25, 0.5, 1.75, 10.125) for i in range(3))
    hint = Hint("c", "binance:spot:A|B/USDT:1m", 42, candles, "node-1")
    assert decode_hint(encode_hint(hint)) == hint
    big = Hint("c", "x", 1, tuple(Candle(60 * i, 1.5, 2.5, 0.5, 1.5, 9.75) for i in range(500)))
    text = encode_hint(big)
    assert len(text.encode()) < 8000 and decode_hint(text) == Hint("c", "x", 1, None)
    assert decode_hint("not json") is None and decode_hint('["c", 1, 2, "", "-"]') is None


def test_relayed_hints_round_trip_and_only_other_nodes_take_them() -> None:
    candle = Candle(120, 1.5, 2.25, 0.5, 1.75, 10.125)
    hints = [
        FormingHint("n1", (("binance:spot:A/B:1m", candle), ("binance:spot:C/D:1h", candle))),
        BroadcastHint("binance:spot:A/B:1m", "n1", {"type": "system", "event": "factor.rebuild",
                                                   "data": {"candles": 3}}),
        DrawHint("binance:spot:A/B:1m", "n1", {"type": "draw_delta", "from_version_id": 3,
                                               "removed_ids": ["a"], "next_cursor": {}}),
        DrawHint("binance:spot:A/B:1m", "n1", ref=DrawRef(3, 9, 120, ("a", "b"), False)),
        DrawHint("binance:spot:A/B:1m", "n1", ref=DrawRef(3, 9, 120, None, True)),
    ]
    for hint in hints:
        [payload] = encode_hints(hint)
        assert decode_hint(payload) == hint
        assert not from_elsewhere(hint, "n1") and from_elsewhere(hint, "n2")
    closed = Hint("c", "x", 4, (candle,), "n1")
    assert encode_hints(closed) == [encode_hint(closed)]
    assert from_elsewhere(closed, "n1")  # own writes: the runtime decides
    assert decode_hint('["d","x",0,"n",["1",2,3,null,true]]') is None
    assert decode_hint('["b","x",0,"n",[1]]') is None
    assert decode_hint('["f","",0,"n",[["x",1]]]') is None
    assert encode_hints(BroadcastHint("x", "n", {"text": "y" * HINT_PAYLOAD_MAX})) == []
    many = tuple((f"binance:futures:S{i}/USDT:1m", candle) for i in range(300))
    payloads = encode_hints(FormingHint("n1", many))
    assert len(payloads) > 1 and all(len(p) <= HINT_PAYLOAD_MAX for p in payloads)
    parts = [decode_hint(p) for p in payloads]
    assert tuple(pair for part in parts for pair in part.candles) == many  # type: ignore[union-attr]


def delta(from_version: int, versions: list[int], removed: list[str], to_time: int = 600) -> dict:
    patch = [{"version_id": v, "instruction_id": f"pen:{v}", "kind": "polyline",
              "visible_time": to_time, "definition": {"points": [[to_time, 1.5]] * 40}}
             for v in versions]
    return {"type": "draw_delta", "schema_version": 1, "series_id": "s",
            "to_candle_id": f"s:{to_time}", "to_candle_time": to_time,
            "instruction_catalog_patch": patch, "series_points": {},
            "next_cursor": {"version_id": max(versions, default=from_version), "point_time": None},
            "from_version_id": from_version, "removed_ids": removed}


def test_a_draw_delta_goes_inline_when_it_fits_else_as_a_reference() -> None:
    small = delta(4, [5, 6], ["pen:1"])
    [payload] = encode_hints(DrawHint("s", "n", small))
    assert decode_hint(payload) == DrawHint("s", "n", small)
    big = delta(4, list(range(5, 200)), ["pen:1", "pen:2"])
    [payload] = encode_hints(DrawHint("s", "n", big))
    assert len(payload) <= HINT_PAYLOAD_MAX
    assert decode_hint(payload) == DrawHint("s", "n", ref=DrawRef(4, 199, 600, ("pen:1", "pen:2"),
                                                                   False))
    many = delta(4, list(range(5, 200)), [f"pivot.minor:{i}:support:5" for i in range(400)])
    many["active_ids"] = ["pen:5"]
    [payload] = encode_hints(DrawHint("s", "n", many))
    assert decode_hint(payload) == DrawHint("s", "n", ref=DrawRef(4, 199, 600, None, True))


def test_a_rebuilt_draw_delta_ends_at_the_reference_and_is_lost_when_the_store_cannot_say() -> None:
    original = delta(4, [5, 6, 7], ["pen:1"])
    ref = draw_ref(original)
    # the GET /api/draw/delta body read later: versions of later folds are in it too
    body = {key: value for key, value in delta(4, [5, 6, 7, 8, 9], []).items()
            if key not in ("type", "from_version_id", "removed_ids")}
    body["active_ids"] = ["pen:5", "pen:9"]
    assert draw_message(body, ref) == original
    assert draw_message({**body, "to_candle_time": 660}, ref) is None  # another candle
    cut = {**body, "instruction_catalog_patch": body["instruction_catalog_patch"][:2]}
    assert draw_message(cut, ref) is None  # versions 5..7 are not all there (cut, or cleared)
    whole = draw_message(body, DrawRef(4, 7, 600, None, True))
    assert whole is not None and whole["active_ids"] == ["pen:5", "pen:9"]
    assert whole["removed_ids"] == [] and whole["next_cursor"]["version_id"] == 7
    only_removals = delta(7, [], ["pen:5"])
    assert draw_message({**body, "instruction_catalog_patch": []},
                        draw_ref(only_removals)) == only_removals


@pytest.mark.parametrize("seed", range(10))
def test_forming_batches_carry_the_newest_candle_per_series_in_payloads_that_fit(seed: int) -> None:
    rng = random.Random(seed)
    batcher = FormingBatcher(0.25)
    assert batcher.due() is None
    now, waiting, hints = 100.0, {}, 0
    for _ in range(3000):
        sid = f"binance:{rng.choice(['spot', 'futures'])}:S{rng.randrange(400)}/USDT:1m"
        candle = Candle(60 * rng.randrange(1, 4), rng.random(), 2.0, 0.5, rng.random(), 1.0)
        batcher.offer(sid, candle)
        if sid not in waiting or candle.candle_time >= waiting[sid].candle_time:
            waiting[sid] = candle  # an older candle never replaces a newer one
        now += rng.random() * 0.01
        due = batcher.due()
        assert due is not None
        if due > now:
            continue
        sent_before = batcher.last_sent
        items = batcher.take(now)
        assert now - sent_before >= 0.25  # at most one hint per interval
        got = {}
        for payload in encode_hints(FormingHint("n1", tuple(items))):
            assert len(payload.encode()) <= HINT_PAYLOAD_MAX
            hint = decode_hint(payload)
            assert isinstance(hint, FormingHint)
            got.update(hint.candles)
        assert got == waiting  # every series offered since the last hint, its newest candle
        waiting, hints = {}, hints + 1
    assert hints > 50 and dict(batcher.take(now)) == waiting
    assert batcher.due() is None


@pytest.mark.parametrize("seed", range(40))
def test_follower_under_drops_duplicates_and_reorders_delivers_the_store_order(seed: int) -> None:
    rng = random.Random(seed)
    log: list[tuple[int, list[int]]] = []  # the store: (seq, candle times) per commit
    t = 0
    for seq in range(1, 80):
        n = rng.choice([1, 1, 1, 3])
        log.append((seq, [t + 60 * k for k in range(n)]))
        t += 60 * n
    hints = [(seq, times, rng.random() < 0.9) for seq, times in log]  # 10 % not inline
    perturbed = []
    for h in hints:
        roll = rng.random()
        if roll < 0.1:
            continue  # lost
        perturbed.append(h)
        if roll < 0.2:
            perturbed.append(h)  # duplicated
    for i in range(len(perturbed) - 1):
        if rng.random() < 0.1:
            perturbed[i], perturbed[i + 1] = perturbed[i + 1], perturbed[i]
    follower = SeqFollower()
    cursor: int | None = None
    sent: list[int] = []

    def deliver(times: list[int]) -> None:  # the hub: nothing at or below the cursor
        nonlocal cursor
        fresh = [x for x in times if cursor is None or x > cursor]
        sent.extend(fresh)
        if fresh:
            cursor = fresh[-1]

    def resync(upto: int) -> None:  # read the store after the cursor
        deliver([x for seq, times in log if seq <= upto for x in times])
        follower.resynced(upto)

    for seq, times, inline in perturbed:
        step = follower.step(seq, inline)
        if step is Step.DELIVER:
            deliver(times)
        elif step is Step.RESYNC:
            resync(seq)
    resync(log[-1][0])  # the periodic position check
    everything = [x for _, times in log for x in times]
    assert sent == everything
