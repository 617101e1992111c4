from typing import Iterator

import pykka
import pytest
from falcon.testing import TestClient

from trade_canvas.config import load_settings
from trade_canvas.http.app import create_app
from trade_canvas.runtime.boot import boot
from trade_canvas.runtime.system import Runtime

NOW = 1_700_000_000


@pytest.fixture
def make_client(tmp_path) -> Iterator:
    runtimes: list[Runtime] = []

    def make(**env: str) -> TestClient:
        environ = {
            "TRADE_CANVAS_DB_PATH": str(tmp_path / "market.db"),
            "TRADE_CANVAS_WHITELIST_PATH": str(tmp_path / "none.json"),
            **env,
        }
        runtime = boot(load_settings(environ), clock=lambda: NOW)
        runtimes.append(runtime)
        client = TestClient(create_app(runtime))
        client.runtime = runtime  # type: ignore[attr-defined]
        return client

    yield make
    for runtime in runtimes:
        runtime.stop()
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
