"""Boot rules of many processes: SQLite serves one process, and says who holds the file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fakes.replay import ROOT, free_port

pytestmark = pytest.mark.integration


def serve(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_CANVAS_")}
    full.update({"TRADE_CANVAS_DB_PATH": str(tmp_path / "market.db"),
                 "TRADE_CANVAS_WHITELIST_PATH": str(tmp_path / "none.json"), **env})
    return subprocess.run(
        [sys.executable, "-m", "trade_canvas", "serve", "--port", str(free_port()), *args],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=60,
    )


def test_workers_without_postgres_are_refused(tmp_path) -> None:
    done = serve(tmp_path, "--workers", "3")
    assert done.returncode == 3
    assert ("TRADE_CANVAS_WORKERS=3 needs TRADE_CANVAS_ENABLE_PG_STORE=1: the SQLite store "
            "serves one process") in done.stderr + done.stdout


def test_second_server_on_one_sqlite_file_names_the_first(start_server, tmp_path) -> None:
    first = start_server()
    pid = int((tmp_path / "market.db.lock").read_text())
    assert pid != first.proc.pid  # the worker holds it, not the gunicorn master
    done = serve(tmp_path)
    assert done.returncode == 3
    assert f"is in use by another server (pid {pid}" in done.stderr + done.stdout
    assert first.get("/api/ready")[0] == 200  # the first one is untouched
