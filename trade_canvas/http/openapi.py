"""GET /api/openapi.json: the OpenAPI 3.1 document of every route, and the WebSocket protocol.

Why a declarative table and not a generator: requests are validated by hand at the edge
(``http/media.py``'s ``query_int``/``read_json_object``, the pure parsers ``parse_series_id`` and
``parse_candle``), with bounds and messages the chart app relies on. spectree or apispec would
generate the document only from pydantic/marshmallow models attached to every resource, i.e.
rewriting every resource's validation (and its error texts) around those models. Instead this
module states each route once (parameters with the same bounds as the resource code, bodies,
answers, errors) and the tests hold it to the code from both sides: ``tests/api/test_openapi.py``
checks that the routes here are exactly the app's routes and methods for a given set of
flags, and ``tests/integration/test_openapi_contract.py`` runs schemathesis against the
running server, so a parameter, status or answer shape that drifts fails CI.

The WebSocket protocol (``/ws/market``, ``/ws/debug``) is documented in the same document: the
GET operation of each path describes the upgrade, and ``components.schemas`` holds every
client and server message (``WsClientMessage``, ``WsServerMessage``).
"""

from __future__ import annotations

from typing import Any

import falcon
import orjson

from trade_canvas import __version__
from trade_canvas.config import Settings
from trade_canvas.http.market import MAX_BATCH, MAX_READ_LIMIT
from trade_canvas.http.media import MAX_QUERY_INT
from trade_canvas.series import MAX_EPOCH_SECONDS

JSON = "application/json"
Schema = dict[str, Any]

# -- schemas -------------------------------------------------------------------------------------

INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
OBJ = {"type": "object"}
NULLABLE_INT = {"type": ["integer", "null"]}
EPOCH = {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH_SECONDS}


def ref(name: str) -> Schema:
    """Return a ``$ref`` to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """Return an object schema; further properties are allowed (answers may grow)."""
    return {"type": "object", "required": list(required),
            "properties": {**required, **(optional or {})}}


def array(items: Schema, min_items: int | None = None, max_items: int | None = None) -> Schema:
    """Return an array schema."""
    schema: Schema = {"type": "array", "items": items}
    if min_items is not None:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


SCHEMAS: dict[str, Schema] = {
    "Detail": obj({"detail": {"type": ["string", "object"]}}),
    "SeriesId": {"type": "string", "minLength": 1, "maxLength": 128,
                 "description": "exchange:market:symbol:timeframe, e.g. binance:spot:BTC/USDT:1m"},
    "Candle": obj({"candle_time": INT, "open": NUM, "high": NUM, "low": NUM, "close": NUM,
                   "volume": NUM}),
    "CandleIn": obj({
        "candle_time": EPOCH,
        **{k: {"type": ["number", "string"]} for k in ("open", "high", "low", "close", "volume")},
    }),
    "Candles": obj({"series_id": STR, "server_head_time": NULLABLE_INT,
                    "candles": array(ref("Candle"))}),
    "IngestOne": obj({"ok": BOOL, "series_id": STR, "candle_time": INT}),
    "IngestBatch": obj({"ok": BOOL, "series_id": STR, "count": INT, "first_candle_time": INT,
                        "last_candle_time": INT}),
    "Actor": obj({"kind": STR, "series_id": {"type": ["string", "null"]}, "state": {
        "enum": ["starting", "running", "restarting", "stopped", "failed"]},
        "restarts": INT, "queue_depth": INT, "messages_handled": INT},
        {"last_error": {"type": ["string", "null"]}}),
    "StatusBoard": obj({"version": STR, "started_at": NUM, "uptime_s": NUM, "store_backend": STR,
                        "counts_by_kind": OBJ, "series_count": INT,
                        "websocket_connections": INT, "read_cache": OBJ, "rest_limits": OBJ,
                        "cluster": {"type": ["object", "null"]},
                        "actors": array(ref("Actor"))}),
    "Job": obj({"status": STR, "job_id": STR}),
    # WebSocket messages (see /ws/market)
    "WsSubscribe": obj({"type": {"const": "subscribe"}, "series_id": ref("SeriesId")}, {
        "since": EPOCH, "supports_batch": BOOL, "draw": BOOL}),
    "WsUnsubscribe": obj({"type": {"const": "unsubscribe"}, "series_id": ref("SeriesId")}),
    "WsClientMessage": {"oneOf": [ref("WsSubscribe"), ref("WsUnsubscribe")]},
    "WsCandleClosed": obj({"type": {"const": "candle_closed"}, "series_id": STR,
                           "candle": ref("Candle")}),
    "WsCandlesBatch": obj({"type": {"const": "candles_batch"}, "series_id": STR,
                           "candles": array(ref("Candle"))}),
    "WsCandleForming": obj({"type": {"const": "candle_forming"}, "series_id": STR,
                            "candle": ref("Candle")}),
    "WsGap": obj({"type": {"const": "gap"}, "series_id": STR, "expected_next_time": INT,
                  "actual_time": INT}),
    "WsError": obj({"type": {"const": "error"}, "code": {"enum": [
        "bad_request", "slow_consumer", "capacity", "unavailable", "rate_limited", "error"]},
        "message": STR}, {"series_id": {"type": ["string", "null"]}}),
    "WsDrawDelta": obj({"type": {"const": "draw_delta"}, "series_id": STR,
                        "from_version_id": INT, "instruction_catalog_patch": array(OBJ),
                        "removed_ids": array(STR), "next_cursor": OBJ}),
    "WsSystem": obj({"type": {"const": "system"}, "series_id": STR, "event": STR,
                     "message": STR, "data": OBJ}),
    "WsServerMessage": {"oneOf": [ref(name) for name in (
        "WsCandleClosed", "WsCandlesBatch", "WsCandleForming", "WsGap", "WsError",
        "WsDrawDelta", "WsSystem")]},
    "WsDebugMessage": {"oneOf": [
        obj({"type": {"const": "debug_snapshot"}, "events": array(OBJ)}),
        obj({"type": {"const": "debug_event"}, "event": OBJ}),
        ref("WsError")]},
}

# -- parameters ----------------------------------------------------------------------------------


def query(name: str, schema: Schema, required: bool = False, doc: str = "") -> Schema:
    """Return a query parameter."""
    param = {"name": name, "in": "query", "required": required, "schema": schema}
    return {**param, "description": doc} if doc else param


def int_query(name: str, low: int, high: int = MAX_QUERY_INT, *, default: int | None = None,
              required: bool = False, doc: str = "") -> Schema:
    """Return an integer query parameter with the bounds ``query_int`` enforces."""
    schema: Schema = {"type": "integer", "minimum": low, "maximum": high}
    if default is not None:
        schema["default"] = default
    return query(name, schema, required, doc)


SERIES = query("series_id", ref("SeriesId"), True)
WINDOW = int_query("window_candles", 1, 5000, default=2000)
AT_TIME = int_query("at_time", 0, MAX_EPOCH_SECONDS, required=True)
BOOL_QUERY = {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no", "on", "off"]}

# -- operations ----------------------------------------------------------------------------------

ERROR_TEXT = {
    400: "malformed request (bad JSON, not an object, unparsable series id)",
    401: "API token required (TRADE_CANVAS_API_TOKEN) and missing or wrong",
    403: "Origin not allowed",
    404: "not found",
    408: "request not received in time",
    409: "conflict (e.g. the factor ledger lags the candles)",
    413: "body over 1 MiB",
    415: "body is not application/json",
    421: "Host not allowed on a loopback bind",
    422: "invalid field values",
    429: "rate or capacity limit",
    500: "the backtest failed in freqtrade (the body says why)",
    502: "the exchange could not be reached",
    503: "store or actor temporarily unavailable; retry",
}
READ_ERRORS = (401, 421, 503)
WRITE_ERRORS = (400, 401, 403, 408, 413, 415, 421, 422, 429, 503)


def op(summary: str, ok: Schema | None, *, params: tuple[Schema, ...] = (),
       body: Schema | None = None, errors: tuple[int, ...] = (), status: int = 200,
       media: str = JSON, tag: str = "market", write: bool = False) -> Schema:
    """Return one operation: its parameters, body, answer and errors."""
    answer: Schema = {"description": summary}
    if ok is not None:
        answer["content"] = {media: {"schema": ok}}
    responses: Schema = {str(status): answer}
    for code in sorted({*errors, *(WRITE_ERRORS if write else READ_ERRORS)}):
        responses[str(code)] = {"description": ERROR_TEXT[code],
                                "content": {JSON: {"schema": ref("Detail")}}}
    operation: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    return operation


INGEST_ONE = obj({"series_id": ref("SeriesId"), "candle": ref("CandleIn")})
INGEST_BATCH = obj({"series_id": ref("SeriesId"),
                    "candles": array(ref("CandleIn"), min_items=1, max_items=MAX_BATCH)},
                   {"publish_ws": BOOL})
REPLAY_BODY = obj({"series_id": ref("SeriesId")}, {
    "to_time": NULLABLE_INT, "window_candles": {"type": ["integer", "null"]},
    "window_size": {"type": ["integer", "null"]},
    "snapshot_interval": {"type": ["integer", "null"]}})
WS_DOC = ("WebSocket: send `Upgrade: websocket`. Client messages are `WsClientMessage`, server "
          "messages `WsServerMessage` (components.schemas); a plain GET answers 400. See README "
          "\"WebSocket\" for catch-up, ordering and slow-consumer rules.")


def _always() -> dict[str, dict[str, Schema]]:
    return {
        "/api/health": {"get": op("liveness", obj({"status": {"const": "ok"}}), tag="ops")},
        "/api/ready": {"get": op("readiness", obj({"ready": BOOL, "store_backend": STR}),
                                 tag="ops")},
        "/api/runtime/actors": {"get": op("the actor status board", ref("StatusBoard"),
                                          tag="ops")},
        "/api/runtime/cluster": {"get": op(
            "nodes, series owners with epochs and heads (cluster mode; else 404)", OBJ,
            tag="ops", errors=(404,))},
        "/metrics": {"get": op("Prometheus text format", {"type": "string"}, tag="ops",
                               media="text/plain")},
        "/": {"get": op("the status page (HTML)", STR, tag="ops", media="text/html")},
        "/ops": {"get": op("the status page (HTML)", STR, tag="ops", media="text/html")},
        "/api/openapi.json": {"get": op("this document", OBJ, tag="ops")},
        "/api/market/candles": {"get": op(
            "stored candles: the newest `limit`, or the first `limit` after `since`",
            ref("Candles"), errors=(422,),
            params=(SERIES, int_query("since", 0, MAX_EPOCH_SECONDS),
                    int_query("limit", 1, MAX_READ_LIMIT, default=500)))},
        "/api/market/whitelist": {"get": op("the whitelist series",
                                            obj({"series_ids": array(STR)}))},
        "/api/market/top_markets": {"get": op(
            "Binance markets ranked by 24h quote volume", OBJ, errors=(400, 422, 502),
            params=(query("market", {"enum": ["spot", "futures"]}, True),
                    query("quote_asset", {"type": "string", "minLength": 1, "maxLength": 12}),
                    int_query("limit", 1, 200, default=20),
                    query("exchange", {"const": "binance"}),
                    query("force", BOOL_QUERY, doc="1: refetch now (counts as a write)")))},
        "/api/market/top_markets/stream": {"get": op(
            "Server-sent events of the ranking", STR, media="text/event-stream",
            errors=(400, 422),
            params=(query("market", {"enum": ["spot", "futures"]}, True),
                    query("quote_asset", {"type": "string", "minLength": 1, "maxLength": 12}),
                    int_query("limit", 1, 200, default=20),
                    query("interval_s", {"type": "number", "minimum": 0.2, "maximum": 30}),
                    int_query("max_events", 0, 1000, default=0)))},
        "/api/market/ingest/candle_closed": {"post": op(
            "store one closed candle, then publish it", ref("IngestOne"), body=INGEST_ONE,
            write=True)},
        "/api/market/ingest/candles_closed_batch": {"post": op(
            "store up to 5000 closed candles in one transaction", ref("IngestBatch"),
            body=INGEST_BATCH, write=True)},
        "/api/backtest/strategies": {"get": op(
            "strategy names freqtrade finds", obj({"strategies": array(STR)}), tag="backtest",
            params=(query("recursive", BOOL_QUERY),), errors=(422,))},
        "/api/backtest/pair_timeframes": {"get": op(
            "timeframes with candle files for a pair", OBJ, tag="backtest", errors=(400, 422),
            params=(query("pair", {"type": "string", "minLength": 1}, True),))},
        "/api/backtest/run": {"post": op(
            "run one freqtrade backtest and wait for it", OBJ, tag="backtest", write=True,
            errors=(500, 502),
            body=obj({"strategy_name": STR, "pair": STR, "timeframe": STR},
                     {"timerange": {"type": ["string", "null"]}}))},
        "/api/backtest/results": {"get": op(
            "running, queued, then finished backtests", obj({"results": array(OBJ)}),
            tag="backtest", errors=(422,), params=(int_query("limit", 1, 1000, default=20),))},
        "/api/backtest/results/{job_id}": {"get": op(
            "one backtest with its output", OBJ, tag="backtest", errors=(404,),
            params=({"name": "job_id", "in": "path", "required": True, "schema": STR},))},
        "/api/factor/catalog": {"get": op("factors and their toggles", OBJ, tag="factor")},
        "/api/factor/slices": {"get": op(
            "factor slices at a time", OBJ, tag="factor", errors=(404, 409, 422),
            params=(SERIES, AT_TIME, WINDOW))},
        "/api/factor/health": {"get": op("factor ledger state of a series", OBJ, tag="factor",
                                         errors=(422,), params=(SERIES,))},
        "/api/draw/delta": {"get": op(
            "draw instructions changed after a cursor", OBJ, tag="factor", errors=(404, 409, 422),
            params=(SERIES, int_query("cursor_version_id", 0, default=0), WINDOW,
                    int_query("at_time", 0, MAX_EPOCH_SECONDS)))},
        "/api/frame/live": {"get": op("candles, slices and draw state at the head", OBJ,
                                      tag="factor", errors=(404, 409, 422),
                                      params=(SERIES, WINDOW))},
        "/api/frame/at_time": {"get": op("candles, slices and draw state at a time", OBJ,
                                         tag="factor", errors=(404, 409, 422),
                                         params=(SERIES, AT_TIME, WINDOW))},
        "/api/delta/poll": {"get": op(
            "draw changes after an id", OBJ, tag="factor", errors=(404, 409, 422),
            params=(SERIES, int_query("after_id", 0, default=0),
                    int_query("limit", 1, 5000, default=2000), WINDOW))},
        "/api/replay/prepare": {"post": op(
            "check a series can be replayed up to a time", OBJ, tag="replay", write=True,
            errors=(404, 409), body=REPLAY_BODY)},
        "/ws/market": {"get": op(WS_DOC, None, tag="websocket", status=101, errors=(400,))},
    }


def _gated(settings: Settings) -> dict[str, dict[str, Schema]]:
    paths: dict[str, dict[str, Schema]] = {}
    if settings.enable_replay_v1:
        paths["/api/replay/build"] = {"post": op(
            "build the replay package of the newest N candles", ref("Job"), tag="replay",
            write=True, errors=(404, 409), body=REPLAY_BODY)}
        paths["/api/replay/status"] = {"get": op(
            "a package build's progress and metadata", OBJ, tag="replay", errors=(404, 422),
            params=(query("job_id", STR, True), query("include_preload", BOOL_QUERY)))}
        paths["/api/replay/window"] = {"get": op(
            "the window holding a bar (gzip when accepted)", OBJ, tag="replay",
            errors=(404, 422),
            params=(query("job_id", STR, True), int_query("target_idx", 0, required=True)))}
        paths["/api/replay/coverage_status"] = {"get": op(
            "a coverage job's state", OBJ, tag="replay", errors=(404, 422),
            params=(query("job_id", STR, True),))}
        if settings.enable_replay_ensure_coverage:
            paths["/api/replay/ensure_coverage"] = {"post": op(
                "fetch missing history over REST", ref("Job"), tag="replay", write=True,
                errors=(502,), body=obj({"series_id": ref("SeriesId")}, {
                    "target_candles": INT, "to_time": NULLABLE_INT}))}
    if settings.enable_dev_api:
        paths["/api/dev/market/ingest/candles_closed_batch"] = {"post": op(
            "same as /api/market/ingest/candles_closed_batch", ref("IngestBatch"),
            body=INGEST_BATCH, write=True)}
    if settings.enable_kline_health_v2 or settings.enable_debug_api:
        paths["/api/market/health"] = {"get": op(
            "the chart's K-line lamp", OBJ, tag="debug", errors=(400, 422),
            params=(query("series_id", ref("SeriesId"), True),
                    int_query("now_time", 0, MAX_EPOCH_SECONDS)))}
    if settings.enable_debug_api:
        paths.update(_debug(settings))
    return paths


def _debug(settings: Settings) -> dict[str, dict[str, Schema]]:
    paths = {
        "/ws/debug": {"get": op("WebSocket of backend events; messages are `WsDebugMessage`",
                                None, tag="websocket", status=101, errors=(400,))},
        "/api/market/debug/series_health": {"get": op(
            "gaps and base-minute completeness", OBJ, tag="debug", errors=(400, 422),
            params=(query("series_id", ref("SeriesId"), True),
                    int_query("max_recent_gaps", 1, 50, default=5),
                    int_query("recent_base_buckets", 1, 48, default=8)))},
        "/api/market/debug/ingest_state": {"get": op("live feeds and ingest settings", OBJ,
                                                     tag="debug")},
        "/api/market/ingest/candle_forming": {"post": op(
            "show a forming candle to subscribers", ref("IngestOne"), body=INGEST_ONE,
            tag="debug", write=True)},
        "/api/runtime/debug/crash": {"post": op(
            "make one actor of a series fail", obj({"ok": BOOL, "series_id": STR, "kind": STR}),
            status=202, tag="debug", write=True, errors=(404,),
            body=obj({"series_id": ref("SeriesId"),
                      "kind": {"enum": ["store", "hub", "feed", "factor"]}}))},
    }
    if settings.enable_runtime_metrics:
        paths["/api/market/debug/metrics"] = {"get": op("counters in the original's format",
                                                        OBJ, tag="debug")}
    return paths


def openapi_document(settings: Settings) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the routes these settings serve."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "trade_canvas", "version": __version__,
                 "description": "Market-data backend: candles, ingest, factors, replay, "
                                "backtests, operations. Every error is `{\"detail\": ...}`."},
        "paths": {**_always(), **_gated(settings)},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "TRADE_CANVAS_API_TOKEN"}},
        },
    }


class OpenApi:
    """GET /api/openapi.json: the document, encoded once."""

    def __init__(self, settings: Settings) -> None:
        self.body = orjson.dumps(openapi_document(settings))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body
