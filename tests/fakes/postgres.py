"""The PostgreSQL test server: its DSN, throwaway schemas, the rule that CI never skips, and
throwaway clusters a test can restart.

``TRADE_CANVAS_TEST_POSTGRES_DSN`` overrides the default, the local trust-auth server. An
unreachable server skips the Postgres tests, except with ``CI=true``, where it is a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

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


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own (``initdb`` + ``pg_ctl``) that a test may stop and restart.

    Tuned to start fast, not to keep data: small ``shared_buffers``, ``fsync=off``. Run as the
    ``postgres`` user when the tests run as root (``initdb`` refuses root). Fails, never skips,
    when the binaries are missing.
    """

    def __init__(self, port: int, max_connections: int = 60) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="tc_pg_"))
        self.data = self.root / "data"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.options = (f"-p {port} -c listen_addresses=127.0.0.1 "
                        f"-c unix_socket_directories={self.root} -c shared_buffers=16MB "
                        f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                        f"-c max_connections={max_connections}")
        for tool in ("initdb", "pg_ctl"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not on PATH: the throwaway Postgres cannot start",
                            pytrace=False)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        self.start()
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o",
                  self.options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect every session; ``immediate``: like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        """Stop the server if it runs and delete its files."""
        subprocess.run([*self._as_postgres, "pg_ctl", "-D", str(self.data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
