"""Serve the app with gunicorn: one gevent worker, no preload, runtime stopped on worker exit.

The app is named by its dotted path (``trade_canvas.http.app:get_app()``) so it loads inside
the worker after gevent has patched the standard library, and so this module does not import
the HTTP layer (imports point one way: http -> runtime).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.util import import_app

from trade_canvas.config import Settings, is_loopback, load_settings
from trade_canvas.errors import ConfigError

logger = logging.getLogger(__name__)

APP_PATH = "trade_canvas.http.app:get_app()"
WORKER_CLASS = "trade_canvas.runtime.worker.Worker"  # gevent's, with per-client bounds
GRACEFUL_TIMEOUT_S = 5


def _post_worker_init(worker: Any) -> None:
    from trade_canvas.runtime.logs import install_run_info_dump
    from trade_canvas.runtime.boot import current_runtime

    install_run_info_dump()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        # Close WebSocket sessions at once so the graceful period is not spent waiting on them.
        runtime = current_runtime()
        if runtime is not None:
            runtime.begin_shutdown()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _child_exit(server: Any, worker: Any) -> None:
    # Multiprocess metrics (PROMETHEUS_MULTIPROC_DIR): a dead worker's live gauges stop counting.
    from prometheus_client import multiprocess, values

    if values.ValueClass is not values.MutexValue:
        multiprocess.mark_process_dead(worker.pid)


def _worker_exit(server: Any, worker: Any) -> None:
    from trade_canvas.runtime.boot import current_runtime

    runtime = current_runtime()
    if runtime is not None:
        runtime.stop()


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn application with our fixed production options."""

    def __init__(
        self, host: str, port: int, access_log: bool = False, log_format: str = "text",
        workers: int = 1,
    ) -> None:
        self.options = {
            "bind": f"{host}:{port}",
            # More than one only in cluster mode (Postgres): each worker is a node that owns
            # some series and follows the others' writes (README "Running several processes").
            "workers": workers,
            "worker_class": WORKER_CLASS,
            "worker_connections": 10000,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "timeout": 60,
            "keepalive": 75,
            "preload_app": False,
            "accesslog": "-" if access_log else None,
            # gunicorn's own lines (boot, worker exits, access log) in the same format as ours
            "logger_class": ("trade_canvas.runtime.logs.JsonGunicornLogger"
                             if log_format == "json" else "gunicorn.glogging.Logger"),
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
            # gunicorn >= 24 opens a control socket in ~/.gunicorn; we have no use for it and
            # several servers on one machine would fight over the path.
            "control_socket_disable": True,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return import_app(APP_PATH)


def exposure_problem(host: str, settings: Settings) -> str | None:
    """Return why serving on ``host`` is refused (beyond loopback without a token), or None."""
    if is_loopback(host) or settings.api_token or settings.allow_unauthenticated:
        return None
    return (
        f"refusing to serve on {host or 'every address'} without TRADE_CANVAS_API_TOKEN: anyone "
        "who reaches the port could write candles, run backtests and use the debug routes. Set "
        "TRADE_CANVAS_API_TOKEN, serve on 127.0.0.1, or set TRADE_CANVAS_ALLOW_UNAUTHENTICATED=1 "
        "if a firewall or an authenticating proxy guards the port."
    )


def serve(host: str, port: int, access_log: bool = False, workers: int | None = None) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; 2 if the bind is refused."""
    from trade_canvas.runtime.logs import configure_logging

    if workers is not None:
        # The workers load their settings from the environment they inherit.
        os.environ["TRADE_CANVAS_WORKERS"] = str(workers)
    try:
        settings = load_settings(os.environ)
    except ConfigError:
        settings = None  # the worker reports every bad value when it boots
    if settings is not None:
        configure_logging(settings.log_level, settings.log_format)
        problem = exposure_problem(host, settings)
        if problem is not None:
            logger.error("%s", problem)
            return 2
        if not is_loopback(host) and not settings.api_token:
            logger.warning(
                "SERVING ON %s WITHOUT AUTHENTICATION (TRADE_CANVAS_ALLOW_UNAUTHENTICATED=1): "
                "anyone who reaches port %d can write candles, run backtests and use the "
                "debug routes", host or "every address", port)
    log_format = settings.log_format if settings is not None else "text"
    # Bad settings (WORKERS>1 on SQLite included) boot one worker, which names them and exits 3.
    Server(host, port, access_log, log_format,
           settings.workers if settings is not None else 1).run()
    return 0
