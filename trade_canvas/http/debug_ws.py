"""WebSocket ``/ws/debug`` (debug API): recent backend events, then each new one.

On connect the server sends ``{"type":"debug_snapshot","events":[...]}`` and then every new
event as ``{"type":"debug_event","event":{...}}``; a client ``{"type":"subscribe"}`` gets the
snapshot again. Framing, the writer and the bad-message rules are those of ``/ws/market``: a
frame that is not a JSON object with a known ``type`` gets an ``error`` message and the socket
stays open (the earlier backend dropped the socket on a non-JSON frame).
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import simple_websocket

from trade_canvas.http.ws import MarketSocket, _error, upgrade
from trade_canvas.runtime.journal import DebugJournal
from trade_canvas.runtime.system import Runtime


def parse_debug_message(data: str | bytes) -> str | None:
    """Return None for ``subscribe``, else the error text sent back."""
    if isinstance(data, bytes):
        return "binary frames are not supported; send JSON text"
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "invalid json"
    if not isinstance(message, dict):
        return "invalid message envelope"
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        return "missing message type"
    if kind != "subscribe":
        return f"unknown message type: {kind}"
    return None


class DebugSocket:
    """One WebSocket session on /ws/debug."""

    def __init__(self, runtime: Runtime, journal: DebugJournal) -> None:
        self.runtime = runtime
        self.journal = journal

    def serve(self, environ: dict[str, Any]) -> None:
        """Run the session until the client or the server closes it."""
        settings = self.runtime.settings
        ws, sock = upgrade(environ, settings.ws_write_timeout_s)
        outbox = self.runtime.open_connection()
        writer = threading.Thread(target=MarketSocket._pump, args=(ws, sock, outbox), daemon=True)
        writer.start()
        self.journal.follow(outbox)
        try:
            while not outbox.closed:
                data = ws.receive()
                if data is None:
                    continue
                problem = parse_debug_message(data)
                if problem is None:
                    self.journal.resend(outbox)
                else:
                    outbox.offer([_error("bad_request", problem)])
        except simple_websocket.ConnectionClosed:
            pass
        finally:
            self.journal.unfollow(outbox)
            self.runtime.close_connection(outbox)
            writer.join(timeout=settings.ws_write_timeout_s + 1)
            sock.shutdown_quietly()
