"""WebSocket fan-out on the real klines: latency from send (and ack) to receipt, lost messages.

Every scenario runs on series that already hold real candles (``realdata.real_candles``), with
factors on (the server default), so each live candle also costs its factor fold:

- ``sub100``, ``sub1000``, ``sub5000`` (``sub2000`` in --quick): that many subscribers of one
  series holding the 4320 recorded candles;
- ``sub1000draw``: 1000 subscribers of such a series that asked for the factor overlay
  (``"draw": true``), so every fold that changes it is fanned out as a ``draw_delta`` as well;
- ``sub1000x100``: 1000 subscribers spread over 100 series (10 each), each series holding 500
  real candles (100 in --quick): 100 full histories would cost minutes of set-up and add
  nothing the single-series scenarios do not show.

Set-up of a scenario: its histories are stored through the batch endpoint (``publish_ws``
false), then the driver waits until ``/api/factor/health`` reports every series ``green`` (the
factor ledger is level with the candles), then the subscribers attach with ``since`` = the
newest stored time (a chart that loaded its history over HTTP; without it every socket would
be caught up with the stored tail). Two client processes hold the sockets (``subscribers.py``).

The driver (this process) then posts the real candles continuing each series over one
keep-alive connection at 10 candles/s per series: round ``r`` (one candle per series) starts at
``t0 + r * 100 ms``, or at once when the previous round ran late. Each post is stamped at send
and ack with ``time.monotonic()``. ``from_send`` = receipt stamp - send stamp of that candle;
``p50/p99/max`` (without a prefix) are from the ack (negative when a subscriber got the candle
before the HTTP answer reached the driver). A message is lost when a socket did not get every
posted candle of its series exactly once.

Draw figures (``sub1000draw``): each socket's ``draw_delta`` messages carry ``to_candle_time``;
a fold that changes nothing sends none, and coalesced folds cover several candles, so a delta is
matched to every posted candle time <= its ``to_candle_time`` not matched yet, and the candle's
draw latency is the delta's receipt - the candle's send (``draw_from_send_*``).
``draw_delta_from_send_*`` is each delta's own latency, from the send of the candle at its
``to_candle_time``; ``draw_candles_per_delta`` shows how many candles a delta covered on average
and ``draw_uncovered`` the posted candles no delta reached (the newest ones, when they changed
nothing). ``draw_lost`` counts deltas some socket of the series got and another did not.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import orjson

from benchmarks.client import Http, aligned_past, ingest_batches, percentile
from benchmarks.processes import Context
from benchmarks.realdata import RECORDED, real_candles
from benchmarks.subscribers import Subscribers, wait_subscribed

TARGETS = [
    ("sub1000_from_send_p99_ms", "<", 20.0),
    ("sub1000_lost", "<", 1),
    ("sub1000draw_from_send_p99_ms", "<", 50.0),
    ("sub1000draw_lost", "<", 1),
    ("sub5000_lost", "<", 1),
]
PATH = "/api/market/ingest/candle_closed"
ROUND_S = 0.1  # 10 candles/s per series


def _scenario(ctx: Context, server: Any, label: str, subscribers: int, series_count: int,
              history: int, rounds: int, draw: bool) -> dict[str, Any]:
    series = [f"bench:spot:F{label}N{k}/USDT:1m" for k in range(series_count)]
    start = aligned_past(60, history + rounds + 5)
    candles = real_candles(history + rounds, start)
    prepared = time.monotonic()
    for series_id in series:
        ingest_batches(server.port, series_id, candles[:history], publish=False)
    level = _wait_green(server, series, 300.0)
    if level is None:
        ctx.problems.append(f"{label}: factor ledgers not level 300 s after storing the history")
    setup_s = time.monotonic() - prepared
    plan: list[tuple[str, ...]] = [(series[i % series_count],) for i in range(subscribers)]
    cpu0 = server.cpu_s()
    rss0 = server.memory_kb()["VmRSS"]
    clients = Subscribers(server.port, plan, processes=2, draw=draw,
                          since=candles[history - 1]["candle_time"])
    try:
        registered = wait_subscribed(server, set(series), subscribers)
        rss1 = server.memory_kb()["VmRSS"]
        acks, rate = _drive(server.port, series, candles[history:])
        time.sleep(0.5 + subscribers / 5000)
        logs, client_cpu = clients.stop()
    except BaseException:
        clients.kill()
        raise
    figures = {"subscribed": registered, "history_candles": history, "setup_s": round(setup_s, 1),
               "candles_per_s_per_series": rate, **_score(logs, acks, rounds)}
    if draw:
        figures.update(_score_draw(logs, acks))
    figures["server_cpu_s"] = round(server.cpu_s() - cpu0, 2)
    figures["client_cpu_s"] = round(client_cpu, 2)
    figures["server_rss_per_socket_kib"] = round((rss1 - rss0) / subscribers, 1)
    return figures


def _wait_green(server: Any, series: list[str], timeout_s: float) -> float | None:
    """Wait until every series' factor health is green; return the seconds (None: timeout)."""
    started = time.monotonic()
    pending = list(series)
    while pending and time.monotonic() - started < timeout_s:
        health = server.get_json(f"/api/factor/health?series_id={pending[0]}")
        if health.get("status") == "green":
            pending.pop(0)
        else:
            time.sleep(0.05)
    return None if pending else time.monotonic() - started


def _drive(port: int, series: list[str], candles: list[dict[str, Any]]
           ) -> tuple[dict[tuple[str, int], tuple[float, float]], float]:
    """Post ``candles`` (one per series per round, one round per ``ROUND_S``); return the stamps."""
    client = Http(port)
    acks = {}
    clock = time.monotonic
    bodies = [[orjson.dumps({"series_id": sid, "candle": c}) for sid in series] for c in candles]
    t0 = clock()
    try:
        for r, (candle, round_bodies) in enumerate(zip(candles, bodies)):
            due = t0 + r * ROUND_S
            if due > clock():
                time.sleep(due - clock())
            t = candle["candle_time"]
            for series_id, body in zip(series, round_bodies):
                sent = clock()
                status, data = client.request("POST", PATH, body)
                acked = clock()
                if status != 200:
                    raise RuntimeError(f"ingest -> {status}: {data[:200]!r}")
                acks[(series_id, t)] = (sent, acked)
        elapsed = clock() - t0
    finally:
        client.close()
    rate = round((len(candles) - 1) / elapsed, 1) if len(candles) > 1 and elapsed > 0 else 0.0
    return acks, rate


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 2)


def _score(logs: list[Any], acks: dict[tuple[str, int], tuple[float, float]], rounds: int) -> dict[str, Any]:
    from_ack, from_send = [], []
    lost = duplicates = dropped = 0
    for log in logs:
        seen: set[int] = set()
        for series_id, t, received_at in log.closed_candles:
            stamp = acks.get((series_id, t))
            if stamp is None:
                continue
            if t in seen:
                duplicates += 1
                continue
            seen.add(t)
            from_send.append(received_at - stamp[0])
            from_ack.append(received_at - stamp[1])
        lost += rounds - len(seen)
        dropped += int(log.closed_by_server) + log.errors.get("slow_consumer", 0)
    from_ack.sort()
    from_send.sort()
    return {
        "messages": len(from_ack), "lost": lost, "duplicates": duplicates, "dropped": dropped,
        "p50_ms": _ms(from_ack, 0.5), "p99_ms": _ms(from_ack, 0.99),
        "max_ms": round(from_ack[-1] * 1000, 2) if from_ack else 0.0,
        "from_send_p50_ms": _ms(from_send, 0.5), "from_send_p99_ms": _ms(from_send, 0.99),
        "from_send_max_ms": round(from_send[-1] * 1000, 2) if from_send else 0.0,
    }


def _score_draw(logs: list[Any], acks: dict[tuple[str, int], tuple[float, float]]) -> dict[str, Any]:
    posted: dict[str, list[int]] = {}
    for series_id, t in sorted(acks):
        posted.setdefault(series_id, []).append(t)
    per_candle, per_delta = [], []
    deltas = covered = uncovered = 0
    delta_bytes = 0
    union: dict[str, set[int]] = {}
    for log in logs:
        delta_bytes += log.draw_bytes
        deltas += len(log.draw_deltas)
        matched: dict[str, int] = {}  # per series: index of the first posted time not matched
        for series_id, to_time, received_at in log.draw_deltas:
            union.setdefault(series_id, set()).add(to_time)
            times = posted.get(series_id, [])
            stamp = acks.get((series_id, to_time))
            if stamp is not None:
                per_delta.append(received_at - stamp[0])
            first = matched.get(series_id, 0)
            last = bisect.bisect_right(times, to_time)
            for t in times[first:last]:
                per_candle.append(received_at - acks[(series_id, t)][0])
            covered += max(0, last - first)
            matched[series_id] = max(first, last)
        for series_id in log.series:
            uncovered += len(posted.get(series_id, [])) - matched.get(series_id, 0)
    lost = 0
    for log in logs:
        got = {(sid, t) for sid, t, _ in log.draw_deltas}
        lost += sum(1 for sid in log.series for t in union.get(sid, ()) if (sid, t) not in got)
    per_candle.sort()
    per_delta.sort()
    return {
        "draw_deltas": deltas, "draw_lost": lost,
        "draw_mean_bytes": round(delta_bytes / deltas) if deltas else 0,
        "draw_candles_per_delta": round(covered / deltas, 2) if deltas else 0.0,
        "draw_uncovered": uncovered,
        "draw_from_send_p50_ms": _ms(per_candle, 0.5), "draw_from_send_p99_ms": _ms(per_candle, 0.99),
        "draw_from_send_max_ms": round(per_candle[-1] * 1000, 2) if per_candle else 0.0,
        "draw_delta_from_send_p50_ms": _ms(per_delta, 0.5),
        "draw_delta_from_send_p99_ms": _ms(per_delta, 0.99),
    }


def run(ctx: Context) -> dict[str, Any]:
    """Return latency and loss figures of every scenario."""
    # --quick (the CI smoke run) stops at 2000 sockets and short histories to stay fast.
    large = ("sub2000", 2000, 1) if ctx.quick else ("sub5000", 5000, 1)
    scenarios = [("sub100", 100, 1), ("sub1000", 1000, 1), ("sub1000draw", 1000, 1), large,
                 ("sub1000x100", 1000, 100)]
    rounds = {"sub100": 10, "sub1000": 10, "sub1000draw": 10, "sub2000": 10, "sub1000x100": 5} \
        if ctx.quick else {"sub100": 100, "sub1000": 100, "sub1000draw": 100, "sub5000": 40,
                           "sub1000x100": 20}
    history = {"sub1000x100": 100 if ctx.quick else 500}
    figures: dict[str, Any] = {}
    with ctx.server("fanout") as server:
        for label, subscribers, series_count in scenarios:
            result = _scenario(ctx, server, label, subscribers, series_count,
                               history.get(label, RECORDED), rounds[label],
                               draw=label.endswith("draw"))
            for key, value in result.items():
                figures[f"{label}_{key}"] = value
            if result["subscribed"] < subscribers:
                ctx.problems.append(f"{label}: only {result['subscribed']} of {subscribers} "
                                    "subscriptions were registered by the hubs")
            if result["lost"] or result["duplicates"] or result["dropped"] or result.get("draw_lost"):
                ctx.problems.append(
                    f"{label}: lost {result['lost']}, duplicated {result['duplicates']}, "
                    f"dropped {result['dropped']} messages/sockets, "
                    f"lost {result.get('draw_lost', 0)} draw_delta messages")
    return figures
