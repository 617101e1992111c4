"""Cluster settings: WORKERS>1 and CLUSTER=1 need Postgres; the lease TTL covers 4 ticks."""

import pytest

from trade_canvas.config import cluster_mode, load_settings, processes_per_ip
from trade_canvas.errors import ConfigError

PG = {"TRADE_CANVAS_ENABLE_PG_STORE": "1", "TRADE_CANVAS_POSTGRES_DSN": "postgresql://u@h/db"}


def test_defaults_are_one_process_without_cluster_mode() -> None:
    settings = load_settings({})
    assert settings.workers == 1 and not settings.cluster and not cluster_mode(settings)
    assert not cluster_mode(load_settings(PG))


@pytest.mark.parametrize("env, message", [
    ({"TRADE_CANVAS_WORKERS": "4"},
     "TRADE_CANVAS_WORKERS=4 needs TRADE_CANVAS_ENABLE_PG_STORE=1: the SQLite store serves one "
     "process"),
    ({"TRADE_CANVAS_CLUSTER": "1"}, "TRADE_CANVAS_CLUSTER=1 needs TRADE_CANVAS_ENABLE_PG_STORE=1"),
    ({**PG, "TRADE_CANVAS_CLUSTER_LEASE_TTL_S": "1.9"},
     "TRADE_CANVAS_CLUSTER_LEASE_TTL_S=1.9: must be at least 4 x TRADE_CANVAS_CLUSTER_TICK_S (2)"),
    ({"TRADE_CANVAS_WORKERS": "0"}, "TRADE_CANVAS_WORKERS='0': must be >= 1"),
])
def test_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert message in str(info.value)


@pytest.mark.parametrize("env", [
    {**PG, "TRADE_CANVAS_WORKERS": "3"}, {**PG, "TRADE_CANVAS_CLUSTER": "1"},
])
def test_cluster_mode_on_postgres(env: dict[str, str]) -> None:
    assert cluster_mode(load_settings(env))


@pytest.mark.parametrize("env, expected", [
    ({}, 1),
    ({**PG, "TRADE_CANVAS_WORKERS": "4"}, 4),  # cluster mode: the workers of one server
    ({**PG, "TRADE_CANVAS_CLUSTER": "1"}, 1),  # one process per host
    ({**PG, "TRADE_CANVAS_CLUSTER": "1", "TRADE_CANVAS_CLUSTER_PROCESSES_PER_IP": "3"}, 3),
    ({**PG, "TRADE_CANVAS_WORKERS": "4", "TRADE_CANVAS_CLUSTER_PROCESSES_PER_IP": "8"}, 8),
])
def test_processes_per_ip(env: dict[str, str], expected: int) -> None:
    assert processes_per_ip(load_settings(env)) == expected
