"""GET /metrics: the Prometheus text format (a read: no token unless reads need one)."""

from __future__ import annotations

import falcon

from trade_canvas.runtime.metrics import Scrape
from trade_canvas.runtime.system import Runtime


class Metrics:
    """GET /metrics: event counters and histograms, then the status board's figures."""

    def __init__(self, runtime: Runtime) -> None:
        self.scrape = Scrape(runtime)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.scrape.content_type
        resp.data = self.scrape.render()
