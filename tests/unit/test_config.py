import json

import pytest

from trade_canvas.config import load_settings, load_whitelist, unknown_names
from trade_canvas.errors import ConfigError


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.db_path == "data/market.db"
    assert settings.market_ws_catchup_limit == 5000
    assert settings.cors_origins == ("http://localhost:5173", "http://127.0.0.1:5173")
    assert settings.enable_debug_api is False


def test_values_are_parsed() -> None:
    settings = load_settings(
        {
            "TRADE_CANVAS_ENABLE_DEBUG_API": "yes",
            "TRADE_CANVAS_MARKET_WS_CATCHUP_LIMIT": "200",
            "TRADE_CANVAS_CORS_ORIGINS": " http://a , ,http://b ",
        }
    )
    assert settings.enable_debug_api is True
    assert settings.market_ws_catchup_limit == 200
    assert settings.cors_origins == ("http://a", "http://b")


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "TRADE_CANVAS_ENABLE_DEBUG_API": "maybe",
                "TRADE_CANVAS_MARKET_WS_CATCHUP_LIMIT": "10",
                "TRADE_CANVAS_MARKET_FORMING_MIN_INTERVAL_MS": "fast",
            }
        )
    text = str(info.value)
    for name in (
        "TRADE_CANVAS_ENABLE_DEBUG_API",
        "TRADE_CANVAS_MARKET_WS_CATCHUP_LIMIT",
        "TRADE_CANVAS_MARKET_FORMING_MIN_INTERVAL_MS",
    ):
        assert name in text


def test_pg_store_needs_a_dsn() -> None:
    with pytest.raises(ConfigError, match="TRADE_CANVAS_POSTGRES_DSN"):
        load_settings({"TRADE_CANVAS_ENABLE_PG_STORE": "1"})


def test_unknown_names_get_the_closest_known_name() -> None:
    found = unknown_names({"TRADE_CANVAS_DB_PAHT": "x", "TRADE_CANVAS_DB_PATH": "y", "HOME": "/"})
    assert found == [("TRADE_CANVAS_DB_PAHT", "TRADE_CANVAS_DB_PATH")]


def test_whitelist(tmp_path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"series_ids": ["binance:spot:BTC/USDT:1m", " binance:spot:BTC/USDT:1m"]}))
    assert load_whitelist(str(path)) == ("binance:spot:BTC/USDT:1m",)
    assert load_whitelist(str(tmp_path / "missing.json")) == ()
    path.write_text(json.dumps({"series_ids": ["nope"]}))
    with pytest.raises(ConfigError, match="WHITELIST"):
        load_whitelist(str(path))
    path.write_text("{")
    with pytest.raises(ConfigError):
        load_whitelist(str(path))


def test_security_settings_and_the_token_is_never_shown() -> None:
    settings = load_settings({
        "TRADE_CANVAS_API_TOKEN": "a-long-enough-secret",
        "TRADE_CANVAS_ALLOWED_HOSTS": " Chart.Example , ,box.lan",
        "TRADE_CANVAS_TRUSTED_PROXY_HEADER": "X-Forwarded-For",
        "TRADE_CANVAS_MAX_CONNECTIONS_PER_PEER": "0",
    })
    assert settings.api_token == "a-long-enough-secret"
    assert "a-long-enough-secret" not in repr(settings)
    assert settings.allowed_hosts == ("chart.example", "box.lan")
    assert settings.max_connections_per_peer == 0
    defaults = load_settings({})
    assert (defaults.api_token, defaults.write_rate_per_s, defaults.max_connections_per_peer) == (
        "", 20000.0, 256)
    with pytest.raises(ConfigError) as info:
        load_settings({"TRADE_CANVAS_API_TOKEN": "short secret!",
                       "TRADE_CANVAS_TRUSTED_PROXY_HEADER": "X Forwarded",
                       "TRADE_CANVAS_HTTP_READ_TIMEOUT_S": "0"})
    text = str(info.value)
    assert "TRADE_CANVAS_API_TOKEN=***" in text and "short secret" not in text
    assert "TRADE_CANVAS_TRUSTED_PROXY_HEADER" in text and "TRADE_CANVAS_HTTP_READ_TIMEOUT_S" in text
