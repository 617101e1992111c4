"""Frames and delta polls: the slices and draw-delta reads of one candle, side by side.

A frame is ``GET /api/factor/slices`` and ``GET /api/draw/delta?cursor_version_id=0`` at one
aligned candle (the newest stored candle at or before a time); a delta poll is the draw delta
after a version cursor plus the slices at its candle. Both inherit the strict freshness checks
of those reads (409 ``ledger_out_of_sync:factor`` / ``:overlay``). Our factor and overlay heads
are one (draw versions are stored with the factor snapshot), so the live frame's candle is the
older of the candle head and the factor head.
"""

from __future__ import annotations

from typing import Any

from trade_canvas.errors import Conflict, NotFound
from trade_canvas.runtime import factor_reads
from trade_canvas.series import SeriesId
from trade_canvas.storage import CandleStore


def floor_time(store: CandleStore, series: SeriesId, t: int, window: int) -> int | None:
    """Return the newest stored candle time at or before ``t`` within ``window`` candles."""
    rows = store.read_range(series.text, series.timeframe.window_start(t, window), t)
    return rows[-1].candle_time if rows else None


def live_frame(store: CandleStore, series: SeriesId, window: int) -> dict[str, Any]:
    """Return the ``GET /api/frame/live`` body.

    Raises:
        NotFound: ``no_data`` without candles, ``no_overlay`` before the first factor batch.
        Conflict: a ledger behind the frame's candle.
    """
    head = store.head_time(series.text)
    if head is None:
        raise NotFound("no_data")
    factor_head = store.factor_head_time(series.text)
    if factor_head is None:
        raise NotFound("no_overlay")
    aligned = floor_time(store, series, min(head, factor_head), window)
    if aligned is None:
        raise NotFound("no_data")
    return frame(store, series, aligned, head, window)


def frame_at(store: CandleStore, series: SeriesId, at_time: int, window: int) -> dict[str, Any]:
    """Return the ``GET /api/frame/at_time`` body (``time.at_time`` is the requested time)."""
    aligned = floor_time(store, series, at_time, window)
    if aligned is None:
        raise NotFound("no_data")
    return frame(store, series, aligned, at_time, window)


def frame(
    store: CandleStore, series: SeriesId, aligned: int, at_time: int, window: int
) -> dict[str, Any]:
    """Return the frame at the stored candle ``aligned``."""
    sid = series.text
    slices = factor_reads.slices(store, series, aligned, window)
    draw = factor_reads.draw_delta(store, series, 0, window, aligned)
    candle_id = f"{sid}:{aligned}"
    if slices["candle_id"] != candle_id or draw["to_candle_id"] != candle_id:
        raise Conflict("ledger_out_of_sync")
    return {
        "schema_version": 1, "series_id": sid,
        "time": {"at_time": at_time, "aligned_time": aligned, "candle_id": candle_id},
        "factor_slices": slices, "draw_state": draw,
    }


def delta_poll(
    store: CandleStore, series: SeriesId, after_id: int, window: int
) -> dict[str, Any]:
    """Return the ``GET /api/delta/poll`` body: at most one record, at the candle head."""
    sid = series.text
    draw = factor_reads.draw_delta(store, series, after_id, window, None)
    last = store.last_draw_version(sid)
    to_time = draw["to_candle_time"]
    if to_time is None or last <= after_id:
        return {"schema_version": 1, "series_id": sid, "records": [],
                "next_cursor": {"id": after_id}}
    version = draw["next_cursor"]["version_id"]
    record = {
        "id": version, "series_id": sid, "to_candle_id": draw["to_candle_id"],
        "to_candle_time": to_time, "draw_delta": draw,
        "factor_slices": factor_reads.slices(store, series, to_time, window),
    }
    return {"schema_version": 1, "series_id": sid, "records": [record],
            "next_cursor": {"id": version}}
