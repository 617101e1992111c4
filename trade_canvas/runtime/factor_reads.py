"""Factor read model: the slices, draw-delta and health bodies, read straight from the store.

Reads never write, ingest or rebuild. Freshness is strict: when the factor ledger's head is
behind the candle that a request resolves to, the answer is 409 ``ledger_out_of_sync:factor``
(slices) or ``ledger_out_of_sync:overlay`` (draw delta). Draw instructions are stored in the
same transaction as the factor snapshot, so the overlay head always equals the factor head.

``at_time`` resolves to the newest stored candle at or before it within the requested window;
a series with no candle in ``[at_time - window, at_time]`` answers the empty body. A read
behind the head has no engine state: the anchor is replayed from its last switch (the ledger
records pointer changes only), so a past read equals what the live overlay drew at that time.
"""

from __future__ import annotations

from typing import Any, Sequence

from trade_canvas.candles import Candle
from trade_canvas.errors import Conflict, InvalidInput
from trade_canvas.factors import draw, engine
from trade_canvas.factors.anchor import PenRef
from trade_canvas.factors.engine import FactorState
from trade_canvas.factors.events import FactorEvent
from trade_canvas.factors.slices import (
    FactorView, build_view, empty_slices, replay_anchor, slices_payload,
)
from trade_canvas.series import SeriesId
from trade_canvas.storage import CandleStore


def slices(store: CandleStore, series: SeriesId, at_time: int, window: int) -> dict[str, Any]:
    """Return the ``GET /api/factor/slices`` body.

    Raises:
        Conflict: ``ledger_out_of_sync:factor`` while the factor head is behind ``at_time``.
    """
    candles = _window_candles(store, series, at_time, window)
    if not candles:
        return empty_slices(series.text, at_time)
    aligned = candles[-1].candle_time
    head = store.factor_head_time(series.text)
    if head is None or head < aligned:
        raise Conflict("ledger_out_of_sync:factor")
    return slices_payload(series.text, _view(store, series, aligned, window, candles, head))


def draw_delta(
    store: CandleStore, series: SeriesId, cursor: int, window: int, at_time: int | None
) -> dict[str, Any]:
    """Return the ``GET /api/draw/delta`` body.

    Raises:
        Conflict: ``ledger_out_of_sync:overlay`` while the factor head is behind the target.
    """
    sid = series.text
    head = store.factor_head_time(sid)
    target = store.head_time(sid) if at_time is None else at_time
    if target is None:
        target = head
    candles = [] if target is None else _window_candles(store, series, target, window)
    if not candles:
        return draw.empty_draw_delta(sid, cursor)
    to_time = candles[-1].candle_time
    if head is None or head < to_time:
        raise Conflict("ledger_out_of_sync:overlay")
    start = series.timeframe.window_start(to_time, window)
    current = draw.render(_view(store, series, to_time, window, candles, head), start)
    patch = [v.to_dict() for v in store.read_draw_versions(sid, cursor, to_time)]
    active = draw.active_ids(current, start, to_time)
    return draw.draw_delta_payload(sid, to_time, cursor, patch, active)


def health(store: CandleStore, series: SeriesId) -> dict[str, Any]:
    """Return the ``GET /api/factor/health`` body (store head vs factor/overlay head)."""
    tf = series.timeframe.seconds  # nominal for calendar months
    store_head = store.head_time(series.text)
    factor_head = store.factor_head_time(series.text)
    seconds = candles = None
    if store_head is not None and factor_head is not None:
        seconds = max(0, store_head - factor_head)
        candles = max(0, series.timeframe.steps_between(factor_head, store_head))
    status, reason = _status(store_head, factor_head, candles)
    return {
        "series_id": series.text, "timeframe_seconds": tf,
        "store_head_time": store_head, "factor_head_time": factor_head,
        "overlay_head_time": factor_head,
        "factor_delay_seconds": seconds, "factor_delay_candles": candles,
        "overlay_delay_seconds": seconds, "overlay_delay_candles": candles,
        "max_delay_seconds": seconds, "max_delay_candles": candles,
        "status": status, "status_reason": reason,
    }


def _status(store_head: int | None, factor_head: int | None, lag: int | None) -> tuple[str, str]:
    if store_head is None:
        return "gray", "no_store_head"
    if factor_head is None or lag is None:
        return "red", "missing_factor_overlay_head"  # one head serves both
    if lag == 0:
        return "green", "up_to_date"
    if lag == 1:
        return "yellow", "lagging_one_candle"
    return "red", "lagging_many_candles"


def _window_candles(
    store: CandleStore, series: SeriesId, at_time: int, window: int
) -> list[Candle]:
    return store.read_range(series.text, series.timeframe.window_start(at_time, window), at_time)


def _view(
    store: CandleStore, series: SeriesId, at: int, window: int,
    candles: Sequence[Candle], head: int,
) -> FactorView:
    sid = series.text
    start = series.timeframe.window_start(at, window)
    rows = store.read_factor_events(sid, start, at)
    # the alive zone may have formed before the window: its formed event comes from further back
    formed = store.read_latest_factor_event(sid, "zhongshu", "zhongshu.formed", at)
    if formed is not None and formed.candle_time < start:
        rows.insert(0, formed)
    state = _state_at(store, sid, at) if head == at else None
    anchor = None if state is not None else _anchor_at(store, sid, at, start, rows, candles)
    return build_view(at, rows, candles, state, anchor)


def _anchor_at(
    store: CandleStore, sid: str, at: int, start: int,
    rows: Sequence[FactorEvent], candles: Sequence[Candle],
) -> PenRef | None:
    # A past read has no engine state: replay the anchor's silent updates since its last switch
    # (the switch and the pointer's pen may lie before the window: read from there).
    switch = store.read_latest_factor_event(sid, "anchor", "anchor.switch", at)
    if switch is None:
        return None
    payload = switch.payload()
    first = min(int(payload["new_anchor"]["start_time"]), switch.candle_time)
    if first < start:
        rows = store.read_factor_events(sid, first, start - 1) + list(rows)
        candles = store.read_range(sid, first, start - 1) + list(candles)
    return replay_anchor(payload, rows, candles, at)


def _state_at(store: CandleStore, sid: str, at: int) -> FactorState | None:
    snapshot = store.read_factor_snapshot(sid)
    if snapshot is None or snapshot.head_time != at:
        return None  # moved on since the head was read: recompute the heads from the ledger
    try:
        return engine.state_from_json(snapshot.state_json)
    except InvalidInput:
        return None
