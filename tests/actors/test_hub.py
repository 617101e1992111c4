"""SubscriberHub handlers, called on an unstarted actor with an in-memory store."""

import json
import queue

from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.actors.hub import HubState, SubscriberHub
from trade_canvas.actors.subscriber import Outbox, encode
from trade_canvas.actors.messages import Broadcast, CandlesStored, PublishForming, Subscribe
from trade_canvas.candles import Candle
from trade_canvas.series import parse_series_id
from tests.fakes.store import MemoryCandleStore

S = parse_series_id("binance:spot:BTC/USDT:1m")


def c(t: int) -> Candle:
    return Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0)


def make_hub(store: MemoryCandleStore, clock=lambda: 0.0) -> SubscriberHub:
    record = ChildRecord(kind="hub", series_id=S.text, start=lambda link: None)
    return SubscriberHub(
        S, store, HubState(), ChildLink(record, None),
        catchup_limit=100, forming_interval_s=0.25, clock=clock,
    )


def drain(outbox: Outbox) -> list[dict]:
    out = []
    while True:
        try:
            frames = outbox.take(timeout=0)
        except queue.Empty:
            return out
        if frames is None:
            out.append({"closed": outbox.close_code})
            return out
        out.extend(json.loads(f.text) for f in frames)


def test_catch_up_tail_then_live_without_duplicates() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(S.text, [c(60), c(120)])
    hub = make_hub(store)
    box = Outbox(10)
    hub.on_receive(Subscribe(box, None, False))
    hub.on_receive(CandlesStored((c(120), c(180))))
    got = drain(box)
    assert [m["type"] for m in got] == ["candle_closed"] * 3
    assert [m["candle"]["candle_time"] for m in got] == [60, 120, 180]


def test_catch_up_since_is_exclusive_and_batches() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(S.text, [c(60), c(120), c(180)])
    hub = make_hub(store)
    box = Outbox(10)
    hub.on_receive(Subscribe(box, 60, True))
    [msg] = drain(box)
    assert msg["type"] == "candles_batch"
    assert [x["candle_time"] for x in msg["candles"]] == [120, 180]


def test_catch_up_reports_a_leading_gap() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(S.text, [c(300)])
    hub = make_hub(store)
    box = Outbox(10)
    hub.on_receive(Subscribe(box, 60, False))
    gap, closed = drain(box)
    assert gap == {"type": "gap", "series_id": S.text, "expected_next_time": 120, "actual_time": 300}
    assert closed["candle"]["candle_time"] == 300


def test_live_gap_and_internal_gaps() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(S.text, [c(60)])
    hub = make_hub(store)
    plain, batch = Outbox(10), Outbox(10)
    hub.on_receive(Subscribe(plain, None, False))
    hub.on_receive(Subscribe(batch, None, True))
    drain(plain), drain(batch)
    hub.on_receive(CandlesStored((c(180), c(240), c(360))))
    assert [(m["type"], m.get("expected_next_time")) for m in drain(plain)] == [
        ("gap", 120), ("candle_closed", None), ("candle_closed", None), ("gap", 300), ("candle_closed", None)
    ]
    assert [m["type"] for m in drain(batch)] == ["gap", "candles_batch"]


def test_single_candle_is_candle_closed_even_for_batch_clients() -> None:
    hub = make_hub(MemoryCandleStore())
    box = Outbox(10)
    hub.on_receive(Subscribe(box, None, True))
    hub.on_receive(CandlesStored((c(60),)))
    assert [m["type"] for m in drain(box)] == ["candle_closed"]


def test_slow_consumer_is_dropped_and_others_keep_up() -> None:
    hub = make_hub(MemoryCandleStore())
    slow, fast = Outbox(3), Outbox(100)
    hub.on_receive(Subscribe(slow, None, False))
    hub.on_receive(Subscribe(fast, None, False))
    for i in range(1, 10):
        hub.on_receive(CandlesStored((c(60 * i),)))
        drain(fast) if i % 2 else None
    got = drain(slow)
    assert got[0]["code"] == "slow_consumer" and got[-1] == {"closed": "slow_consumer"}
    assert len(hub.state.subscriptions) == 1
    hub.on_receive(CandlesStored((c(600),)))
    assert drain(fast)[-1]["candle"]["candle_time"] == 600


def test_forming_is_throttled_and_skips_sent_times() -> None:
    now = [0.0]
    hub = make_hub(MemoryCandleStore(), clock=lambda: now[0])
    box = Outbox(100)
    hub.on_receive(Subscribe(box, 60, False))
    hub.on_receive(PublishForming(c(60)))  # not newer than the cursor
    hub.on_receive(PublishForming(c(120)))
    hub.on_receive(PublishForming(c(120)))  # within the interval: dropped
    now[0] = 1.0
    hub.on_receive(PublishForming(c(120)))
    assert [m["type"] for m in drain(box)] == ["candle_forming", "candle_forming"]


def test_broadcast_reaches_everyone() -> None:
    hub = make_hub(MemoryCandleStore())
    boxes = [Outbox(10) for _ in range(3)]
    for box in boxes:
        hub.on_receive(Subscribe(box, None, False))
    hub.on_receive(Broadcast({"type": "system", "event": "x"}))
    assert all(drain(box) == [{"type": "system", "event": "x"}] for box in boxes)


def test_restarted_hub_catches_up_existing_subscribers_from_their_cursor() -> None:
    store = MemoryCandleStore()
    hub = make_hub(store)
    box = Outbox(10)
    hub.on_receive(Subscribe(box, None, False))
    hub.on_receive(CandlesStored((c(60),)))
    drain(box)
    store.upsert_candles(S.text, [c(60), c(120), c(180)])  # written while the hub was down
    record = ChildRecord(kind="hub", series_id=S.text, start=lambda link: None)
    reborn = SubscriberHub(S, store, hub.state, ChildLink(record, None),
                           catchup_limit=100, forming_interval_s=0.25)
    reborn.on_start()
    assert [m["candle"]["candle_time"] for m in drain(box)] == [120, 180]


def test_frames_are_encoded_once_and_framed_for_the_wire() -> None:
    hub = make_hub(MemoryCandleStore())
    boxes = [Outbox(10) for _ in range(3)]
    for box in boxes:
        hub.on_receive(Subscribe(box, None, False))
    hub.on_receive(CandlesStored((c(60),)))
    frames = [box.take(timeout=0)[0] for box in boxes]
    assert frames[0] is frames[1] is frames[2]
    wire = frames[0].wire()
    payload = frames[0].text.encode()
    assert wire[0] == 0x81 and wire[1] == 126 and wire[2:4] == len(payload).to_bytes(2, "big")
    assert wire[4:] == payload
    small = encode({"a": 1}).wire()
    assert small == bytes((0x81, 7)) + b'{"a":1}'
    big = encode({"x": "y" * 70000}).wire()
    assert big[1] == 127 and int.from_bytes(big[2:10], "big") == len(big) - 10
    mid = encode({"x": "y" * 300}).wire()
    assert mid[1] == 126 and int.from_bytes(mid[2:4], "big") == len(mid) - 4


def test_take_returns_everything_pending_then_none_after_close() -> None:
    box = Outbox(10)
    box.offer([encode({"n": 1})])
    box.offer([encode({"n": 2}), encode({"n": 3})])
    box.close("server_shutdown")
    assert [json.loads(f.text)["n"] for f in box.take(timeout=0)] == [1, 2, 3]
    assert box.take(timeout=0) is None
    assert box.offer([encode({"n": 4})]) is False


def test_direct_writes_skip_the_queue_and_keep_order() -> None:
    written: list[bytes] = []
    budget = [10_000]

    def direct(data: bytes) -> int:  # a socket whose kernel buffer holds ``budget`` bytes
        n = max(0, min(len(data), budget[0]))
        budget[0] -= n
        written.append(data[:n])
        return n

    box = Outbox(10)
    box.direct = direct
    first, second, third = encode({"n": 1}), encode({"n": 2}), encode({"n": 3})
    assert box.offer([first]) and box.pending() == 0  # idle connection: written at once
    budget[0] = 5  # the buffer fills mid-frame
    assert box.offer([second]) and box.pending() == 1
    assert box.offer([third]) and box.pending() == 2  # queued behind the remainder
    budget[0] = 10_000
    queued = box.take(timeout=0)
    assert b"".join(written) + b"".join(f.wire() for f in queued) == (
        first.wire() + second.wire() + third.wire()
    )
    assert box.offer([encode({"n": 4})]) and box.pending() == 1  # writer busy: queue
    box.sent()
    assert box.offer([encode({"n": 5})]) and box.pending() == 2  # backlog still goes first


class _FailingReads(MemoryCandleStore):
    """Reads of one cursor fail as SQLite does for a time beyond 64 bits."""

    def read_since(self, series_id, since, limit):
        if since >= 2**62:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return super().read_since(series_id, since, limit)


def test_a_failing_catch_up_drops_only_that_subscriber_with_an_error() -> None:
    store = _FailingReads()
    store.upsert_candles(S.text, [c(60), c(120)])
    hub = make_hub(store)
    good, bad = Outbox(10), Outbox(10)
    hub.on_receive(Subscribe(good, None, False))
    hub.on_receive(Subscribe(bad, 2**63, False))  # must not raise out of the hub
    [error] = drain(bad)
    assert (error["type"], error["code"], error["series_id"]) == ("error", "unavailable", S.text)
    assert list(hub.state.subscriptions) == [good.id]
    hub.on_receive(CandlesStored((c(180),)))
    assert [m["candle"]["candle_time"] for m in drain(good)] == [60, 120, 180]
    assert drain(bad) == []
    record = ChildRecord(kind="hub", series_id=S.text, start=lambda link: None)
    reborn = SubscriberHub(S, store, hub.state, ChildLink(record, None),
                           catchup_limit=100, forming_interval_s=0.25)
    reborn.on_start()  # the dropped subscription is never replayed
    assert drain(bad) == []


def test_pending_bytes_are_bounded_not_only_messages() -> None:
    """Issue 13: one client that stopped reading held hundreds of MB in a few big messages."""
    hub = make_hub(MemoryCandleStore())
    box, other = Outbox(1000, byte_limit=4000), Outbox(1000, byte_limit=1 << 20)
    hub.on_receive(Subscribe(box, None, True))
    hub.on_receive(Subscribe(other, None, True))
    for n in range(20):  # ~1 KB per publish, far fewer than 1000 messages
        hub.on_receive(CandlesStored(tuple(c(60 * (10 * n + i)) for i in range(1, 11))))
        if box.closed:
            break
    assert box.closed and box.close_code == "slow_consumer"
    assert box.pending_bytes() < 4000  # only the error is left to send
    got = drain(box)
    assert "4000 bytes" in got[0]["message"] and got[-1] == {"closed": "slow_consumer"}
    assert list(hub.state.subscriptions) == [other.id]
    box.discard()
    assert box.pending() == 1 and box.pending_bytes() == 0  # the close marker only


def test_writer_bytes_count_until_sent() -> None:
    box = Outbox(10, byte_limit=100)
    frame = encode({"x": "y" * 40})
    assert box.offer([frame]) and box.pending_bytes() == len(frame.wire())
    box.take(timeout=0)  # the writer holds it: still counted
    assert box.pending_bytes() == len(frame.wire()) and box.room() == 100 - len(frame.wire())
    box.sent()
    assert box.pending_bytes() == 0 and box.room() == 100


def test_a_catch_up_that_does_not_fit_is_refused_not_dropped() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(S.text, [c(60 * i) for i in range(1, 101)])
    hub = make_hub(store)
    box = Outbox(1000, byte_limit=3000)  # a 100-candle catch-up is ~6 KB
    hub.on_receive(Subscribe(box, None, True))
    [refused] = drain(box)
    assert (refused["code"], refused["series_id"]) == ("rate_limited", S.text)
    assert not box.closed and hub.state.subscriptions == {}
    hub.on_receive(Subscribe(box, 60 * 95, True))  # a smaller catch-up fits
    assert [x["candle_time"] for x in drain(box)[0]["candles"]] == [60 * i for i in range(96, 101)]


def test_subscribing_again_without_since_sends_no_second_catch_up() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(S.text, [c(60 * i) for i in range(1, 51)])
    hub = make_hub(store)
    box = Outbox(1000)
    hub.on_receive(Subscribe(box, None, True))
    assert len(drain(box)[0]["candles"]) == 50
    for _ in range(100):
        hub.on_receive(Subscribe(box, None, False))
    assert drain(box) == []
    store.upsert_candles(S.text, [c(60 * 51), c(60 * 52)])
    hub.on_receive(CandlesStored((c(60 * 51), c(60 * 52))))
    # supports_batch follows the latest subscribe; the cursor was kept
    assert [m["candle"]["candle_time"] for m in drain(box)] == [60 * 51, 60 * 52]
    hub.on_receive(Subscribe(box, 60 * 50, True))  # an explicit since re-cursors
    assert [x["candle_time"] for x in drain(box)[0]["candles"]] == [60 * 51, 60 * 52]


def test_no_catch_up_read_for_a_client_whose_buffer_is_half_full() -> None:
    store = MemoryCandleStore()
    store.upsert_candles(S.text, [c(60)])
    hub = make_hub(store)
    box = Outbox(1000, byte_limit=1000)
    box.offer([encode({"pad": "x" * 600})])
    hub.on_receive(Subscribe(box, None, True))
    assert [m.get("code") for m in drain(box)] == [None, "rate_limited"]


MONTHLY = parse_series_id("binance:spot:BTC/USDT:1M")
JAN, FEB, MAR, APR, MAY, JUN = (1_704_067_200, 1_706_745_600, 1_709_251_200, 1_711_929_600,
                                1_714_521_600, 1_717_200_000)  # 2024-01-01 .. 2024-06-01 UTC


def test_monthly_gaps_follow_the_calendar() -> None:
    """Feb -> Mar (29 days) and Jan -> Feb (31) are neighbours; a missing April is a gap."""
    store = MemoryCandleStore()
    store.upsert_candles(MONTHLY.text, [c(JAN), c(FEB), c(MAR)])
    record = ChildRecord(kind="hub", series_id=MONTHLY.text, start=lambda link: None)
    hub = SubscriberHub(MONTHLY, store, HubState(), ChildLink(record, None),
                        catchup_limit=100, forming_interval_s=0.25, clock=lambda: 0.0)
    plain, late = Outbox(10), Outbox(10)
    hub.on_receive(Subscribe(plain, JAN, False))
    assert [(m["type"], m["candle"]["candle_time"]) for m in drain(plain)] == [
        ("candle_closed", FEB), ("candle_closed", MAR)]
    hub.on_receive(Subscribe(late, 1_698_796_800 + 3600, False))  # since 2023-11-01 01:00
    gap, *closed = drain(late)
    assert gap == {"type": "gap", "series_id": MONTHLY.text, "expected_next_time": 1_701_388_800,
                   "actual_time": JAN}
    assert len(closed) == 3
    hub.on_receive(CandlesStored((c(MAY), c(JUN))))  # April never came
    assert [(m["type"], m.get("expected_next_time")) for m in drain(plain)] == [
        ("gap", APR), ("candle_closed", None), ("candle_closed", None)]
    hub.on_receive(Subscribe(Outbox(10), JUN, False))
    store.upsert_candles(MONTHLY.text, [c(JUN + 30 * 86400)])  # 2024-07-01: no gap after June
    hub.on_receive(CandlesStored((c(JUN + 30 * 86400),)))
    assert [m["type"] for m in drain(plain)] == ["candle_closed"]
