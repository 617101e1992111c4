"""Frames and delta polls (Falcon TestClient, real runtime on temp SQLite)."""

from __future__ import annotations

import dataclasses

from tests.api.test_factor import CANDLES, LAST, S, get, loaded  # noqa: F401 (fixture)


def test_live_frame_is_slices_and_draw_at_the_head(loaded) -> None:  # noqa: F811
    body = get(loaded, "/api/frame/live", window_candles=2000).json
    assert body["schema_version"] == 1 and body["series_id"] == S
    assert body["time"] == {"at_time": LAST, "aligned_time": LAST, "candle_id": f"{S}:{LAST}"}
    assert body["factor_slices"] == get(loaded, "/api/factor/slices", at_time=LAST).json
    assert body["draw_state"] == get(loaded, "/api/draw/delta", at_time=LAST).json


def test_frame_at_time_floors_and_echoes_the_request(loaded) -> None:  # noqa: F811
    at = CANDLES[150].candle_time + 30
    body = get(loaded, "/api/frame/at_time", at_time=at).json
    aligned = CANDLES[150].candle_time
    assert body["time"] == {"at_time": at, "aligned_time": aligned, "candle_id": f"{S}:{aligned}"}
    assert body["factor_slices"]["at_time"] == aligned
    assert body["draw_state"]["to_candle_time"] == aligned
    missing = get(loaded, "/api/frame/at_time", at_time=CANDLES[0].candle_time - 60)
    assert (missing.status_code, missing.json) == (404, {"detail": "no_data"})
    assert get(loaded, "/api/frame/at_time").status_code == 422


def test_frames_without_data(client) -> None:
    result = get(client, "/api/frame/live")
    assert (result.status_code, result.json) == (404, {"detail": "no_data"})
    empty = get(client, "/api/delta/poll", after_id=4).json
    assert empty == {"schema_version": 1, "series_id": S, "records": [], "next_cursor": {"id": 4}}
    client.runtime.store.upsert_candles(S, CANDLES[:3])  # behind the factor actor's back
    result = get(client, "/api/frame/live")
    assert (result.status_code, result.json) == (404, {"detail": "no_overlay"})
    assert get(client, "/api/delta/poll").status_code == 409


def test_delta_poll_one_record_then_none(loaded) -> None:  # noqa: F811
    body = get(loaded, "/api/delta/poll", after_id=0, limit=2000).json
    assert len(body["records"]) == 1
    record = body["records"][0]
    last = loaded.runtime.store.last_draw_version(S)
    assert record["id"] == body["next_cursor"]["id"] == last
    assert record["draw_delta"]["next_cursor"]["version_id"] == last
    assert record["to_candle_time"] == LAST and record["to_candle_id"] == f"{S}:{LAST}"
    assert record["factor_slices"]["at_time"] == LAST
    again = get(loaded, "/api/delta/poll", after_id=last).json
    assert again["records"] == [] and again["next_cursor"] == {"id": last}


def test_lagging_ledger_is_409(loaded) -> None:  # noqa: F811
    later = [dataclasses.replace(c, candle_time=LAST + 60 * (i + 1)) for i, c in enumerate(CANDLES[:2])]
    loaded.runtime.store.upsert_candles(S, later)
    poll = get(loaded, "/api/delta/poll")
    assert (poll.status_code, poll.json) == (409, {"detail": "ledger_out_of_sync:overlay"})
    frame = get(loaded, "/api/frame/live").json  # the live frame stays at the factor head
    assert frame["time"]["aligned_time"] == LAST and frame["time"]["at_time"] == LAST + 120
    ahead = get(loaded, "/api/frame/at_time", at_time=LAST + 120)
    assert (ahead.status_code, ahead.json) == (409, {"detail": "ledger_out_of_sync:factor"})
