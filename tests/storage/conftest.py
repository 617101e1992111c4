"""The storage contract runs once per backend: every test here takes the ``store`` fixture.

The Postgres half uses ``TRADE_CANVAS_TEST_POSTGRES_DSN`` (default: the local trust-auth
server). Each session works in its own schema ``tc_test_<random>``, dropped at the end; each
test starts from empty tables. An unreachable server skips those tests, except with
``CI=true``, where it is a failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from psycopg import sql

from tests.fakes.postgres import drop_schema, new_schema_name, reachable_dsn
from trade_canvas.storage.postgres import PostgresCandleStore
from trade_canvas.storage.sqlite import SqliteCandleStore


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """Return the test server's DSN; skip (fail under CI=true) when it cannot be reached."""
    return reachable_dsn()


@pytest.fixture(scope="session")
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """Yield this session's schema, migrated, and drop it at the end."""
    schema = new_schema_name()
    PostgresCandleStore(postgres_dsn, schema=schema).close()
    yield schema
    drop_schema(postgres_dsn, schema)


@pytest.fixture
def fresh_schema(postgres_dsn: str) -> Iterator[str]:
    """Yield an unused schema name for one test; drop the schema afterwards."""
    schema = new_schema_name()
    yield schema
    drop_schema(postgres_dsn, schema)


@pytest.fixture
def postgres_store(postgres_dsn: str, postgres_schema: str) -> Iterator[PostgresCandleStore]:
    """Yield a store on the session schema with empty tables."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        tables = ("candles", "factor_events", "factor_state", "draw_versions", "backtest_results")
        conn.execute(
            sql.SQL("TRUNCATE {}").format(
                sql.SQL(", ").join(sql.Identifier(postgres_schema, t) for t in tables)
            )
        )
    backend = PostgresCandleStore(postgres_dsn, schema=postgres_schema, pool_max_size=4)
    yield backend
    backend.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteCandleStore]:
    """Yield a store on a fresh SQLite file."""
    backend = SqliteCandleStore(str(tmp_path / "market.db"))
    yield backend
    backend.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Any:
    """Return a store of each backend in turn."""
    return request.getfixturevalue(f"{request.param}_store")
