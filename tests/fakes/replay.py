"""The project's replay exchange (a local Binance) as a subprocess, for API and integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

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


class UpstreamSampler:
    """Samples the replay exchange's connections every 100 ms from a thread; each sample with a
    stream held by two upstream connections is kept in ``doubles`` as ``(phase, stream -> ids)``.

    ``state`` returns ``/_replay/state``; connections whose id is in ``ignored`` are left out (a
    frozen client's, which the exchange cannot tell from a live one); ``phase`` labels samples.
    """

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state
        self.ignored: set[int] = set()
        self.phase = ""
        self.samples = 0
        self.doubles: list[tuple[str, dict[str, list[int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def connections(self) -> list[dict[str, Any]]:
        return self.state()["connections"]  # type: ignore[no-any-return]

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                connections = self.connections()
            except OSError:
                continue
            on: dict[str, list[int]] = {}
            for conn in connections:
                if conn["id"] not in self.ignored:
                    for stream in conn["streams"]:
                        on.setdefault(f"{conn['market']}/{stream}", []).append(conn["id"])
            self.samples += 1
            double = {stream: ids for stream, ids in on.items() if len(ids) > 1}
            if double:
                self.doubles.append((self.phase, double))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
