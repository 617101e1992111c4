"""Logging set-up (the only place handlers are installed) and the SIGUSR2 greenlet dump."""

from __future__ import annotations

import logging
import signal
import sys

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``; pykka only from WARNING (it logs every actor start)."""
    root = logging.getLogger()
    if not any(getattr(h, "_trade_canvas", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._trade_canvas = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pykka").setLevel(logging.WARNING)


def install_run_info_dump() -> None:
    """On SIGUSR2, log every greenlet's stack (thread dumps miss greenlets)."""
    import gevent
    import gevent.util

    def dump() -> None:
        logging.getLogger(__name__).warning(
            "gevent run info:\n%s", "\n".join(gevent.util.format_run_info())
        )

    gevent.signal_handler(signal.SIGUSR2, dump)
