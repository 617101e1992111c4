"""Run the real server (gunicorn + gevent) as a subprocess on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fakes.replay import ROOT, ReplayExchange, free_port


class ServerProcess:
    """``python -m trade_canvas serve`` with its own env; stops on ``stop()``/``kill()``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/market"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_CANVAS_")}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trade_canvas", "serve", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + "/api/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise AssertionError(f"server not healthy in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM, wait, SIGKILL if needed; returns seconds taken."""
        start = time.monotonic()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return time.monotonic() - start

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    servers: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        settings = {
            "TRADE_CANVAS_DB_PATH": str(tmp_path / "market.db"),
            "TRADE_CANVAS_WHITELIST_PATH": str(tmp_path / "whitelist.json"),
            "TRADE_CANVAS_LOG_LEVEL": "INFO",
            **env,
        }
        server = ServerProcess(settings, tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.stop()


def candle(t: int, close: float = 1.5) -> dict:
    return {"candle_time": t, "open": 1.0, "high": 2.0, "low": 0.5, "close": close, "volume": 10.0}


def aligned_past(minutes_ago: int) -> int:
    now = int(time.time())
    return now - now % 60 - 60 * minutes_ago


@pytest.fixture
def start_replay(tmp_path) -> Iterator:
    exchanges: list[ReplayExchange] = []

    def start(*args: str) -> ReplayExchange:
        exchange = ReplayExchange(tmp_path / f"replay{len(exchanges)}.log", *args)
        exchanges.append(exchange)
        return exchange

    yield start
    for exchange in exchanges:
        exchange.stop()
