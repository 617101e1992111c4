#!/usr/bin/env bash
# Bootstrap .venv on first run (and when setup.cfg changes), then serve the backend with
# gunicorn + one gevent worker. Usage: scripts/dev_backend.sh [--host H] [--port P]
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=127.0.0.1
PORT=8000
while [ $# -gt 0 ]; do
    case "$1" in
        --host) HOST="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.trade_canvas_installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    echo "installing trade_canvas into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e .
    touch "$stamp"
fi

# Development defaults (override any of them from the environment).
export TRADE_CANVAS_DB_PATH="${TRADE_CANVAS_DB_PATH:-data/market.db}"
export TRADE_CANVAS_ENABLE_DEBUG_API="${TRADE_CANVAS_ENABLE_DEBUG_API:-1}"
export TRADE_CANVAS_ENABLE_DEV_API="${TRADE_CANVAS_ENABLE_DEV_API:-1}"

echo "serving on http://$HOST:$PORT (store: $TRADE_CANVAS_DB_PATH)"
exec .venv/bin/python -m trade_canvas serve --host "$HOST" --port "$PORT"
