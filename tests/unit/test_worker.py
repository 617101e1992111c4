"""The worker's pure parts: error answers, per-peer counts, and the bind check."""

import json

import pytest
from gunicorn.http import errors as http_errors

from trade_canvas.config import is_loopback, load_settings
from trade_canvas.errors import RequestTimeout
from trade_canvas.runtime.server import exposure_problem
from trade_canvas.runtime.worker import PeerCounts, error_answer, json_response


@pytest.mark.parametrize("exc,status", [
    (http_errors.InvalidRequestLine("GARBAGE"), 400),
    (http_errors.LimitRequestLine(9000, 4094), 414),
    (http_errors.LimitRequestHeaders("too many"), 431),
    (http_errors.InvalidChunkSize(b"zz"), 400),
    (http_errors.UnsupportedTransferCoding("gzip"), 501),
    (RequestTimeout("request not received within 2 s"), 408),
    (http_errors.InvalidResponseHeaderName("x\n"), 500),
    (RuntimeError("bug"), 500),
])
def test_error_answers(exc: BaseException, status: int) -> None:
    got, detail = error_answer(exc)
    assert got == status and isinstance(detail, str) and detail
    if status >= 500:
        assert detail == "internal_error"  # never the exception text


def test_json_response_is_a_whole_closing_answer() -> None:
    raw = json_response(431, "limit request headers fields")
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Connection: close" in head and b"Content-Type: application/json" in head
    assert json.loads(body) == {"detail": "limit request headers fields"}
    assert f"Content-Length: {len(body)}".encode() in head


def test_peer_counts_refuse_past_the_limit_per_address() -> None:
    peers = PeerCounts(2)
    assert [peers.enter("a"), peers.enter("a"), peers.enter("a"), peers.enter("b")] == [
        True, True, False, True]
    peers.leave("a")
    assert peers.enter("a") and not peers.enter("a")
    assert peers.refused == 2
    for _ in range(3):
        peers.leave("b")
    assert "b" not in peers.counts
    unlimited = PeerCounts(0)
    assert all(unlimited.enter("a") for _ in range(10_000))


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LocalHost", True), ("0.0.0.0", False), ("", False), ("::", False),
    ("10.0.0.5", False), ("example.com", False), ("localhost.example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_token_or_an_explicit_override() -> None:
    plain = load_settings({})
    assert exposure_problem("127.0.0.1", plain) is None
    problem = exposure_problem("0.0.0.0", plain)
    assert problem is not None and "TRADE_CANVAS_API_TOKEN" in problem
    assert "TRADE_CANVAS_ALLOW_UNAUTHENTICATED" in problem
    token = load_settings({"TRADE_CANVAS_API_TOKEN": "t" * 16})
    assert exposure_problem("0.0.0.0", token) is None
    allowed = load_settings({"TRADE_CANVAS_ALLOW_UNAUTHENTICATED": "1"})
    assert exposure_problem("192.168.1.4", allowed) is None
