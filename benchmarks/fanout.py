"""WebSocket fan-out: latency from ingest acknowledgement to receipt, and lost messages.

Scenarios: 100, 1000 and 5000 subscribers on one series, and 1000 spread over 100 series. Two
client processes hold the sockets (see ``subscribers.py``); the driver (this process) posts one
closed candle per series per round over a keep-alive connection, stamping send and ack with
``time.monotonic()``, and waits between rounds so each round is measured on its own, not the
queue of the previous one. Latency = receipt stamp - ack stamp of that candle (negative when a
subscriber got the candle before the HTTP answer reached the driver). A message is lost when a
socket did not get every candle of its series exactly once.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from benchmarks.client import Http, aligned_past, candle, percentile
from benchmarks.processes import Context
from benchmarks.subscribers import Subscribers, wait_subscribed

TARGETS = [
    ("sub1000_p99_ms", "<", 20.0),
    ("sub5000_lost", "<", 1),
]
PATH = "/api/market/ingest/candle_closed"


def _scenario(server: Any, label: str, subscribers: int, series_count: int, rounds: int) -> dict[str, Any]:
    series = [f"bench:spot:F{label}N{k}/USDT:1m" for k in range(series_count)]
    plan = [(series[i % series_count],) for i in range(subscribers)]
    cpu0 = server.cpu_s()
    rss0 = server.memory_kb()["VmRSS"]
    clients = Subscribers(server.port, plan, processes=2)
    try:
        registered = wait_subscribed(server, set(series), subscribers)
        rss1 = server.memory_kb()["VmRSS"]
        acks = _drive(server.port, series, rounds, pause_s=max(0.02, subscribers * 50e-6))
        time.sleep(0.5 + subscribers / 5000)
        logs, client_cpu = clients.stop()
    except BaseException:
        clients.kill()
        raise
    figures = {"subscribed": registered, **_score(logs, acks, rounds)}
    figures["server_cpu_s"] = round(server.cpu_s() - cpu0, 2)
    figures["client_cpu_s"] = round(client_cpu, 2)
    figures["server_rss_per_socket_kib"] = round((rss1 - rss0) / subscribers, 1)
    return figures


def _drive(port: int, series: list[str], rounds: int, pause_s: float) -> dict[tuple[str, int], tuple[float, float]]:
    client = Http(port)
    start = aligned_past(60, rounds + 5)
    acks = {}
    clock = time.monotonic
    try:
        for r in range(rounds):
            t = start + 60 * r
            for series_id in series:
                body = orjson.dumps({"series_id": series_id, "candle": candle(t)})
                sent = clock()
                status, data = client.request("POST", PATH, body)
                acked = clock()
                if status != 200:
                    raise RuntimeError(f"ingest -> {status}: {data[:200]!r}")
                acks[(series_id, t)] = (sent, acked)
            time.sleep(pause_s)
    finally:
        client.close()
    return acks


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
    ms = lambda values, q: round(percentile(values, q) * 1000, 2)  # noqa: E731
    return {
        "messages": len(from_ack), "lost": lost, "duplicates": duplicates, "dropped": dropped,
        "p50_ms": ms(from_ack, 0.5), "p99_ms": ms(from_ack, 0.99),
        "max_ms": round(from_ack[-1] * 1000, 2) if from_ack else 0.0,
        "from_send_p50_ms": ms(from_send, 0.5), "from_send_p99_ms": ms(from_send, 0.99),
    }


def run(ctx: Context) -> dict[str, Any]:
    """Return latency and loss figures of every scenario."""
    # --quick (the CI smoke run) stops at 2000 sockets to stay well under a minute.
    large = ("sub2000", 2000, 1) if ctx.quick else ("sub5000", 5000, 1)
    scenarios = [("sub100", 100, 1), ("sub1000", 1000, 1), large, ("sub1000x100", 1000, 100)]
    rounds = {"sub100": 20, "sub1000": 20, "sub2000": 10, "sub1000x100": 5} if ctx.quick else \
        {"sub100": 100, "sub1000": 100, "sub5000": 40, "sub1000x100": 20}
    figures: dict[str, Any] = {}
    with ctx.server("fanout") as server:
        for label, subscribers, series_count in scenarios:
            result = _scenario(server, label, subscribers, series_count, rounds[label])
            for key, value in result.items():
                figures[f"{label}_{key}"] = value
            if result["subscribed"] < subscribers:
                ctx.problems.append(f"{label}: only {result['subscribed']} of {subscribers} "
                                    "subscriptions were registered by the hubs")
            if result["lost"] or result["duplicates"] or result["dropped"]:
                ctx.problems.append(
                    f"{label}: lost {result['lost']}, duplicated {result['duplicates']}, "
                    f"dropped {result['dropped']} messages/sockets")
    return figures
