"""Postgres-only behaviour: migrations, concurrent boot, connection loss, configuration faults."""

from __future__ import annotations

import secrets
import threading
from typing import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.fakes.tcp_relay import TcpRelay
from trade_canvas.candles import Candle
from trade_canvas.errors import ConfigError, Unavailable
from trade_canvas.storage.pg_schema import MIGRATIONS, run_migrations
from trade_canvas.storage.postgres import PostgresCandleStore, redact_dsn

pytestmark = pytest.mark.postgres

S = "binance:futures:BTC/USDT:1m"
PASSWORD = "s3cr3t-Pa55"


def make(t: int, price: float = 100.0) -> Candle:
    return Candle(t, price, price + 2, price - 2, price + 1, 1.0)


def recorded_versions(dsn: str, schema: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                sql.Identifier(schema, "schema_migrations")
            )
        ).fetchall()
    return [row[0] for row in rows]


def test_migrations_are_idempotent(postgres_dsn: str, fresh_schema: str) -> None:
    for _ in range(2):
        store = PostgresCandleStore(postgres_dsn, schema=fresh_schema)
        store.upsert_candles(S, [make(60)])
        store.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert run_migrations(conn, fresh_schema) == []
    assert recorded_versions(postgres_dsn, fresh_schema) == [m.version for m in MIGRATIONS]


def test_two_stores_booting_at_once_both_succeed(postgres_dsn: str, fresh_schema: str) -> None:
    barrier = threading.Barrier(2)
    stores: list[PostgresCandleStore] = []
    errors: list[BaseException] = []

    def boot() -> None:
        barrier.wait()
        try:
            stores.append(PostgresCandleStore(postgres_dsn, schema=fresh_schema))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stores[0].upsert_candles(S, [make(60)])
    assert stores[1].count(S) == 1
    for store in stores:
        store.close()
    assert recorded_versions(postgres_dsn, fresh_schema) == [m.version for m in MIGRATIONS]


def terminate_backends(dsn: str, application_name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


def test_writes_survive_terminated_connections(postgres_dsn: str, fresh_schema: str) -> None:
    app = f"tc_kill_{secrets.token_hex(4)}"
    store = PostgresCandleStore(
        make_conninfo(postgres_dsn, application_name=app), schema=fresh_schema, pool_max_size=3
    )
    acknowledged: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        batch = 0
        while not stop.is_set() and batch < 400:
            size = 5 if batch % 2 else 100  # both the INSERT and the COPY paths
            times = [(batch * 1000 + i) * 60 for i in range(size)]
            try:
                store.upsert_candles(S, [make(t) for t in times])
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)
                return
            acknowledged.extend(times)
            batch += 1

    writer = threading.Thread(target=write)
    writer.start()
    killed = 0
    for _ in range(5):
        stop.wait(0.1)
        killed += terminate_backends(postgres_dsn, app)
    stop.set()
    writer.join()
    assert errors == []
    assert killed > 0
    assert [c.candle_time for c in store.read_range(S, 0, 2**62)] == sorted(acknowledged)
    store.close()


def test_reads_retry_after_terminated_connections(postgres_dsn: str, fresh_schema: str) -> None:
    app = f"tc_kill_{secrets.token_hex(4)}"
    store = PostgresCandleStore(
        make_conninfo(postgres_dsn, application_name=app),
        schema=fresh_schema,
        pool_min_size=3,
        pool_max_size=3,
    )
    store.upsert_candles(S, [make(60), make(120)])
    assert terminate_backends(postgres_dsn, app) == 3
    store.ping()
    assert store.head_time(S) == 120
    store.close()


def test_closed_store_raises_unavailable(postgres_store: PostgresCandleStore) -> None:
    postgres_store.close()
    with pytest.raises(Unavailable):
        postgres_store.count(S)


@pytest.fixture
def relay(postgres_dsn: str) -> Iterator[TcpRelay]:
    params = psycopg.conninfo.conninfo_to_dict(postgres_dsn)
    relay = TcpRelay(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    yield relay
    relay.cut()


def test_ping_raises_unavailable_when_server_unreachable(
    postgres_dsn: str, postgres_schema: str, relay: TcpRelay
) -> None:
    dsn = make_conninfo(postgres_dsn, host="127.0.0.1", port=str(relay.port))
    store = PostgresCandleStore(dsn, schema=postgres_schema, connect_timeout_s=1.0)
    store.ping()
    relay.cut()
    with pytest.raises(Unavailable):
        store.ping()
    store.close()


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test",
        f"host=127.0.0.1 port=1 user=postgres password={PASSWORD} dbname=test",
    ],
)
def test_unreachable_server_names_setting_and_hides_password(dsn: str) -> None:
    with pytest.raises(Unavailable) as info:
        PostgresCandleStore(dsn, connect_timeout_s=1.0)
    message = str(info.value)
    assert "TRADE_CANVAS_POSTGRES_DSN" in message
    assert PASSWORD not in message
    assert "***" in message


def test_rejected_login_is_a_config_error(postgres_dsn: str) -> None:
    dsn = make_conninfo(postgres_dsn, dbname="tc_no_such_db", password=PASSWORD)
    with pytest.raises(ConfigError) as info:
        PostgresCandleStore(dsn)
    assert "TRADE_CANVAS_POSTGRES_DSN" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_malformed_dsn_is_a_config_error_without_password() -> None:
    with pytest.raises(ConfigError) as info:
        PostgresCandleStore(f"garbage password={PASSWORD}")
    assert "TRADE_CANVAS_POSTGRES_DSN" in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("schema", ["", "1abc", "a-b", 'x"; DROP TABLE y; --', "sch ema"])
def test_bad_schema_name_is_a_config_error(postgres_dsn: str, schema: str) -> None:
    with pytest.raises(ConfigError, match="TRADE_CANVAS_POSTGRES_SCHEMA"):
        PostgresCandleStore(postgres_dsn, schema=schema)


@pytest.mark.parametrize(
    "dsn, expected",
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?password=pw&ssl=1", "postgresql://h/db?password=***&ssl=1"),
        ("host=h password=pw user=u", "host=h password=*** user=u"),
        ("host=h password = 'p w\\'x' user=u", "host=h password = *** user=u"),
        ("host=h user=u", "host=h user=u"),
    ],
)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


def test_plain_tables_without_timescaledb(postgres_dsn: str, fresh_schema: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        available = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    if available != (0,):
        pytest.skip("timescaledb is available on this server")
    store = PostgresCandleStore(postgres_dsn, schema=fresh_schema)
    store.upsert_candles(S, [make(t * 60) for t in range(100)])
    assert store.count(S) == 100
    store.close()
    with psycopg.connect(postgres_dsn) as conn:
        kind = conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'candles'",
            (fresh_schema,),
        ).fetchone()
        assert kind == ("r",)
