"""The project's replay exchange (a local Binance) as a subprocess, for API and integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ReplayExchange:
    """The project's Binance replay exchange as a subprocess."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trade_canvas.replay", "--port", str(self.port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.get("/_replay/state")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        raise AssertionError("replay exchange did not start")

    def env(self) -> dict[str, str]:
        """Settings that point the backend at this exchange."""
        return {
            "TRADE_CANVAS_BINANCE_SPOT_BASE_URL": f"{self.base}/spot",
            "TRADE_CANVAS_BINANCE_FUTURES_BASE_URL": f"{self.base}/futures",
            "TRADE_CANVAS_BINANCE_SPOT_WS_URL": f"ws://127.0.0.1:{self.port}/spot",
            "TRADE_CANVAS_BINANCE_FUTURES_WS_URL": f"ws://127.0.0.1:{self.port}/futures",
        }

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
