#!/usr/bin/env bash
# Bootstrap .venv on first run (and when setup.cfg changes), then serve the backend with
# gunicorn + one gevent worker. Usage: scripts/dev_backend.sh [--host H] [--port P] [--demo]
# --demo also starts the local replay exchange and follows it instead of Binance (no network).
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=127.0.0.1
PORT=8000
DEMO=0
while [ $# -gt 0 ]; do
    case "$1" in
        --host) HOST="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --demo) DEMO=1; shift ;;
        -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.trade_canvas_installed_backtest
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    echo "installing trade_canvas with the backtest extra (freqtrade) into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[backtest]'
    touch "$stamp"
fi

# Development defaults (override any of them from the environment).
export TRADE_CANVAS_DB_PATH="${TRADE_CANVAS_DB_PATH:-data/market.db}"
export TRADE_CANVAS_ENABLE_DEBUG_API="${TRADE_CANVAS_ENABLE_DEBUG_API:-1}"
export TRADE_CANVAS_ENABLE_DEV_API="${TRADE_CANVAS_ENABLE_DEV_API:-1}"
# Backtests use ./freqtrade_user_data by default (paths relative to this directory).
export TRADE_CANVAS_BACKTEST_REQUIRE_TRADES="${TRADE_CANVAS_BACKTEST_REQUIRE_TRADES:-1}"
# A backtest over a timerange the store lacks fetches the closed candles from the exchange first.
export TRADE_CANVAS_BACKTEST_FETCH_MISSING="${TRADE_CANVAS_BACKTEST_FETCH_MISSING:-1}"

# Follow Binance live: the whitelist pinned, other series on demand (the runbook's defaults).
export TRADE_CANVAS_ENABLE_WHITELIST_INGEST="${TRADE_CANVAS_ENABLE_WHITELIST_INGEST:-1}"
export TRADE_CANVAS_ENABLE_ONDEMAND_INGEST="${TRADE_CANVAS_ENABLE_ONDEMAND_INGEST:-1}"
export TRADE_CANVAS_ONDEMAND_IDLE_TTL_S="${TRADE_CANVAS_ONDEMAND_IDLE_TTL_S:-60}"
export TRADE_CANVAS_ONDEMAND_MAX_JOBS="${TRADE_CANVAS_ONDEMAND_MAX_JOBS:-8}"
export TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES="${TRADE_CANVAS_MARKET_AUTO_TAIL_BACKFILL_MAX_CANDLES:-2000}"

if [ "$DEMO" = 1 ]; then
    DEMO_PORT="${TRADE_CANVAS_DEMO_EXCHANGE_PORT:-9000}"
    echo "starting the replay exchange on 127.0.0.1:$DEMO_PORT (recorded Binance data, real time)"
    .venv/bin/python -m trade_canvas replay-exchange --port "$DEMO_PORT" --anchor now --speed 1 \
        --futures-from-spot BTCUSDT &
    REPLAY_PID=$!
    trap 'kill "$REPLAY_PID" 2>/dev/null || true' EXIT INT TERM
    export TRADE_CANVAS_BINANCE_SPOT_BASE_URL="http://127.0.0.1:$DEMO_PORT/spot"
    export TRADE_CANVAS_BINANCE_FUTURES_BASE_URL="http://127.0.0.1:$DEMO_PORT/futures"
    export TRADE_CANVAS_BINANCE_SPOT_WS_URL="ws://127.0.0.1:$DEMO_PORT/spot"
    export TRADE_CANVAS_BINANCE_FUTURES_WS_URL="ws://127.0.0.1:$DEMO_PORT/futures"
    export TRADE_CANVAS_WHITELIST_PATH="${TRADE_CANVAS_DEMO_WHITELIST_PATH:-config/demo_whitelist.json}"
    export TRADE_CANVAS_DB_PATH="${TRADE_CANVAS_DEMO_DB_PATH:-data/demo.db}"
fi

echo "serving on http://$HOST:$PORT (store: $TRADE_CANVAS_DB_PATH)"
.venv/bin/python -m trade_canvas serve --host "$HOST" --port "$PORT"
