"""Who may call what: token, Origin, Host and the write rate (Falcon TestClient)."""

from typing import Any

import pytest

from tests.api.conftest import NOW
from trade_canvas.config import load_settings
from trade_canvas.http.access import Access, RateLimiter, host_name, is_write
from trade_canvas.http.ws import dispatch_websockets

S = "binance:futures:BTC/USDT:1m"
TOKEN = "s3cret-token-0123456789"
CLOSED = "/api/market/ingest/candle_closed"


def body(t: int = NOW - NOW % 60) -> dict:
    candle = {"candle_time": t, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 1.0}
    return {"series_id": S, "candle": candle}


def test_no_token_configured_keeps_every_route_open(client) -> None:
    assert client.simulate_post(CLOSED, json=body()).status_code == 200


def test_writes_need_the_token_when_one_is_set(make_client) -> None:
    client = make_client(TRADE_CANVAS_API_TOKEN=TOKEN, TRADE_CANVAS_ENABLE_DEBUG_API="1")
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        result = client.simulate_post(CLOSED, json=body(), headers=headers)
        assert result.status_code == 401, headers
        assert "API token" in result.json["detail"]
        assert result.headers["www-authenticate"] == "Bearer"
    # the query parameter is for browsers' WebSocket and EventSource, not for writes
    assert client.simulate_post(CLOSED, json=body(), params={"token": TOKEN}).status_code == 401
    crash = client.simulate_post("/api/runtime/debug/crash", json={"series_id": S, "kind": "hub"})
    assert crash.status_code == 401
    forced = client.simulate_get("/api/market/top_markets", params={"market": "spot", "force": "1"})
    assert forced.status_code == 401
    assert client.runtime.store.series_ids() == []
    ok = client.simulate_post(CLOSED, json=body(), headers={"Authorization": f"bearer {TOKEN}"})
    assert ok.status_code == 200
    # reads stay open
    assert client.simulate_get("/api/market/candles", params={"series_id": S}).status_code == 200
    assert client.simulate_get("/api/runtime/actors").status_code == 200


def test_reads_need_the_token_with_token_reads(make_client) -> None:
    client = make_client(TRADE_CANVAS_API_TOKEN=TOKEN, TRADE_CANVAS_API_TOKEN_READS="1")
    read = "/api/market/candles"
    assert client.simulate_get(read, params={"series_id": S}).status_code == 401
    assert client.simulate_get(read, params={"series_id": S, "token": TOKEN}).status_code == 200
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.simulate_get(read, params={"series_id": S}, headers=headers).status_code == 200
    assert client.simulate_get("/api/health").status_code == 200
    assert client.simulate_get("/api/ready").status_code == 200


def test_foreign_origins_cannot_write(make_client) -> None:
    client = make_client()
    evil = client.simulate_post(CLOSED, json=body(), headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "origin not allowed" in evil.json["detail"]
    assert client.runtime.store.series_ids() == []
    app = client.simulate_post(CLOSED, json=body(), headers={"Origin": "http://localhost:5173"})
    assert app.status_code == 200
    assert app.headers["access-control-allow-origin"] == "http://localhost:5173"
    same = client.simulate_post(CLOSED, json=body(NOW - NOW % 60 - 60),
                                headers={"Origin": "http://falconframework.org"})
    assert same.status_code == 200


@pytest.mark.parametrize("origins", ["", ","])
def test_an_empty_origin_list_means_no_cross_origin_access(make_client, origins: str) -> None:
    client = make_client(TRADE_CANVAS_CORS_ORIGINS=origins)
    origin = {"Origin": "http://localhost:5173"}
    read = client.simulate_get("/api/health", headers=origin)
    assert "access-control-allow-origin" not in read.headers
    preflight = client.simulate_options(CLOSED, headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert client.simulate_post(CLOSED, json=body(), headers=origin).status_code == 403


def test_a_loopback_server_answers_only_loopback_or_allowed_host_names(make_client) -> None:
    client = make_client(TRADE_CANVAS_ALLOWED_HOSTS="Chart.Example")
    loopback = {"SERVER_NAME": "127.0.0.1"}

    def get(host: str) -> Any:
        return client.simulate_get("/api/health", headers={"Host": host}, extras=loopback)

    for host in ("localhost:8000", "127.0.0.1", "127.0.0.2:80", "[::1]:8000", "LOCALHOST",
                 "chart.example:8000"):
        assert get(host).status_code == 200, host
    for host in ("rebind.evil.example:8000", "10.0.0.5:8000", "localhost.evil.example"):
        result = get(host)
        assert result.status_code == 421, host
        assert "host not allowed" in result.json["detail"]
    # a server on another address (behind a proxy, with a token) does not judge Host
    assert client.simulate_get("/api/health", headers={"Host": "anything.example"}).status_code == 200


def test_writes_are_rate_limited_per_client(make_client) -> None:
    client = make_client(TRADE_CANVAS_WRITE_RATE_PER_S="0.001", TRADE_CANVAS_WRITE_BURST="2")
    times = [NOW - NOW % 60 - 60 * i for i in range(4)]
    codes = [client.simulate_post(CLOSED, json=body(t), remote_addr="10.0.0.1").status_code
             for t in times[:3]]
    assert codes == [200, 200, 429]
    limited = client.simulate_post(CLOSED, json=body(times[3]), remote_addr="10.0.0.1")
    assert limited.json == {"detail": "too many write requests; retry later"}
    assert int(limited.headers["retry-after"]) >= 1
    assert client.runtime.store.count(S) == 2
    assert client.simulate_post(CLOSED, json=body(times[3]), remote_addr="10.0.0.2").status_code == 200
    assert client.simulate_get("/api/market/candles", params={"series_id": S},
                               remote_addr="10.0.0.1").status_code == 200


def test_the_trusted_proxy_header_names_the_client(make_client) -> None:
    client = make_client(TRADE_CANVAS_WRITE_RATE_PER_S="0.001", TRADE_CANVAS_WRITE_BURST="1",
                         TRADE_CANVAS_TRUSTED_PROXY_HEADER="X-Forwarded-For")
    t = NOW - NOW % 60

    def post(forwarded: str, when: int) -> int:
        return client.simulate_post(CLOSED, json=body(when), remote_addr="127.0.0.1",
                                    headers={"X-Forwarded-For": forwarded}).status_code

    assert post("6.6.6.6, 1.1.1.1", t) == 200
    assert post("7.7.7.7, 1.1.1.1", t - 60) == 429  # the proxy appended 1.1.1.1 both times
    assert post("1.1.1.1, 2.2.2.2", t - 120) == 200
    ignored = make_client(TRADE_CANVAS_WRITE_RATE_PER_S="0.001", TRADE_CANVAS_WRITE_BURST="1")
    first = ignored.simulate_post(CLOSED, json=body(t), headers={"X-Forwarded-For": "1.1.1.1"})
    second = ignored.simulate_post(CLOSED, json=body(t - 60), headers={"X-Forwarded-For": "2.2.2.2"})
    assert (first.status_code, second.status_code) == (200, 429)


def test_rate_limiter_refills_and_forgets_idle_clients() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0], max_clients=3)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.5]
    now[0] = 0.5
    assert limiter.take("a") == 0.0 and limiter.take("a") == 0.5
    for name in "bcde":
        limiter.take(name)
    assert len(limiter._buckets) <= 3
    assert RateLimiter(0.0, 1).take("x") == 0.0  # 0 = no limit


def test_write_classification_and_host_names() -> None:
    assert is_write("POST", "/api/market/ingest/candle_closed", "")
    assert is_write("GET", "/api/market/top_markets", "market=spot&force=YES")
    assert not is_write("GET", "/api/market/top_markets", "market=spot&force=0")
    assert not is_write("GET", "/api/market/candles", "force=1")
    assert [host_name(h) for h in ("LocalHost:80", "[::1]:8000", "::1", "a.b")] == [
        "localhost", "::1", "::1", "a.b"]


class _Session:
    def __init__(self) -> None:
        self.served = 0

    def serve(self, environ: dict) -> None:
        self.served += 1


def _upgrade(**headers: str) -> dict:
    environ = {"PATH_INFO": "/ws/market", "HTTP_UPGRADE": "websocket", "REQUEST_METHOD": "GET",
               "gunicorn.socket": object(), "SERVER_NAME": "127.0.0.1", "QUERY_STRING": "",
               "HTTP_HOST": "127.0.0.1:8000"}
    environ.update(headers)
    return environ


def _dispatch(access: Access, environ: dict) -> tuple[list[str], _Session]:
    """Return the statuses answered (none for a session) and the session handler."""
    session = _Session()
    statuses: list[str] = []
    wsgi = dispatch_websockets(lambda e, s: [b"app"], {"/ws/market": session}, access)  # type: ignore[dict-item]
    try:
        wsgi(environ, lambda status, headers: statuses.append(status))
    except StopIteration:
        pass  # the session ran and owns the socket
    return statuses, session


def test_websocket_upgrades_check_origin_host_and_token() -> None:
    access = Access(load_settings({"TRADE_CANVAS_API_TOKEN": TOKEN}))
    for environ in (_upgrade(), _upgrade(QUERY_STRING="token=nope"),
                    _upgrade(QUERY_STRING=f"token={TOKEN}", HTTP_ORIGIN="http://evil.example"),
                    _upgrade(QUERY_STRING=f"token={TOKEN}", HTTP_HOST="evil.example")):
        statuses, session = _dispatch(access, environ)
        assert session.served == 0 and statuses[0][:3] in ("401", "403", "421")
    for environ in (_upgrade(QUERY_STRING=f"token={TOKEN}"),
                    _upgrade(HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ORIGIN="http://localhost:5173")):
        statuses, session = _dispatch(access, environ)
        assert session.served == 1 and statuses == []
    open_access = Access(load_settings({}))
    assert _dispatch(open_access, _upgrade())[1].served == 1  # no Origin: not a browser
    assert _dispatch(open_access, _upgrade(HTTP_ORIGIN="http://evil.example"))[1].served == 0
