"""Logging set-up (the only place handlers are installed) and the SIGUSR2 greenlet dump."""

from __future__ import annotations

import logging
import re
import signal
import sys
import time
from typing import Any, Callable

import orjson
from gunicorn.glogging import Logger as GunicornLogger  # type: ignore[import-untyped]

from trade_canvas.runtime.journal import SERIES_RE

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"

# Every C0 control character and DEL, except tab, is written as an escape: a series id, a
# header or an exchange message with a newline in it cannot forge a log line.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F) if code != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r"})


class EscapingFormatter(logging.Formatter):
    """Format records with control characters in the message escaped, one record per line.

    Tracebacks and a record's ``trusted_text`` (multi-line text our own code produced, such as
    the greenlet dump; pass it with ``extra={"trusted_text": ...}``) follow on their own lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trusted = getattr(record, "trusted_text", None)
        return f"{text}\n{trusted}" if trusted else text


# pykka names an actor's thread "<ActorClass>-<n>"; the class tells the actor kind.
_ACTOR_THREAD_RE = re.compile(r"([A-Z][A-Za-z]*)-[0-9]+")
_KINDS = {
    "Supervisor": "supervisor", "StoreActor": "store", "SubscriberHub": "hub",
    "FactorActor": "factor", "FeedActor": "feed", "StreamConnections": "streams",
    "BacktestActor": "backtest", "ReplayJobActor": "replay", "TopMarketsActor": "top_markets",
}


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line (``TRADE_CANVAS_LOG_FORMAT=json``).

    Fields: ``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, and where known
    ``series_id`` (a record's ``extra``, else the first series id in the message), ``actor``
    (the pykka actor thread that logged) and ``kind`` (its actor kind); ``exc`` carries a
    traceback and ``text`` a record's ``trusted_text``. JSON escapes control characters, so no
    value can forge a line.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": message,
        }
        series_id = getattr(record, "series_id", None)
        if series_id is None:
            match = SERIES_RE.search(message)
            series_id = match.group(0) if match else None
        if series_id is not None:
            line["series_id"] = str(series_id)
        actor = _ACTOR_THREAD_RE.fullmatch(record.threadName or "")
        actor_kind = _KINDS.get(actor.group(1)) if actor is not None else None
        if actor_kind is not None:
            line["actor"] = record.threadName
        kind = getattr(record, "kind", None) or actor_kind
        if kind is not None:
            line["kind"] = str(kind)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        trusted = getattr(record, "trusted_text", None)
        if trusted:
            line["text"] = trusted
        return orjson.dumps(line, default=str).decode()


class JsonGunicornLogger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's logger writing JSON lines (its error and access logs)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` as text or JSON lines; pykka only from WARNING.

    pykka logs every actor start, hence its higher level.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_trade_canvas", False)]
    if not ours:
        handler = logging.StreamHandler(sys.stderr)
        handler._trade_canvas = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        ours = [handler]
    for handler in ours:
        handler.setFormatter(JsonFormatter() if log_format == "json" else EscapingFormatter(FORMAT))
    root.setLevel(level)
    logging.getLogger("pykka").setLevel(logging.WARNING)


def install_run_info_dump() -> None:
    """On SIGUSR2, log every greenlet's stack (thread dumps miss greenlets)."""
    import gevent
    import gevent.util

    def dump() -> None:
        text = "\n".join(gevent.util.format_run_info())
        logging.getLogger(__name__).warning("gevent run info follows", extra={"trusted_text": text})

    gevent.signal_handler(signal.SIGUSR2, dump)


class JournalHandler(logging.Handler):
    """Copy our own INFO-and-above records into the debug journal (debug API only)."""

    def __init__(self, record: Callable[[dict[str, Any]], None],
                 convert: Callable[[logging.LogRecord], dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self._record = record
        self._convert = convert

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._record(self._convert(record))
        except Exception:  # noqa: BLE001 - logging must never fail the caller
            self.handleError(record)


def install_journal(record: Callable[[dict[str, Any]], None],
                    convert: Callable[[logging.LogRecord], dict[str, Any]]) -> Callable[[], None]:
    """Feed the ``trade_canvas`` loggers' records to ``record``; returns the uninstaller."""
    handler = JournalHandler(record, convert)
    logger = logging.getLogger("trade_canvas")
    logger.addHandler(handler)
    return lambda: logger.removeHandler(handler)
