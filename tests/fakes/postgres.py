"""The PostgreSQL test server: its DSN, throwaway schemas, and the rule that CI never skips.

``TRADE_CANVAS_TEST_POSTGRES_DSN`` overrides the default, the local trust-auth server. An
unreachable server skips the Postgres tests, except with ``CI=true``, where it is a failure.
"""

from __future__ import annotations

import os
import secrets

import psycopg
import pytest
from psycopg import sql

from trade_canvas.storage.postgres import redact_dsn

DEFAULT_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def configured_dsn() -> str:
    """Return the test server's DSN from the environment, or the default."""
    return os.environ.get("TRADE_CANVAS_TEST_POSTGRES_DSN", DEFAULT_TEST_DSN)


def reachable_dsn() -> str:
    """Return the test server's DSN; skip the test when unreachable, fail instead under CI."""
    dsn = configured_dsn()
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        message = (
            f"PostgreSQL test server {redact_dsn(dsn)} is unreachable "
            f"(set TRADE_CANVAS_TEST_POSTGRES_DSN): {exc}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return dsn


def new_schema_name() -> str:
    """Return a fresh schema name for tests."""
    return f"tc_test_{secrets.token_hex(6)}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
