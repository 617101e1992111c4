"""The status page in a real headless browser (Debian's Chromium driven by playwright).

Outside CI the test is skipped when playwright or /usr/bin/chromium is missing; with CI=true
it fails instead (scripts/test.sh installs Chromium there).
"""

from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

from tests.integration.conftest import aligned_past, candle

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SERIES = "binance:spot:BTC/USDT:1m"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed: {exc}")
    if shutil.which(CHROMIUM) is None:
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context()
    page = context.new_page()
    page.problems = []  # type: ignore[attr-defined]
    page.on("console", lambda msg: msg.type == "error" and page.problems.append(msg.text))
    page.on("pageerror", lambda exc: page.problems.append(str(exc)))
    yield page
    context.close()


def expect(locator):  # playwright's assertions poll without eval (the page's CSP forbids it)
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def ingest(server, series: str, minutes_ago: int = 5) -> None:
    status, body = server.post("/api/market/ingest/candle_closed",
                               {"series_id": series, "candle": candle(aligned_past(minutes_ago))})
    assert status == 200, body


def test_page_shows_an_ingested_series_and_a_restart(start_server, page) -> None:
    server = start_server(TRADE_CANVAS_ENABLE_DEBUG_API="1")
    ingest(server, SERIES)
    page.goto(server.base + "/")
    row = page.locator(f'#series tr[data-series="{SERIES}"]')
    row.wait_for(timeout=10_000)
    assert "running" in row.inner_text()
    assert "store" in page.locator("#kinds").inner_text()
    status, _ = server.post("/api/runtime/debug/crash", {"series_id": SERIES, "kind": "store"})
    assert status == 202
    failure = page.locator("#failures tr", has_text="crash requested")
    failure.wait_for(timeout=15_000)
    assert SERIES in failure.inner_text() and "store" in failure.inner_text()
    expect(row.locator("td:nth-child(8)")).to_have_text("1", timeout=15_000)  # restarts
    assert page.problems == []  # type: ignore[attr-defined]
    assert page.request.get(server.base + "/ops").ok


def test_many_series_page_search_and_sort(start_server, page) -> None:
    server = start_server()
    names = [f"okx:spot:C{i:03d}/USDT:1m" for i in range(60)]
    for name in names:
        ingest(server, name)
    page.goto(server.base + "/ops")
    expect(page.locator("#page-info")).to_have_text("1–50 of 60 series", timeout=15_000)
    assert page.locator("#series tbody tr").count() == 50
    page.click("#next")
    assert page.locator("#series tbody tr").count() == 10
    page.fill("#search", "C042")
    rows = page.locator("#series tbody tr")
    assert rows.count() == 1 and names[42] in rows.first.inner_text()
    page.fill("#search", "")
    page.click('#series th[data-key="series_id"]')  # already ascending: now descending
    assert page.locator("#series tbody tr").first.get_attribute("data-series") == names[-1]
    assert page.problems == []  # type: ignore[attr-defined]
