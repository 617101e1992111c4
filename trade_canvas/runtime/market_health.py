"""Market health reads: the chart's K-line lamp, the debug tab's series health, ingest state.

The lamp (``GET /api/market/health``) compares the stored head with the newest fully closed
bucket and reports the series' latest history fill, taken from its feed actor's status record
(the feed fills the tail over REST when it starts or reconnects, and every hole before a frame).
Reads only: nothing here asks an actor or writes.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Iterable

from trade_canvas.actors.plumbing import ChildRecord
from trade_canvas.series import SeriesId, Timeframe, expected_latest_closed_time, parse_timeframe
from trade_canvas.storage import CandleStore

# A bucket that closed this recently counts as up to date: the exchange's closed frame and our
# write take a moment, and the lamp should not flash red at every close.
GRACE_SECONDS = 5
# The debug tab's gap scan reads at most this many of the newest candles (the original scanned
# every stored candle on every call).
GAP_SCAN_CANDLES = 20_000
IDLE_FILL: dict[str, Any] = {
    "state": "idle", "started_at": None, "updated_at": None, "reason": None, "note": None,
    "error": None, "start_missing_seconds": 0,
}


def kline_health(
    store: CandleStore, series: SeriesId, now: int, fill: dict[str, Any] | None, recent_s: int
) -> dict[str, Any]:
    """Return the ``GET /api/market/health`` body (the chart's K-line lamp)."""
    tf = series.timeframe
    expected = expected_latest_closed_time(now, tf)
    head = store.head_time(series.text)
    lag = missing = candles = None
    if head is not None:
        lag = max(0, now - head)
        missing = max(0, expected - head)
        behind = tf.steps_between(head, expected)
        if missing and now - tf.next_open(expected) < GRACE_SECONDS and behind <= 1:
            missing = 0  # only the bucket that closed a moment ago is missing
        candles = behind if missing else 0
    # The fill record counts seconds: its candle figures use a month's nominal 31 days.
    block = backfill_block(fill, missing, tf.seconds, now, recent_s)
    status, reason = lamp_status(head, expected, missing, block)
    return {
        "series_id": series.text, "timeframe_seconds": tf.seconds, "now_time": now,
        "expected_latest_closed_time": expected, "head_time": head, "lag_seconds": lag,
        "missing_seconds": missing, "missing_candles": candles,
        "status": status, "status_reason": reason, "backfill": block,
    }


def backfill_block(
    fill: dict[str, Any] | None, missing: int | None, tf: int, now: int, recent_s: int
) -> dict[str, Any]:
    """Return the lamp's ``backfill`` block from a feed's fill record (None: never filled)."""
    record = fill or IDLE_FILL
    current = missing or 0
    start = int(record.get("start_missing_seconds") or 0)
    if start > 0:
        pct: float | None = min(100.0, max(0.0, (start - current) / start * 100.0))
    else:
        pct = 100.0 if current == 0 else None
    updated = record.get("updated_at")
    return {
        "state": record["state"],
        "progress_pct": pct if fill is not None else 100.0,
        "started_at": record.get("started_at"),
        "updated_at": updated,
        "reason": record.get("reason"),
        "note": record.get("note"),
        "error": record.get("error"),
        "recent": updated is not None and now - int(updated) <= recent_s,
        "start_missing_seconds": start,
        "start_missing_candles": math.ceil(start / tf),
        "current_missing_seconds": current if fill is not None else 0,
        "current_missing_candles": math.ceil(current / tf) if fill is not None else 0,
    }


def lamp_status(
    head: int | None, expected: int, missing: int | None, block: dict[str, Any]
) -> tuple[str, str]:
    """Return ``(status, status_reason)``: the first rule of the original's table that holds."""
    if head is None:
        return "red", "missing_head"
    if head > expected:
        return "yellow", "head_ahead_of_closed_window"
    if missing == 0:
        return "green", "up_to_date"
    if block["state"] == "running":
        return "yellow", "backfill_running"
    if block["state"] == "succeeded" and block["recent"]:
        return "yellow", "backfill_recent"
    return "red", "lagging_no_recent_backfill"


def series_health(
    store: CandleStore, series: SeriesId, now: int, max_gaps: int, base_buckets: int
) -> dict[str, Any]:
    """Return the ``GET /api/market/debug/series_health`` body."""
    sid, tf = series.text, series.timeframe
    times = [row[0] for row in store.read_rows(sid, None, GAP_SCAN_CANDLES)]
    first = store.read_rows(sid, -1, 1)
    gaps = find_gaps(times, tf)
    head = times[-1] if times else None
    base = f"{series.exchange}:{series.market}:{series.symbol}:1m"
    return {
        "series_id": sid, "timeframe_seconds": tf.seconds, "now_time": now,
        "first_time": first[0][0] if first else None, "head_time": head,
        "lag_seconds": None if head is None else max(0, now - head),
        "candle_count": store.count(sid), "gap_count": len(gaps),
        "max_gap_seconds": max((g["delta_seconds"] for g in gaps), default=None),
        "recent_gaps": gaps[::-1][:max_gaps],
        "gap_scan_candles": len(times),
        "base_series_id": base,
        "base_bucket_completeness": _completeness(store, base, tf, base_buckets),
    }


def find_gaps(times: Iterable[int], tf: Timeframe) -> list[dict[str, int]]:
    """Return every step between consecutive stored times wider than one candle, oldest first."""
    gaps: list[dict[str, int]] = []
    previous: int | None = None
    for t in times:
        if previous is not None and t > tf.next_open(previous):
            gaps.append({"prev_time": previous, "next_time": t, "delta_seconds": t - previous,
                         "missing_candles": tf.steps_between(previous, t) - 1})
        previous = t
    return gaps


def _completeness(
    store: CandleStore, base: str, tf: Timeframe, buckets: int
) -> list[dict[str, int]]:
    base_head = store.head_time(base)
    if tf.seconds <= 60 or base_head is None:
        return []
    minute = parse_timeframe("1m")
    last = tf.align(base_head)
    first = tf.shift(last, 1 - buckets)
    # Sorted 1m open times (all on minute boundaries): a bucket's count is two bisections.
    present = [c.candle_time for c in store.read_range(base, first, tf.next_open(last) - 1)]
    rows = []
    for k in range(buckets):
        open_time = tf.shift(first, k)
        close_time = tf.next_open(open_time)
        expected = (close_time - open_time) // minute.seconds
        actual = (bisect.bisect_left(present, close_time)
                  - bisect.bisect_left(present, open_time))
        rows.append({"bucket_open_time": open_time, "expected_minutes": expected,
                     "actual_minutes": actual, "missing_minutes": expected - actual})
    return rows


def ingest_state(
    records: Iterable[ChildRecord], whitelist: Iterable[str], settings: Any
) -> dict[str, Any]:
    """Return the ``GET /api/market/debug/ingest_state`` body from the feeds' status records."""
    jobs = []
    for record in records:
        if record.kind != "feed" or record.series_id is None:
            continue
        view = record.snapshot()
        jobs.append({
            "series_id": record.series_id, "source": "binance_ws",
            "refcount": -1 if view.get("pinned") else view.get("refcount", 0),
            "last_zero_at": view.get("idle_since"), "started_at": record.started_at,
            "crashes": record.restarts, "last_crash_at": record.last_error_at,
            "running": view["state"] == "running", "guardrail": None,
        })
    return {
        "jobs": sorted(jobs, key=lambda job: job["series_id"]),
        "whitelist_series_ids": list(whitelist),
        "ondemand_max_jobs": settings.ondemand_max_jobs,
        "whitelist_ingest_enabled": settings.enable_whitelist_ingest,
        "ingest_role_guard_enabled": False, "ingest_role": "hybrid",
        "ingest_jobs_enabled": settings.enable_whitelist_ingest or settings.enable_ondemand_ingest,
        "loop_guardrail_enabled": False,
    }


def metrics(
    records: Iterable[ChildRecord], connections: int, subscriptions: int, now_ms: int
) -> dict[str, Any]:
    """Return the ``GET /api/market/debug/metrics`` body from the counters actors already keep.

    Keys follow the original's ``name{label=value,...}`` form; all values are floats.
    """
    counters: dict[str, float] = {}
    for record in records:
        view = record.snapshot()
        kind = record.kind.split(":")[0]
        _add(counters, f"actor_messages_handled_total{{kind={kind}}}", view["messages_handled"])
        _add(counters, f"actor_restarts_total{{kind={kind}}}", view["restarts"])
        if kind == "feed":
            for name in ("closed", "forming", "duplicates", "filled", "rest_errors"):
                _add(counters, f"market_feed_{name}_total", view.get(name, 0))
    gauges = {
        "market_ws_active_connections": float(connections),
        "market_ws_active_subscriptions": float(subscriptions),
    }
    return {"enabled": True, "updated_at_ms": now_ms, "counters": counters, "gauges": gauges,
            "timers": {}}


def _add(counters: dict[str, float], key: str, value: Any) -> None:
    counters[key] = counters.get(key, 0.0) + float(value or 0)
