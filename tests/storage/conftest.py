"""The storage contract runs once per backend: every test here takes the ``store`` fixture."""

from __future__ import annotations

from typing import Iterator

import pytest

from trade_canvas.storage.sqlite import SqliteCandleStore


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    if request.param == "sqlite":
        backend = SqliteCandleStore(str(tmp_path / "market.db"))
    else:  # pragma: no cover - new backends register here
        raise AssertionError(request.param)
    yield backend
    backend.close()
