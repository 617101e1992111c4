"""TRADE_CANVAS_LOG_FORMAT=json: every line the server writes is one JSON object."""

import json
import time

import pytest

from tests.integration.conftest import aligned_past, candle

pytestmark = pytest.mark.integration

SERIES = "binance:spot:BTC/USDT:1m"


def test_json_lines_with_series_and_actor_fields(start_server) -> None:
    server = start_server(TRADE_CANVAS_LOG_FORMAT="json", TRADE_CANVAS_ENABLE_DEBUG_API="1")
    for i in range(5):
        status, _ = server.post("/api/market/ingest/candle_closed",
                                {"series_id": SERIES, "candle": candle(aligned_past(10 - i))})
        assert status == 200
    assert server.post("/api/runtime/debug/crash", {"series_id": SERIES, "kind": "store"})[0] == 202
    deadline = time.monotonic() + 10
    while "restart" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    failures = [line for line in lines if line.get("kind") == "store" or
                (line.get("series_id") == SERIES and "crash" in line["message"])]
    assert failures, lines
    # No line per candle: five ingests do not make five lines about the series.
    per_candle = [line for line in lines if "candle_closed" in line["message"]]
    assert per_candle == []
