"""GET / and GET /ops: the operator's status page, one static HTML file shipped in the package.

The page has no build step and no dependency: its script polls ``GET /api/runtime/actors``
(and the backtest list) every few seconds and renders the board in the browser, so the server
only sends a file it read once. ``?token=...`` in the page's address is forwarded to those
reads as a bearer token when reads need one (``TRADE_CANVAS_API_TOKEN_READS``).
"""

from __future__ import annotations

from importlib import resources

import falcon

# The page's own inline script and style only; it talks to this origin and nothing else.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


class StatusPage:
    """GET / and /ops: the status page (HTML)."""

    def __init__(self) -> None:
        self.body = resources.files("trade_canvas.http").joinpath("static/status.html").read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("Cache-Control", "no-cache")
        resp.data = self.body
