"""``python -m benchmarks --quick`` as a smoke test: it must run, lose nothing, crash nothing.

Timings never fail this test (they depend on the machine); the command itself exits non-zero
only when a benchmark raised, lost WebSocket messages or saw the server die.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fakes.replay import ROOT

pytestmark = pytest.mark.integration

EXPECTED = {
    "ingest": ["single_candles_per_s", "batch_candles_per_s"],
    "reads": ["tail500_req_per_s", "tail500_p50_ms", "tail500_p99_ms", "tail5000_req_per_s"],
    "fanout": ["sub100_p99_ms", "sub1000_p99_ms", "sub1000_from_send_p99_ms", "sub2000_lost",
               "sub2000_max_ms", "sub1000x100_p99_ms", "sub1000draw_from_send_p99_ms",
               "sub1000draw_draw_from_send_p99_ms", "sub1000draw_draw_mean_bytes"],
    "isolation": ["baseline_p99_ms", "during_catchup_p99_ms", "during_catchup_max_ms", "catchup_s"],
    "feeds": ["followed_series", "cpu_per_series_pct_core", "rss_per_series_kib",
              "closed_delay_p99_ms"],
    "factors": ["full_recompute_s"],
    "memory": ["rss_idle_kib", "rss_per_1000_stored_candles_kib", "rss_per_websocket_client_kib",
               "rss_per_series_kib"],
}


@pytest.mark.timeout(300)
def test_quick_benchmarks_run_clean(tmp_path):
    output = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    results = json.loads(output.read_text())
    for name, keys in EXPECTED.items():
        entry = results["benchmarks"][name]
        assert "error" not in entry and not entry["problems"], entry
        for key in keys:
            assert isinstance(entry["figures"].get(key), (int, float)), (name, key)
    assert results["benchmarks"]["fanout"]["figures"]["sub2000_lost"] == 0
    assert results["benchmarks"]["fanout"]["figures"]["sub1000draw_draw_lost"] == 0
    assert results["benchmarks"]["isolation"]["figures"]["lost"] == 0
