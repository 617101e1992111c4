"""Operations resources: liveness, readiness, the actor status board, debug crash."""

from __future__ import annotations

import falcon

from trade_canvas.http.market import body_series
from trade_canvas.http.media import read_json_object
from trade_canvas.runtime.system import Runtime, validate_kind


class Health:
    """GET /api/health: the process answers (liveness)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """GET /api/ready: the store answers and the supervisor runs (readiness); 503 otherwise."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.runtime.readiness()


class Actors:
    """GET /api/runtime/actors: every actor's state, restarts, queue depth and counters."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.runtime.status()


class Cluster:
    """GET /api/runtime/cluster: nodes, series owners with epochs, heads (cluster mode; else 404)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.runtime.cluster_view()


class Crash:
    """POST /api/runtime/debug/crash (debug API): make one actor of a series fail."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req)
        series = body_series(body)
        kind = validate_kind(str(body.get("kind", "")))
        self.runtime.crash(series, kind)
        resp.status = falcon.HTTP_202
        resp.media = {"ok": True, "series_id": series.text, "kind": kind}
