"""CORS: preflights answered before routing, and the origin headers on every answer.

Falcon's own ``CORSMiddleware`` answers a preflight only on a routed path, so the preflight of
an unknown or gated-off path came back 404 and the browser reported a CORS error instead of
the route's ``{"detail": "not_found"}``. The chart app sends ``content-type: application/json``
even on GETs, so every one of its reads is preflighted. Like the original backend's CORS layer,
this middleware answers every preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) itself, for any path: 200 for an allowed origin and method,
400 otherwise. Every other answer, errors included, carries ``Access-Control-Allow-Origin`` for
an allowed origin, since Falcon runs ``process_response`` after its error handlers.
"""

from __future__ import annotations

from typing import Sequence

import falcon

ALLOWED_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
PREFLIGHT_MAX_AGE_S = 600


class Cors:
    """Answer CORS preflights before routing; add the origin headers to every response.

    An empty ``origins`` allows no cross-origin access at all (answers echo an allowed
    ``Origin`` with credentials, so a wildcard would open every user's browser to any site).
    """

    def __init__(self, origins: Sequence[str]) -> None:
        self.origins = frozenset(origins)

    def allowed(self, origin: str) -> bool:
        """Whether ``origin`` may read our answers."""
        return origin in self.origins

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        origin = req.get_header("Origin")
        method = req.get_header("Access-Control-Request-Method")
        if req.method != "OPTIONS" or origin is None or method is None:
            return  # not a preflight: routed as usual (a plain OPTIONS gets 404/405)
        resp.complete = True
        resp.content_type = falcon.MEDIA_TEXT
        if not self.allowed(origin):
            resp.status = falcon.HTTP_400
            resp.text = "Disallowed CORS origin"
            return
        if method.strip().upper() not in ALLOWED_METHODS:
            resp.status = falcon.HTTP_400
            resp.text = "Disallowed CORS method"
            return
        resp.status = falcon.HTTP_200
        resp.text = "OK"
        resp.set_header("Access-Control-Allow-Methods", ", ".join(ALLOWED_METHODS))
        resp.set_header("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S))
        requested = req.get_header("Access-Control-Request-Headers")
        if requested:
            resp.set_header("Access-Control-Allow-Headers", requested)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        origin = req.get_header("Origin")
        if origin is None:
            return
        vary = resp.get_header("Vary") or ""
        if "origin" not in vary.lower():
            resp.append_header("Vary", "Origin")
        if self.allowed(origin):
            resp.set_header("Access-Control-Allow-Origin", origin)
            resp.set_header("Access-Control-Allow-Credentials", "true")
