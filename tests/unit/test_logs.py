import logging
import sys

from trade_canvas.runtime.logs import FORMAT, EscapingFormatter


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("trade_canvas.x", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_untrusted_values_cannot_forge_log_lines() -> None:
    forged = "binance:spot:BTC\n2026-01-01 00:00:00,000 ERROR [trade_canvas] forged\r\x00\x1b[31m:1m"
    text = EscapingFormatter(FORMAT).format(record("subscribe %s", forged))
    assert "\n" not in text and "\r" not in text and "\x00" not in text and "\x1b" not in text
    assert "BTC\\n2026-01-01" in text and "\\r\\x00\\x1b[31m" in text


def test_tracebacks_and_trusted_text_keep_their_lines() -> None:
    formatter = EscapingFormatter(FORMAT)
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed %s", "a\nb")
        rec.exc_info = sys.exc_info()
    text = formatter.format(rec)
    first, *rest = text.splitlines()
    assert first.endswith("failed a\\nb") and rest[0] == "Traceback (most recent call last):"
    dump = formatter.format(record("run info follows", trusted_text="line 1\nline 2"))
    assert dump.splitlines()[1:] == ["line 1", "line 2"]
