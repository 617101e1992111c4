"""GET /metrics on the real server, also in prometheus-client's multiprocess mode."""

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import aligned_past, candle

pytestmark = pytest.mark.integration

SERIES = "binance:spot:BTC/USDT:1m"


def scrape(server) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(server.base + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("multiproc", [False, True])
def test_scrape_after_ingest(start_server, tmp_path, monkeypatch, multiproc) -> None:
    if multiproc:
        directory = tmp_path / "prom"
        directory.mkdir()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    (tmp_path / "whitelist.json").write_text('{"series_ids": ["%s"]}' % SERIES)
    server = start_server()
    for i in range(3):
        status, _ = server.post("/api/market/ingest/candle_closed",
                                {"series_id": SERIES, "candle": candle(aligned_past(10 - i))})
        assert status == 200
    found: dict = {}
    deadline = time.monotonic() + 15  # the multiprocess board is published every 5 s
    while time.monotonic() < deadline:
        found = scrape(server)
        if found.get(("trade_canvas_series", ())) == 1:
            break
        time.sleep(0.5)
    key = ("trade_canvas_candles_stored_total", (("series", SERIES), ("source", "http")))
    assert found[key] == 3
    assert found[("trade_canvas_ingest_seconds_count", (("route", "candle_closed"),))] == 3
    assert found[("trade_canvas_series", ())] == 1
    assert found[("trade_canvas_actors", (("kind", "store"), ("state", "running")))] == 1
    if multiproc:
        assert any((tmp_path / "prom").iterdir())
