"""Prometheus exposition: the status board read at scrape time, plus the event instruments.

``BoardCollector`` turns what ``GET /api/runtime/actors`` shows (the supervisor's records, the
connections, the REST limiters, the read cache, the backtest queue) into metric families when
Prometheus scrapes, so no hot path pays for these figures. Counters that must be counted as
events happen live in ``actors/instruments.py``.

Cardinality: ``kind``, ``state``, ``market``, ``host``, ``source`` and ``route`` are closed
sets; ``series`` is a whitelisted series id or ``other`` (see ``instruments.series_label``),
and for ``other`` a gauge is the sum (subscribers) or the worst value (lags) over those series.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (prometheus-client's own
variable), every value lives in per-process files there and a scrape adds them up across
workers, whichever worker answers. Instruments write their files as they count; the status
board's figures are copied into gauges there by each worker every ``PUBLISH_INTERVAL_S``
(``BoardPublisher``): sums add up (actors, subscribers, connections, candles filled), worst
values (lags) take the maximum over workers, and only live workers count.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Iterator

import pykka
from prometheus_client import (
    CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest, values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from trade_canvas import __version__
from trade_canvas.actors.messages import ListBacktests
from trade_canvas.actors.instruments import series_label
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import parse_series_id

logger = logging.getLogger(__name__)

BACKTEST_ASK_TIMEOUT_S = 1.0
PUBLISH_INTERVAL_S = 5.0
# Board figures that are a worst value (a lag), not a sum, when several workers publish them.
_WORST = frozenset({
    "trade_canvas_build_info", "trade_canvas_uptime_seconds", "trade_canvas_feed_head_lag_seconds",
    "trade_canvas_feed_event_lag_seconds", "trade_canvas_feed_silence_seconds",
    "trade_canvas_factor_lag_seconds", "trade_canvas_rest_weight_used",
    "trade_canvas_rest_weight_budget", "trade_canvas_rest_paused_seconds",
    "trade_canvas_actor_mailbox_depth_max",
})


def multiprocess() -> bool:
    """Whether prometheus-client keeps its values in PROMETHEUS_MULTIPROC_DIR files."""
    return values.ValueClass is not values.MutexValue


class Scrape:
    """Renders the text format: event instruments first, then the status board.

    In multiprocess mode it also starts this worker's ``BoardPublisher`` (until the runtime
    stops), and renders only the shared files.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, runtime: Runtime) -> None:
        self.registries: list[CollectorRegistry] = []
        collector = BoardCollector(runtime)
        if multiprocess():
            from prometheus_client import multiprocess as mp

            shared = CollectorRegistry()
            mp.MultiProcessCollector(shared)
            self.registries.append(shared)
            publisher = BoardPublisher(collector)
            publisher.publish()
            threading.Thread(target=publisher.run, args=(runtime.stopping,),
                             name="metrics-publisher", daemon=True).start()
        else:
            board = CollectorRegistry(auto_describe=False)
            board.register(collector)
            # REGISTRY: our instruments and prometheus-client's process, platform, gc figures
            self.registries += [REGISTRY, board]

    def render(self) -> bytes:
        """Return the whole scrape body."""
        return b"".join(generate_latest(registry) for registry in self.registries)


class BoardPublisher:
    """Copies the board's figures into multiprocess gauges, so a scrape sums every worker's."""

    def __init__(self, collector: "BoardCollector") -> None:
        self.collector = collector
        self.gauges: dict[str, Gauge] = {}
        self.shown: dict[str, set[tuple[str, ...]]] = {}

    def run(self, stopping: threading.Event) -> None:
        """Publish every ``PUBLISH_INTERVAL_S`` until ``stopping`` is set."""
        while not stopping.wait(PUBLISH_INTERVAL_S):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - a bad scrape value must not end the publisher
                logger.exception("publishing the status board's metrics failed")

    def publish(self) -> None:
        """Write the current figures; label sets seen before and gone now are set to 0."""
        current: dict[str, dict[tuple[str, ...], float]] = {}
        for family in self.collector.collect():
            for sample in family.samples:
                gauge = self._gauge(sample.name, family.documentation, tuple(sample.labels))
                key = tuple(sample.labels[name] for name in gauge._labelnames)
                current.setdefault(sample.name, {})[key] = sample.value
        for name, gauge in self.gauges.items():
            now = current.get(name, {})
            for key in self.shown.get(name, set()) - set(now):
                self._set(gauge, key, 0.0)
            for key, value in now.items():
                self._set(gauge, key, value)
            self.shown[name] = set(now) | self.shown.get(name, set())

    def _gauge(self, name: str, documentation: str, labels: tuple[str, ...]) -> Gauge:
        gauge = self.gauges.get(name)
        if gauge is None:
            mode = "livemax" if name in _WORST else "livesum"
            gauge = self.gauges[name] = Gauge(name, documentation, labels, registry=None,
                                              multiprocess_mode=mode)
        return gauge

    @staticmethod
    def _set(gauge: Gauge, key: tuple[str, ...], value: float) -> None:
        (gauge.labels(*key) if key else gauge).set(value)


def _kind(kind: str) -> str:
    return kind.split(":", 1)[0]  # "streams:spot" -> "streams"


class _Series:
    """Per-series gauge values folded into the bounded ``series`` label."""

    def __init__(self, worst: bool) -> None:
        self.worst = worst
        self.values: dict[str, float] = {}

    def add(self, series_id: str, value: float | None) -> None:
        if value is None:
            return
        label = series_label(series_id)
        if label in self.values:
            old = self.values[label]
            self.values[label] = max(old, value) if self.worst else old + value
        else:
            self.values[label] = value

    def family(self, family: GaugeMetricFamily | CounterMetricFamily) -> Metric:
        for label, value in sorted(self.values.items()):
            family.add_metric([label], value)
        return family


class BoardCollector:
    """Metric families read from the runtime's status board at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        views = [record.snapshot() for record in runtime.board.records()]
        now = runtime.clock()
        info = GaugeMetricFamily("trade_canvas_build_info", "Version and store backend",
                                 labels=["version", "store_backend"])
        info.add_metric([__version__, runtime.store.backend], 1)
        yield info
        yield GaugeMetricFamily("trade_canvas_uptime_seconds", "Seconds since the runtime booted",
                                value=now - runtime.board.booted_at)
        yield from self._actors(views)
        yield from self._connections(views)
        yield from self._feeds(views, now)
        yield from self._markets(views, now)
        yield from self._factors(views)
        yield from self._rest()
        yield from self._cache()
        yield from self._backtests()

    def _actors(self, views: list[dict[str, Any]]) -> Iterable[Metric]:
        states = GaugeMetricFamily("trade_canvas_actors", "Supervised actors by kind and state",
                                   labels=["kind", "state"])
        depth = GaugeMetricFamily("trade_canvas_actor_mailbox_depth",
                                  "Unprocessed messages in the mailboxes of all actors of a kind",
                                  labels=["kind"])
        deepest = GaugeMetricFamily("trade_canvas_actor_mailbox_depth_max",
                                    "Deepest single mailbox among the actors of a kind",
                                    labels=["kind"])
        counts: dict[tuple[str, str], int] = {}
        depths: dict[str, list[int]] = {}
        for view in views:
            kind = _kind(view["kind"])
            counts[(kind, view["state"])] = counts.get((kind, view["state"]), 0) + 1
            depths.setdefault(kind, []).append(int(view.get("queue_depth") or 0))
        for (kind, state), count in sorted(counts.items()):
            states.add_metric([kind, state], count)
        for kind, found in sorted(depths.items()):
            depth.add_metric([kind], sum(found))
            deepest.add_metric([kind], max(found))
        series = {v["series_id"] for v in views if v["series_id"]}
        yield states
        yield depth
        yield deepest
        yield GaugeMetricFamily("trade_canvas_series", "Series with running actors",
                                value=len(series))

    def _connections(self, views: list[dict[str, Any]]) -> Iterable[Metric]:
        yield GaugeMetricFamily("trade_canvas_ws_connections", "Open WebSocket connections",
                                value=len(self.runtime.connections))
        subscribers = _Series(worst=False)
        for view in views:
            if view["kind"] == "hub" and view["series_id"]:
                subscribers.add(view["series_id"], view.get("subscribers", 0))
        yield subscribers.family(GaugeMetricFamily(
            "trade_canvas_ws_subscribers", "WebSocket subscriptions per series (other: summed)",
            labels=["series"]))

    def _feeds(self, views: list[dict[str, Any]], now: float) -> Iterable[Metric]:
        feeds = GaugeMetricFamily("trade_canvas_feeds", "Live exchange feeds", labels=["pinned"])
        lag = _Series(worst=True)
        filled = _Series(worst=False)
        errors = _Series(worst=False)
        holes = _Series(worst=False)
        pinned = {True: 0, False: 0}
        for view in views:
            if view["kind"] != "feed" or not view["series_id"]:
                continue
            sid = view["series_id"]
            pinned[bool(view.get("pinned"))] += 1
            last = view.get("last_closed_time")
            if last is not None:
                # A candle opened at T closes when the next opens; lag counts from that close.
                closes = parse_series_id(sid).timeframe.next_open(last)
                lag.add(sid, max(0.0, now - closes))
            filled.add(sid, view.get("filled", 0))
            errors.add(sid, view.get("rest_errors", 0))
            holes.add(sid, view.get("unfilled_holes", 0))
        for flag, count in pinned.items():
            feeds.add_metric(["true" if flag else "false"], count)
        yield feeds
        yield lag.family(GaugeMetricFamily(
            "trade_canvas_feed_head_lag_seconds",
            "Seconds since the newest stored closed candle of a followed series closed "
            "(other: the worst)", labels=["series"]))
        yield filled.family(CounterMetricFamily(
            "trade_canvas_feed_rest_filled_candles", "Candles a feed fetched over REST (tail and "
            "gap fills; also counted in candles_stored source=feed)", labels=["series"]))
        yield errors.family(CounterMetricFamily(
            "trade_canvas_feed_rest_errors", "Failed REST fills of the feeds", labels=["series"]))
        yield holes.family(GaugeMetricFamily(
            "trade_canvas_feed_unfilled_holes", "Gaps a feed could not fill yet", labels=["series"]))

    def _markets(self, views: list[dict[str, Any]], now: float) -> Iterable[Metric]:
        conns = GaugeMetricFamily("trade_canvas_feed_connections",
                                  "Exchange stream connections by market and state",
                                  labels=["market", "state"])
        reconnects = CounterMetricFamily("trade_canvas_feed_reconnects",
                                         "Exchange stream reconnects", labels=["market"])
        frames = CounterMetricFamily("trade_canvas_feed_frames", "Exchange stream frames received",
                                     labels=["market"])
        lag = GaugeMetricFamily("trade_canvas_feed_event_lag_seconds",
                                "Worst delay between an exchange event time and its arrival",
                                labels=["market"])
        silence = GaugeMetricFamily("trade_canvas_feed_silence_seconds",
                                    "Seconds since the last frame on any connection of a market",
                                    labels=["market"])
        streams = GaugeMetricFamily("trade_canvas_feed_streams", "Streams followed per market",
                                    labels=["market"])
        for view in views:
            if _kind(view["kind"]) != "streams" or "market" not in view:
                continue
            market = view["market"]
            connections = view.get("connections") or []
            states: dict[str, int] = {}
            for conn in connections:
                states[conn["state"]] = states.get(conn["state"], 0) + 1
            for state, count in sorted(states.items()):
                conns.add_metric([market, state], count)
            reconnects.add_metric([market], sum(c.get("reconnects", 0) for c in connections))
            frames.add_metric([market], sum(c.get("frames", 0) for c in connections))
            streams.add_metric([market], view.get("streams", 0))
            lags = [c["lag_s"] for c in connections if c.get("lag_s") is not None]
            if lags:
                lag.add_metric([market], max(lags))
            last = [c["last_frame_at"] for c in connections if c.get("last_frame_at")]
            if last and view.get("streams"):
                silence.add_metric([market], max(0.0, now - max(last)))
        yield from (conns, reconnects, frames, lag, silence, streams)

    def _factors(self, views: list[dict[str, Any]]) -> Iterable[Metric]:
        lag = _Series(worst=True)
        stalled = 0
        for view in views:
            if view["kind"] != "factor" or not view["series_id"]:
                continue
            lag.add(view["series_id"], view.get("lag_seconds"))
            stalled += bool(view.get("stalled"))
        yield lag.family(GaugeMetricFamily(
            "trade_canvas_factor_lag_seconds",
            "Seconds the factor head trails the stored candle head (other: the worst)",
            labels=["series"]))
        yield GaugeMetricFamily("trade_canvas_factor_stalled",
                                "Factor actors that cannot extend their ledger", value=stalled)

    def _rest(self) -> Iterable[Metric]:
        families = {
            "used": GaugeMetricFamily("trade_canvas_rest_weight_used",
                                      "REST request weight used this minute", labels=["host"]),
            "budget": GaugeMetricFamily("trade_canvas_rest_weight_budget",
                                        "REST request weight we allow ourselves per minute",
                                        labels=["host"]),
            "paused": GaugeMetricFamily("trade_canvas_rest_paused_seconds",
                                        "Seconds left of a 429/418 pause of the host",
                                        labels=["host"]),
            "requests": CounterMetricFamily("trade_canvas_rest_requests", "REST requests sent",
                                            labels=["host"]),
            "bans": CounterMetricFamily("trade_canvas_rest_pauses",
                                        "429/418 answers that paused the host", labels=["host"]),
        }
        for host, limiter in self.runtime.rest.limiters.items():
            snap = limiter.snapshot()
            families["used"].add_metric([host], snap["used_this_minute"])
            families["budget"].add_metric([host], snap["budget_per_minute"])
            families["paused"].add_metric([host], snap["banned_for_s"])
            families["requests"].add_metric([host], snap["requests"])
            families["bans"].add_metric([host], snap["bans"])
        yield from families.values()

    def _cache(self) -> Iterable[Metric]:
        snap = self.runtime.read_cache.snapshot()
        yield CounterMetricFamily("trade_canvas_read_cache_hits", "Candle reads answered from "
                                  "the response cache", value=snap["hits"])
        yield CounterMetricFamily("trade_canvas_read_cache_misses", "Candle reads that went to "
                                  "the store", value=snap["misses"])
        yield GaugeMetricFamily("trade_canvas_read_cache_bytes", "Bytes held by the response cache",
                                value=snap["bytes"])

    def _backtests(self) -> Iterable[Metric]:
        backtests = self.runtime.backtests
        if backtests is None:
            return
        try:
            jobs = backtests.actor.ask(ListBacktests(), timeout=BACKTEST_ASK_TIMEOUT_S)
        except (pykka.Timeout, pykka.ActorDeadError):
            return  # a scrape never waits on a busy actor; the family is left out this time
        family = GaugeMetricFamily("trade_canvas_backtests", "Backtests running or waiting",
                                   labels=["state"])
        for state in ("running", "queued"):
            family.add_metric([state], sum(1 for job in jobs if job.state == state))
        yield family

