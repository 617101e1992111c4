"""JSON log lines: one object per record, series and actor fields where known."""

import json
import logging
import sys
import threading

from trade_canvas.runtime.logs import JsonFormatter


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("trade_canvas.actors.store", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_one_json_object_per_line_with_the_series_found_in_the_message() -> None:
    text = JsonFormatter().format(record("store %s: write failed\n%s", "binance:spot:BTC/USDT:1m", "x"))
    assert "\n" not in text
    line = json.loads(text)
    assert line["level"] == "WARNING" and line["logger"] == "trade_canvas.actors.store"
    assert line["message"] == "store binance:spot:BTC/USDT:1m: write failed\nx"
    assert line["series_id"] == "binance:spot:BTC/USDT:1m"
    assert line["ts"].endswith("Z") and "T" in line["ts"]


def test_extra_fields_win_and_actor_threads_name_their_kind() -> None:
    rec = record("restarted", series_id="okx:spot:A/B:5m", kind="hub")
    line = json.loads(JsonFormatter().format(rec))
    assert line["series_id"] == "okx:spot:A/B:5m" and line["kind"] == "hub"
    seen: list[dict] = []
    thread = threading.Thread(
        target=lambda: seen.append(json.loads(JsonFormatter().format(record("hello")))),
        name="FactorActor-12",
    )
    thread.start()
    thread.join()
    assert seen[0]["actor"] == "FactorActor-12" and seen[0]["kind"] == "factor"
    assert "series_id" not in seen[0]


def test_tracebacks_and_trusted_text_stay_inside_the_object() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in line["exc"]
    dump = json.loads(JsonFormatter().format(record("run info", trusted_text="a\nb")))
    assert dump["text"] == "a\nb"
