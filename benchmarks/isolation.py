"""Isolation: one series' factor catch-up must not delay another series' fan-out.

Series A holds 2000 real candles (1000 in --quick) and its factor ledger is level (``green``);
100 subscribers follow it (``since`` = its newest candle, so no catch-up of their own). A driver
process posts the real candles continuing A at 20/s (one every 50 ms), stamping each post at
send with ``time.monotonic()``. After 2 s of baseline this process posts ONE batch of 5000 real
candles (2000 in --quick) to a new series B with ``publish_ws`` true; B's factor actor then
folds them in chunks (its catch-up) while A's candles keep coming. This process polls
``/api/factor/health?series_id=B`` every 25 ms until ``green`` (B's ledger level), and the
driver goes on for 2 s more.

One catch-up of 5000 candles takes well under a second here, so only a handful of A's candles
fall inside it: the trial is repeated on fresh series B0, B1, ... (10 trials), each batch sent
1 s after the previous B turned green; the last is followed by the 2 s. --quick: 2 trials of
2000 candles, 1 s of baseline, 0.5 s between trials and 1 s at the end.

A's receipts (subscriber stamp - send stamp) are split by the send time of their candle:

- ``baseline``: from 0.5 s after the driver started until the first batch is sent;
- ``batch_request``: while a B batch request is in flight (its store write, one request);
- ``during_catchup``: from a B batch's acknowledgement until that B's health is green;
- ``after``: from a B's green until the next batch (1 s), and the final 2 s.

``catchup_s`` is the mean time from a B batch's send to green (``catchup_max_s`` the longest).
A lost message (a subscriber missing one of A's candles, or getting it twice) is a problem.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import orjson

from benchmarks.client import Http, aligned_past, ingest_batches, percentile
from benchmarks.processes import Context
from benchmarks.realdata import real_candles
from benchmarks.subscribers import Subscribers, wait_subscribed

TARGETS = [("during_catchup_p99_ms", "<", 20.0)]
SERIES_A = "bench:spot:ISOA/USDT:1m"
SERIES_B = "bench:spot:ISOB{}/USDT:1m"
PATH = "/api/market/ingest/candle_closed"
INTERVAL_S = 0.05  # 20 candles/s to A
SUBSCRIBERS = 100
BASELINE_S = 2.0
AFTER_S = 2.0
GAP_S = 1.0  # between one B turning green and the next B batch
MAX_LIVE = 4000  # A candles prepared for the driver: 200 s at 20/s


def _drive(port: int, candles: list[dict[str, Any]], pipe: Any) -> None:
    """Post A's candles at 20/s until told to stop; send back ``{time: (sent, acked)}``."""
    client = Http(port)
    bodies = [(c["candle_time"], orjson.dumps({"series_id": SERIES_A, "candle": c})) for c in candles]
    clock = time.monotonic
    stamps: dict[int, tuple[float, float]] = {}
    error = None
    t0 = clock()
    pipe.send(("started", t0))
    try:
        for i, (t, body) in enumerate(bodies):
            if pipe.poll():
                break
            due = t0 + i * INTERVAL_S
            if due > clock():
                time.sleep(due - clock())
            sent = clock()
            status, data = client.request("POST", PATH, body)
            if status != 200:
                raise RuntimeError(f"ingest A -> {status}: {data[:200]!r}")
            stamps[t] = (sent, clock())
        else:
            error = "driver ran out of candles before it was told to stop"
    except Exception as exc:  # noqa: BLE001  reported to the benchmark
        error = repr(exc)
    finally:
        client.close()
    if error is None:
        pipe.recv()  # the stop request
    pipe.send(("done", {"stamps": stamps, "error": error}))


def _wait_green(client: Http, series_id: str, timeout_s: float, poll_s: float = 0.025) -> float | None:
    """Return the monotonic time the series' factor health turned green (None: timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get(f"/api/factor/health?series_id={series_id}").get("status") == "green":
            return time.monotonic()
        time.sleep(poll_s)
    return None


def run(ctx: Context) -> dict[str, Any]:
    """Return A's latency before, during and after B's factor catch-up."""
    history_a, batch_b, trials = (1000, 2000, 2) if ctx.quick else (2000, 5000, 10)
    baseline_s, gap_s, after_s = (1.0, 0.5, 1.0) if ctx.quick else (BASELINE_S, GAP_S, AFTER_S)
    start_a = aligned_past(60, history_a + MAX_LIVE + 5)
    candles_a = real_candles(history_a + MAX_LIVE, start_a)
    candles_b = real_candles(batch_b, aligned_past(60, batch_b + 5))
    bodies_b = [orjson.dumps({"series_id": SERIES_B.format(k), "candles": candles_b,
                              "publish_ws": True}) for k in range(trials)]
    windows: dict[str, list[tuple[float, float]]] = {
        "baseline": [], "batch_request": [], "during_catchup": [], "after": []}
    catchups = []
    mp = multiprocessing.get_context("fork")
    with ctx.server("isolation") as server:
        ingest_batches(server.port, SERIES_A, candles_a[:history_a], publish=False)
        client = Http(server.port)
        try:
            if _wait_green(client, SERIES_A, 120.0) is None:
                raise RuntimeError("series A's factor ledger not level after 120 s")
            subs = Subscribers(server.port, [(SERIES_A,)] * SUBSCRIBERS, processes=1,
                               since=candles_a[history_a - 1]["candle_time"])
            try:
                registered = wait_subscribed(server, {SERIES_A}, SUBSCRIBERS)
                parent, child = mp.Pipe()
                driver = mp.Process(target=_drive, args=(server.port, candles_a[history_a:], child),
                                    daemon=True)
                cpu0 = server.cpu_s()
                driver.start()
                _, t0 = parent.recv()
                time.sleep(baseline_s)
                windows["baseline"].append((t0 + 0.5, time.monotonic()))
                green = 0.0
                for k, body_b in enumerate(bodies_b):
                    if k:
                        time.sleep(gap_s)
                        windows["after"].append((green, time.monotonic()))
                    b_sent = time.monotonic()
                    status, data = client.request(
                        "POST", "/api/market/ingest/candles_closed_batch", body_b)
                    b_acked = time.monotonic()
                    if status != 200:
                        raise RuntimeError(f"batch B{k} -> {status}: {data[:200]!r}")
                    found = _wait_green(client, SERIES_B.format(k), 300.0)
                    if found is None:
                        raise RuntimeError(f"series B{k}'s factor catch-up not done after 300 s")
                    green = found
                    windows["batch_request"].append((b_sent, b_acked))
                    windows["during_catchup"].append((b_acked, green))
                    catchups.append(green - b_sent)
                time.sleep(after_s)
                windows["after"].append((green, time.monotonic()))
                parent.send("stop")
                if not parent.poll(60):
                    raise RuntimeError("driver did not report")
                _, result = parent.recv()
                driver.join(timeout=10)
                cpu = server.cpu_s() - cpu0
                time.sleep(0.5)
                logs, _ = subs.stop()
            except BaseException:
                subs.kill()
                raise
        finally:
            client.close()
    if result["error"]:
        raise RuntimeError(f"driver failed: {result['error']}")
    stamps = result["stamps"]
    latencies: dict[str, list[float]] = {name: [] for name in windows}
    lost = duplicates = 0
    for log in logs:
        seen: set[int] = set()
        for series_id, t, received_at in log.closed_candles:
            stamp = stamps.get(t)
            if series_id != SERIES_A or stamp is None:
                continue
            if t in seen:
                duplicates += 1
                continue
            seen.add(t)
            for name, spans in windows.items():
                if any(lo <= stamp[0] < hi for lo, hi in spans):
                    latencies[name].append(received_at - stamp[0])
        lost += len(stamps) - len(seen)
    if lost or duplicates or registered < SUBSCRIBERS:
        ctx.problems.append(f"isolation: {registered} of {SUBSCRIBERS} subscribed, lost {lost}, "
                            f"duplicated {duplicates} messages of series A")
    figures: dict[str, Any] = {
        "subscribers": registered, "a_history_candles": history_a, "b_batch_candles": batch_b,
        "b_trials": trials, "a_candles_posted": len(stamps),
        "catchup_s": round(sum(catchups) / len(catchups), 2),
        "catchup_max_s": round(max(catchups), 2),
        "catchup_candles_per_s": round(batch_b * len(catchups) / sum(catchups)),
        "batch_request_ms": round(sum(hi - lo for lo, hi in windows["batch_request"])
                                  / trials * 1000, 1),
        "lost": lost, "duplicates": duplicates,
    }
    for name, values in latencies.items():
        values.sort()
        figures[f"{name}_a_candles"] = len(values) // max(1, registered)
        figures[f"{name}_p50_ms"] = round(percentile(values, 0.5) * 1000, 2)
        figures[f"{name}_p99_ms"] = round(percentile(values, 0.99) * 1000, 2)
        figures[f"{name}_max_ms"] = round(values[-1] * 1000, 2) if values else 0.0
    figures["server_cpu_s"] = round(cpu, 2)
    return figures
