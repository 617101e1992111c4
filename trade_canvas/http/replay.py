"""Replay resources: the chart's replay mode (prepare, build, status, windows, coverage)."""

from __future__ import annotations

import gzip
from typing import Any

import falcon

from trade_canvas.errors import InvalidInput
from trade_canvas.http.errors import DetailError
from trade_canvas.http.media import query_bool, query_int, query_required, read_json_object
from trade_canvas.runtime.replay_packages import ReplayPackages
from trade_canvas.runtime.system import Runtime
from trade_canvas.series import SeriesId, parse_series_id


def _replays(runtime: Runtime) -> ReplayPackages:
    if runtime.replays is None:
        raise DetailError(503, "replay is not running")
    return runtime.replays


def _series(body: dict[str, Any]) -> SeriesId:
    raw = body.get("series_id")
    if not isinstance(raw, str) or not raw.strip():
        raise DetailError(422, "series_id is required")
    try:
        return parse_series_id(raw)
    except InvalidInput as exc:
        raise DetailError(400, str(exc)) from None


def _to_time(body: dict[str, Any]) -> int | None:
    return _int(body, "to_time", None, 0, None)


def _int(body: dict[str, Any], name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    bounds = f">= {low}" if high is None else f"in {low}..{high}"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        raise DetailError(422, f"{name} must be an integer {bounds} or null")
    return value


class Prepare:
    """POST /api/replay/prepare: check the series can be replayed up to a time (step 1)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req)
        series, to_time = _series(body), _to_time(body)
        window = _int(body, "window_candles", None, 1, 5000)
        resp.media = _replays(self.runtime).prepare(series, to_time, window)


class Build:
    """POST /api/replay/build: start building the package of the newest N candles."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req)
        series, to_time = _series(body), _to_time(body)
        window_candles = _int(body, "window_candles", 2000, 1, 5000)
        window_size = _int(body, "window_size", 500, 1, 2000)
        interval = _int(body, "snapshot_interval", 25, 1, 200)
        assert window_candles is not None and window_size is not None and interval is not None
        resp.media = _replays(self.runtime).build(
            series, to_time, window_candles, window_size, interval
        )


class Status:
    """GET /api/replay/status: a build's progress, and the package metadata once done."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        job_id = query_required(req, "job_id")
        preload = query_bool(req, "include_preload", False)
        resp.media = _replays(self.runtime).status(job_id, preload)


class Window:
    """GET /api/replay/window: the whole window holding ``target_idx`` (gzip when accepted)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        job_id = query_required(req, "job_id")
        query_required(req, "target_idx")
        target = query_int(req, "target_idx", default=None, minimum=0)
        assert target is not None
        data = _replays(self.runtime).window_gzip(job_id, target)
        resp.content_type = falcon.MEDIA_JSON
        resp.vary = ("Accept-Encoding",)
        if "gzip" in (req.get_header("Accept-Encoding") or "").lower():
            resp.set_header("Content-Encoding", "gzip")
            resp.data = data
        else:
            resp.data = gzip.decompress(data)


class EnsureCoverage:
    """POST /api/replay/ensure_coverage: fetch the newest N closed candles over REST."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req)
        series = _series(body)
        target = _int(body, "target_candles", 2000, 1, 5000)
        to_time = _int(body, "to_time", None, 0, None)
        assert target is not None
        resp.media = _replays(self.runtime).ensure_coverage(series, target, to_time)


class CoverageStatus:
    """GET /api/replay/coverage_status: a coverage job's progress."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = _replays(self.runtime).coverage_status(query_required(req, "job_id"))

