"""The OpenAPI document lists exactly the app's routes and methods, for every set of flags."""

from __future__ import annotations

import itertools

import pytest

METHODS = ("get", "post", "put", "patch", "delete")
FLAGS = ("TRADE_CANVAS_ENABLE_DEBUG_API", "TRADE_CANVAS_ENABLE_DEV_API",
         "TRADE_CANVAS_ENABLE_REPLAY_V1", "TRADE_CANVAS_ENABLE_KLINE_HEALTH_V2",
         "TRADE_CANVAS_ENABLE_RUNTIME_METRICS")


def app_routes(app) -> set[tuple[str, str]]:
    found = set()
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children or ())
        if node.resource is None:
            continue
        for method in METHODS:
            if hasattr(node.resource, f"on_{method}"):
                found.add((node.uri_template, method))
    return found


@pytest.mark.parametrize("flags", [
    combo for n in (0, 1, len(FLAGS)) for combo in itertools.combinations(FLAGS, n)
] + [("TRADE_CANVAS_ENABLE_REPLAY_V1",)])
def test_document_matches_the_routes(make_client, flags) -> None:
    env = {flag: "1" for flag in flags}
    if "TRADE_CANVAS_ENABLE_REPLAY_V1" not in flags:
        env["TRADE_CANVAS_ENABLE_REPLAY_V1"] = "0"
    client = make_client(**env)
    resp = client.simulate_get("/api/openapi.json")
    assert resp.status_code == 200
    document = resp.json
    assert document["openapi"].startswith("3.1")
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == app_routes(client.app)

