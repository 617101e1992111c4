"""Command line: ``python -m trade_canvas serve|replay-exchange|backfill|store ...``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch a sub-command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "replay-exchange":
        from trade_canvas.replay.server import main as replay_main

        return replay_main(args[1:])
    if args and args[0] == "backfill":
        from trade_canvas.runtime.backfill import main as backfill_main

        return backfill_main(args[1:])
    if args and args[0] == "store":
        from trade_canvas.storage.copy import main as copy_main

        if len(args) < 2 or args[1] != "copy":
            print("usage: python -m trade_canvas store copy --from SRC --to DST", file=sys.stderr)
            return 2
        return copy_main(args[2:])
    parser = argparse.ArgumentParser(prog="python -m trade_canvas")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve HTTP and WebSocket with gunicorn + gevent")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--workers", type=int, default=None,
                       help="server processes (default TRADE_CANVAS_WORKERS, 1); >1 needs Postgres")
    sub.add_parser("replay-exchange", help="local Binance replay exchange (see --help)")
    sub.add_parser("store", help="store copy --from SRC --to DST")
    sub.add_parser("backfill", help="backfill SERIES_ID --since DATE: deep history over REST")
    parsed = parser.parse_args(args)
    if parsed.command == "serve":
        from trade_canvas.runtime.server import serve as run_server

        return run_server(parsed.host, parsed.port, parsed.access_log, parsed.workers)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
