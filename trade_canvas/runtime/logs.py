"""Logging set-up (the only place handlers are installed) and the SIGUSR2 greenlet dump."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Callable

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


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``; pykka only from WARNING (it logs every actor start)."""
    root = logging.getLogger()
    if not any(getattr(h, "_trade_canvas", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter(FORMAT))
        handler._trade_canvas = True  # type: ignore[attr-defined]
        root.addHandler(handler)
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
