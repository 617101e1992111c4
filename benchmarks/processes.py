"""The processes a benchmark drives: the real server, the replay exchange, and /proc readings.

The server is started exactly as in production (``python -m trade_canvas serve``: gunicorn, one
gevent worker) on a free loopback port with a temporary SQLite file, or on a fresh Postgres
schema that is dropped afterwards. Everything started here is stopped by ``stop()`` (SIGTERM to
the process group, SIGKILL after a timeout).
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process' soft RLIMIT_NOFILE towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class StoreChoice:
    """Which candle store the server uses; Postgres gets a fresh schema per server."""

    kind: str = "sqlite"
    dsn: str = field(default_factory=lambda: os.environ.get(
        "TRADE_CANVAS_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN))

    def env(self, workdir: Path, schema: str | None = None) -> tuple[dict[str, str], str | None]:
        """Return the server settings and the Postgres schema to drop afterwards (or None).

        ``schema`` puts the server on an existing (shared) schema, which its creator drops: the
        servers of a cluster share one (``new_schema``).
        """
        if self.kind == "sqlite":
            if schema is not None:
                raise ValueError("a shared schema needs the Postgres store")
            return {"TRADE_CANVAS_DB_PATH": str(workdir / "market.db")}, None
        owned = schema is None
        schema = schema or self.new_schema()
        return {
            "TRADE_CANVAS_ENABLE_PG_STORE": "1",
            "TRADE_CANVAS_POSTGRES_DSN": self.dsn,
            "TRADE_CANVAS_POSTGRES_SCHEMA": schema,
        }, schema if owned else None

    @staticmethod
    def new_schema() -> str:
        """Return a fresh schema name (the server creates the schema at boot)."""
        return f"bench_{os.getpid()}_{secrets.token_hex(4)}"

    def drop(self, schema: str | None) -> None:
        """Drop a benchmark schema."""
        if schema is None:
            return
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def proc_cpu_s(pid: int) -> float:
    """Return user + system CPU seconds of a process from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_memory_kb(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a process in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


class ServerProcess:
    """``python -m trade_canvas serve`` on a free port; ``worker_pid`` is the gevent worker."""

    def __init__(self, workdir: Path, store: StoreChoice, env: dict[str, str] | None = None,
                 name: str = "server", schema: str | None = None) -> None:
        """Start the server; ``schema``: run on this shared Postgres schema (not dropped here)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.store = store
        self.log_path = workdir / f"{name}.log"
        store_env, self.schema = store.env(workdir, schema)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_CANVAS_")}
        full_env.update({
            "TRADE_CANVAS_WHITELIST_PATH": str(workdir / "whitelist.json"),
            "TRADE_CANVAS_LOG_LEVEL": "WARNING",
            **store_env,
            **(env or {}),
        })
        raise_fd_limit()  # the server inherits the soft limit: thousands of sockets
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trade_canvas", "serve", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.worker_pid = 0
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + "/api/ready", timeout=2) as resp:
                    if resp.status == 200:
                        workers = _children(self.proc.pid)
                        if len(workers) == 1:
                            self.worker_pid = workers[0]
                            return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        """Whether the master and its worker still run."""
        return self.proc.poll() is None and os.path.exists(f"/proc/{self.worker_pid}")

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the server log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_s(self) -> float:
        """Return the worker's CPU seconds so far."""
        return proc_cpu_s(self.worker_pid)

    def memory_kb(self) -> dict[str, int]:
        """Return the worker's VmRSS and VmHWM."""
        return proc_memory_kb(self.worker_pid)

    def get_json(self, path: str, timeout: float = 30) -> Any:
        """GET a JSON document (raises on a non-2xx status)."""
        with urllib.request.urlopen(self.base + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def kill(self) -> None:
        """SIGKILL the process group (master and worker, as ``kill -9``) and reap the master."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``; drop a Postgres schema."""
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            self._log.close()
            self.store.drop(self.schema)


class ReplayProcess:
    """``python -m trade_canvas.replay`` on a free port."""

    def __init__(self, workdir: Path, *args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(workdir / "replay.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trade_canvas.replay", "--port", str(self.port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.state()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("replay exchange did not start") from None
                time.sleep(0.05)

    def env(self) -> dict[str, str]:
        """Return the server settings that point the Binance feed at this exchange."""
        return {
            "TRADE_CANVAS_BINANCE_SPOT_BASE_URL": f"{self.base}/spot",
            "TRADE_CANVAS_BINANCE_FUTURES_BASE_URL": f"{self.base}/futures",
            "TRADE_CANVAS_BINANCE_SPOT_WS_URL": f"ws://127.0.0.1:{self.port}/spot",
            "TRADE_CANVAS_BINANCE_FUTURES_WS_URL": f"ws://127.0.0.1:{self.port}/futures",
        }

    def state(self) -> Any:
        """Return ``/_replay/state``."""
        with urllib.request.urlopen(self.base + "/_replay/state", timeout=5) as resp:
            return json.loads(resp.read())

    def get_json(self, path: str) -> Any:
        """GET a JSON document from the exchange."""
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a timeout."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


@dataclass
class Context:
    """What every benchmark gets: mode, store choice, a scratch directory, found problems."""

    quick: bool
    store: StoreChoice
    workdir: Path
    problems: list[str] = field(default_factory=list)

    def server(self, name: str, env: dict[str, str] | None = None) -> "RunningServer":
        """Return a context manager starting a fresh server (own DB) and stopping it after."""
        return RunningServer(self, name, env or {})


class RunningServer:
    """``with ctx.server(name) as server``: records a crashed server as a problem."""

    def __init__(self, ctx: Context, name: str, env: dict[str, str]) -> None:
        self.ctx, self.name, self.env = ctx, name, env
        self.server: ServerProcess | None = None

    def __enter__(self) -> ServerProcess:
        self.server = ServerProcess(self.ctx.workdir / self.name, self.ctx.store, self.env, self.name)
        return self.server

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        if not self.server.alive():
            self.ctx.problems.append(
                f"{self.name}: server died during the benchmark:\n{self.server.log_tail()}")
        self.server.stop()
