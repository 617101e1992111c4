"""GET /metrics: Prometheus text with event instruments and the status board's figures."""

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import NOW

SERIES = "binance:spot:BTC/USDT:1m"


def samples(client) -> dict[tuple[str, tuple], float]:
    resp = client.simulate_get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def ingest(client, series: str, t: int) -> None:
    body = {"series_id": series, "candle": {"candle_time": t, "open": 1, "high": 2, "low": 0.5,
                                            "close": 1.5, "volume": 1}}
    assert client.simulate_post("/api/market/ingest/candle_closed", json=body).status_code == 200


def value(found, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def whitelisted(make_client, tmp_path):
    path = tmp_path / "whitelist.json"
    path.write_text('{"series_ids": ["%s"]}' % SERIES)
    return make_client(TRADE_CANVAS_WHITELIST_PATH=str(path), TRADE_CANVAS_ENABLE_DEBUG_API="1")


def test_ingest_counts_per_whitelisted_series_and_other(whitelisted) -> None:
    before = samples(whitelisted)
    t = NOW - NOW % 60 - 600
    ingest(whitelisted, SERIES, t)
    ingest(whitelisted, SERIES, t + 60)
    ingest(whitelisted, "okx:spot:ETH/USDT:1m", t)
    after = samples(whitelisted)
    stored = "trade_canvas_candles_stored_total"
    assert value(after, stored, series=SERIES, source="http") - value(
        before, stored, series=SERIES, source="http") == 2
    assert value(after, stored, series="other", source="http") - value(
        before, stored, series="other", source="http") == 1
    assert not any(dict(labels).get("series") == "okx:spot:ETH/USDT:1m" for _, labels in after)
    count = "trade_canvas_ingest_seconds_count"
    assert value(after, count, route="candle_closed") - value(
        before, count, route="candle_closed") == 3
    assert value(after, "trade_canvas_store_commit_seconds_count") - value(
        before, "trade_canvas_store_commit_seconds_count") >= 3
    assert value(after, "trade_canvas_series") == 2
    assert value(after, "trade_canvas_actors", kind="store", state="running") == 2
    assert value(after, "trade_canvas_actor_mailbox_depth", kind="store") >= 0
    assert value(after, "trade_canvas_ws_connections") == 0
    assert ("trade_canvas_build_info", (("store_backend", "sqlite"), ("version", __import__(
        "trade_canvas").__version__))) in after
    assert ("trade_canvas_read_cache_hits_total", ()) in after
    assert value(after, "trade_canvas_backtests", state="queued") == 0


def test_restarts_are_counted_by_kind(whitelisted) -> None:
    ingest(whitelisted, SERIES, NOW - NOW % 60 - 600)
    before = value(samples(whitelisted), "trade_canvas_actor_restarts_total", kind="hub")
    resp = whitelisted.simulate_post("/api/runtime/debug/crash",
                                     json={"series_id": SERIES, "kind": "hub"})
    assert resp.status_code == 202
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = samples(whitelisted)
        if value(found, "trade_canvas_actor_restarts_total", kind="hub") == before + 1:
            break
        time.sleep(0.1)
    assert value(found, "trade_canvas_actor_restarts_total", kind="hub") == before + 1


def test_alert_rules_name_only_metrics_we_serve(whitelisted) -> None:
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
    rules = yaml.safe_load((root / "alerts.yml").read_text())
    assert yaml.safe_load((root / "prometheus.yml").read_text())["rule_files"] == ["alerts.yml"]
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    names = {name for expr in exprs for name in re.findall(r"trade_canvas_[a-z_]+", expr)}
    body = whitelisted.simulate_get("/metrics").text
    # Board families appear with no sample when nothing feeds them: HELP lines name them all.
    served = set(re.findall(r"^# HELP (trade_canvas_[a-z_]+)", body, re.M))
    served |= {f"{n}_total" for n in served} | {f"{n}_bucket" for n in served}
    assert names - served == set()
