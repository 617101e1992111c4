"""End to end on Postgres: the real server with TRADE_CANVAS_ENABLE_PG_STORE=1 on the test server.

The server connects with a DSN carrying a password (ignored under trust auth, never to be seen
in logs or responses) and its own ``application_name``, so that ``pg_terminate_backend`` hits
this server's connections only, not those of tests running beside it. The module works in
one schema, dropped at the end; each test uses its own series.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.fakes.postgres import drop_schema, new_schema_name, reachable_dsn
from tests.fakes.tcp_relay import TcpRelay
from tests.fakes.replay import ROOT, free_port
from tests.integration.conftest import aligned_past, candle
from tests.integration.test_feed import BTC, Watcher, assert_store_matches_exchange, feed_env
from tests.integration.test_server import connect, receive_times, subscribe

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PASSWORD = "Pg-s3cr3t-7f1d"
CANDLE_CLOSED = "/api/market/ingest/candle_closed"
CANDLES_BATCH = "/api/market/ingest/candles_closed_batch"


class Database:
    """The test server as this module's servers see it."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.admin_dsn = dsn
        self.schema = schema
        self.application_name = f"tc_it_{secrets.token_hex(4)}"
        # A DSN that already has one (a server without trust auth) keeps it as the secret.
        self.password = str(conninfo_to_dict(dsn).get("password") or PASSWORD)
        self.dsn = make_conninfo(
            dsn, password=self.password, application_name=self.application_name
        )

    def env(self, dsn: str | None = None, **extra: str) -> dict[str, str]:
        return {
            "TRADE_CANVAS_ENABLE_PG_STORE": "1",
            "TRADE_CANVAS_POSTGRES_DSN": dsn or self.dsn,
            "TRADE_CANVAS_POSTGRES_SCHEMA": self.schema,
            "TRADE_CANVAS_POSTGRES_CONNECT_TIMEOUT_S": "1",
            **extra,
        }

    def terminate_server_connections(self) -> int:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (self.application_name,),
            ).fetchall()
        return len(rows)


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    dsn = reachable_dsn()
    db = Database(dsn, new_schema_name())
    yield db
    drop_schema(dsn, db.schema)


def series_id(name: str) -> str:
    return f"binance:spot:{name}/USDT:1m"


def times_of(body: dict[str, Any]) -> list[int]:
    return [c["candle_time"] for c in body["candles"]]


def read_all(server, series: str) -> list[int]:
    """Page through every stored candle time of a series over HTTP."""
    times: list[int] = []
    since = 0
    while True:
        query = f"series_id={series}&since={since}&limit=5000"
        status, body = server.get(f"/api/market/candles?{query}")
        assert status == 200
        times += times_of(body)
        if len(body["candles"]) < 5000:
            return times
        since = times[-1]


def assert_password_hidden(db: Database, *texts: str) -> None:
    for text in texts:
        assert db.password not in text


def test_ingest_read_and_websocket(start_server, database: Database) -> None:
    server = start_server(**database.env())
    s = series_id("PGA")
    base = aligned_past(300)
    ws = connect(server)
    subscribe(ws, series=s)
    time.sleep(0.5)  # the hub registers the subscriber before the first write
    for i in range(3):
        status, body = server.post(CANDLE_CLOSED, {"series_id": s, "candle": candle(base + 60 * i)})
        assert status == 200 and body["candle_time"] == base + 60 * i
    status, body = server.post(
        CANDLES_BATCH, {"series_id": s, "candles": [candle(base + 60 * i) for i in range(3, 50)]}
    )
    assert status == 200 and body["count"] == 47
    expected = [base + 60 * i for i in range(50)]
    assert receive_times(ws, 50, timeout=15) == expected
    ws.close()

    status, body = server.get(f"/api/market/candles?series_id={s}&limit=5")
    assert status == 200 and times_of(body) == expected[-5:]
    assert body["server_head_time"] == expected[-1]
    status, body = server.get(f"/api/market/candles?series_id={s}&since={base + 60 * 9}&limit=3")
    assert status == 200 and times_of(body) == expected[10:13]
    status, body = server.get("/api/runtime/actors")
    assert status == 200 and body["store_backend"] == "postgres"
    assert server.get("/api/ready") == (200, {"ready": True, "store_backend": "postgres"})


def test_restart_keeps_data(start_server, database: Database) -> None:
    s = series_id("PGB")
    base = aligned_past(100)
    server = start_server(**database.env())
    status, _ = server.post(
        CANDLES_BATCH, {"series_id": s, "candles": [candle(base + 60 * i) for i in range(20)]}
    )
    assert status == 200
    assert server.stop() < 10
    again = start_server(**database.env())
    status, body = again.get(f"/api/market/candles?series_id={s}&limit=100")
    assert status == 200 and times_of(body) == [base + 60 * i for i in range(20)]


def test_terminated_connections_lose_no_acknowledged_write(
    start_server, database: Database
) -> None:
    server = start_server(**database.env(TRADE_CANVAS_POSTGRES_POOL_MAX_SIZE="3"))
    s = series_id("PGC")
    base = aligned_past(200_000)
    acked: list[int] = []
    refused: list[tuple[int, Any]] = []
    broken: list[Exception] = []  # e.g. a body that is not JSON, such as an HTML error page
    stop = threading.Event()

    def write() -> None:
        try:
            write_until_stopped()
        except Exception as exc:  # reported by the assertion below
            broken.append(exc)

    def write_until_stopped() -> None:
        i = slot = 0
        while not stop.is_set():
            single = i % 4 != 3  # mostly single candles, some batches (the COPY path)
            times = [base + 60 * (slot + k) for k in range(1 if single else 50)]
            slot += len(times)
            if single:
                status, body = server.post(
                    CANDLE_CLOSED, {"series_id": s, "candle": candle(times[0])}
                )
            else:
                status, body = server.post(
                    CANDLES_BATCH, {"series_id": s, "candles": [candle(t) for t in times]}
                )
            if status == 200:
                acked.extend(times)
            else:
                refused.append((status, body))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    killed = 0
    try:
        for _ in range(5):
            time.sleep(0.3)
            killed += database.terminate_server_connections()
    finally:
        time.sleep(0.3)
        stop.set()
        writer.join()
    assert broken == []
    assert killed > 0
    assert len(acked) > 50
    assert all(
        status == 503 and isinstance(body["detail"], str) for status, body in refused
    ), refused
    assert set(acked) <= set(read_all(server, s)), "acknowledged candles were lost"
    assert server.get("/api/ready")[0] == 200
    assert "Traceback" not in server.log()


def test_ready_fails_while_postgres_is_unreachable(start_server, database: Database) -> None:
    params = conninfo_to_dict(database.dsn)
    relay = TcpRelay(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    try:
        dsn = make_conninfo(database.dsn, host="127.0.0.1", port=str(relay.port))
        server = start_server(**database.env(dsn))
        assert server.get("/api/ready")[0] == 200
        relay.cut()
        status, body = server.get("/api/ready")
        assert status == 503 and "postgres" in body["detail"]
        assert database.password not in body["detail"]
        s = series_id("PGD")
        late = {"series_id": s, "candle": candle(aligned_past(5))}
        status, body = server.post(CANDLE_CLOSED, late)
        assert status == 503 and isinstance(body["detail"], str)
        relay.restore()
        deadline = time.monotonic() + 20
        while server.get("/api/ready")[0] != 200:
            assert time.monotonic() < deadline, "not ready again 20 s after the network came back"
            time.sleep(0.2)
        assert server.post(CANDLE_CLOSED, late)[0] == 200
        assert_password_hidden(database, server.log())
    finally:
        relay.cut()


def test_store_outage_leaves_no_hole_in_a_live_series(
    start_server, start_replay, database: Database
) -> None:
    """Issue 13: a cut lost the candles that closed meanwhile, and recovery took ~23 s."""
    params = conninfo_to_dict(database.dsn)
    relay = TcpRelay(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    exchange = start_replay("--speed", "120")
    try:
        dsn = make_conninfo(database.dsn, host="127.0.0.1", port=str(relay.port))
        server = start_server(**database.env(dsn), **feed_env(exchange))
        watcher = Watcher(server)
        watcher.wait_live(300 + 4)
        relay.cut()
        time.sleep(8.0)  # ~16 candles close at 120x; the pool backoff reaches 4-8 s
        relay.restore()
        back = time.monotonic()
        while server.get("/api/ready")[0] != 200:
            assert time.monotonic() - back < 5, "not ready 5 s after the store came back"
            time.sleep(0.1)
        # Rewrite a stored candle of the live series with the exchange's own values: its store
        # actor is the one that saw the outage.
        _, body = server.get(f"/api/market/candles?series_id={BTC}&limit=1")
        write = {"series_id": BTC, "candle": body["candles"][0]}
        while server.post(CANDLE_CLOSED, write)[0] != 200:
            assert time.monotonic() - back < 5, "writes refused 5 s after the store came back"
            time.sleep(0.1)
        watcher.wait_live(10)
        time.sleep(1.0)
        assert_store_matches_exchange(server, exchange, watcher.times)
        assert not [e for e in watcher.errors if e.get("code") != "unavailable"], watcher.errors
        watcher.close()
    finally:
        relay.cut()


def run_until_exit(env: dict[str, str], timeout: float = 30.0) -> tuple[int, str, float]:
    """Run the server expecting it to stop by itself; return exit code, output and seconds."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_CANVAS_")}
    full_env.update(env)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "trade_canvas", "serve", "--port", str(free_port())],
        cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=timeout, start_new_session=True,
    )
    return done.returncode, done.stdout.decode(errors="replace"), time.monotonic() - start


@pytest.mark.parametrize("problem", ["unreachable", "unknown database", "bad port", "not a dsn"])
def test_bad_dsn_at_boot_exits_with_one_clear_error(
    tmp_path, database: Database, problem: str
) -> None:
    dsn = {
        "unreachable": make_conninfo(database.dsn, host="127.0.0.1", port=str(free_port())),
        "unknown database": make_conninfo(database.dsn, dbname="tc_no_such_database"),
        "bad port": f"postgresql://postgres:{database.password}@127.0.0.1:notaport/test",
        "not a dsn": f"postgres host 127.0.0.1 password={database.password}",
    }[problem]
    code, log, took = run_until_exit(
        database.env(dsn, TRADE_CANVAS_WHITELIST_PATH=str(tmp_path / "none.json"))
    )
    assert code != 0 and took < 15
    errors = [line for line in log.splitlines() if "TRADE_CANVAS_POSTGRES_DSN" in line]
    assert len(errors) == 1 and "ERROR" in errors[0], log
    assert "Traceback" not in log
    assert "Worker failed to boot" in log
    assert_password_hidden(database, log)


def test_password_stays_out_of_status_and_log(start_server, database: Database) -> None:
    server = start_server(**database.env(TRADE_CANVAS_LOG_LEVEL="DEBUG"))
    s = series_id("PGF")
    server.post(CANDLE_CLOSED, {"series_id": s, "candle": candle(aligned_past(3))})
    server.get(f"/api/market/candles?series_id={s}")
    answers = [server.get(path) for path in ("/api/runtime/actors", "/api/ready", "/api/health")]
    assert all(status == 200 for status, _ in answers)
    server.stop()
    assert "postgres" in server.log()  # the store's start line names the (redacted) DSN
    assert_password_hidden(database, repr(answers), server.log())
