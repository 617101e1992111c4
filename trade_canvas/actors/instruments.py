"""Prometheus instruments for what must be counted as it happens (one observation per batch).

Everything else an operator scrapes (actor states, mailbox depth, feeds, connections, REST
budget, cache, backtests) is read from the status board at scrape time by
``runtime/metrics.py``, so those hot paths carry no instrumentation at all. What is here costs
one ``inc``/``observe`` per write, per fan-out or per fold, never per subscriber or per candle.

Label cardinality is bounded: the only per-series label is ``series``, and it names a series
only when the series is in the whitelist (``TRADE_CANVAS_WHITELIST_PATH``, set at boot through
``label_series``); every other series counts under ``series="other"``. With
``PROMETHEUS_MULTIPROC_DIR`` set (read by prometheus-client when it is first imported),
the values live in per-process files there and the scrape adds them up across workers.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import Counter, Histogram

OTHER = "other"
_labelled: frozenset[str] = frozenset()

# Seconds; the histogram buckets span a fast SQLite commit (~0.1 ms) to a stuck one (10 s).
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

CANDLES_STORED = Counter(
    "trade_canvas_candles_stored", "Closed candles committed by the store actors",
    ["series", "source"])
INGEST_SECONDS = Histogram(
    "trade_canvas_ingest_seconds",
    "HTTP candle ingest: request read to write committed (the time the client waits)",
    ["route"], buckets=_FAST_BUCKETS)
STORE_COMMIT_SECONDS = Histogram(
    "trade_canvas_store_commit_seconds", "One store actor write transaction",
    buckets=_FAST_BUCKETS)
FANOUT_SECONDS = Histogram(
    "trade_canvas_fanout_seconds",
    "Store commit to the candles written (or queued, for a client behind) to every subscriber",
    buckets=_FAST_BUCKETS)
FACTOR_FOLD_SECONDS = Histogram(
    "trade_canvas_factor_fold_seconds",
    "One factor fold of newly stored candles: engine step, overlay and its store transaction",
    buckets=_FAST_BUCKETS)
ACTOR_RESTARTS = Counter(
    "trade_canvas_actor_restarts", "Supervised actors restarted after a failure", ["kind"])
WS_MESSAGES_SENT = Counter(
    "trade_canvas_ws_messages_sent",
    "Server messages handed to WebSocket subscribers (written at once or queued)")
WS_MESSAGES_DROPPED = Counter(
    "trade_canvas_ws_messages_dropped",
    "Messages not delivered because the subscriber's connection was closed or too slow")
WS_SLOW_CONSUMERS = Counter(
    "trade_canvas_ws_slow_consumer_disconnects",
    "WebSocket connections dropped for falling too far behind (slow_consumer)")


def label_series(series_ids: Iterable[str]) -> None:
    """Give these series (the whitelist) their own ``series`` label; others are ``other``."""
    global _labelled
    _labelled = frozenset(series_ids)


def series_label(series_id: str) -> str:
    """Return the ``series`` label value of a series."""
    return series_id if series_id in _labelled else OTHER
