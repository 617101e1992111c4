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


@pytest.mark.postgres
def test_two_workers_add_up_whichever_answers(start_server, tmp_path, monkeypatch) -> None:
    from tests.fakes.postgres import drop_schema, new_schema_name, reachable_dsn

    dsn, schema = reachable_dsn(), new_schema_name()
    directory = tmp_path / "prom"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    try:
        server = start_server(
            TRADE_CANVAS_ENABLE_PG_STORE="1", TRADE_CANVAS_POSTGRES_DSN=dsn,
            TRADE_CANVAS_POSTGRES_SCHEMA=schema, TRADE_CANVAS_WORKERS="2",
            TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE="4")
        series = [f"okx:spot:M{i}/USDT:1m" for i in range(4)]
        for i in range(3):
            for name in series:  # a new connection each time: both workers take writes
                status, body = server.post("/api/market/ingest/candle_closed",
                                           {"series_id": name, "candle": candle(aligned_past(9 - i))})
                assert status == 200, body
        # Each worker publishes its status board into its own files there (the health check
        # that started the test needed only the first worker to be up).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            workers = {p.name.rsplit("_", 1)[-1] for p in directory.glob("gauge_live*")}
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, workers
        for _ in range(6):  # separate connections, answered by either worker
            found = scrape(server)
            stored = sum(v for (name, labels), v in found.items()
                         if name == "trade_canvas_candles_stored_total" and ("source", "http") in labels)
            assert stored == 12
            requests = sum(v for (name, labels), v in found.items()
                           if name == "trade_canvas_ingest_seconds_count")
            assert requests == 12
    finally:
        server.stop()
        drop_schema(dsn, schema)
