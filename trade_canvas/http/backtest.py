"""Backtest resources: strategies, pair timeframes, run, and the results for the chart app.

Run outcomes map to statuses here (the actor reports them as values): ``ok``, ``failed``
(freqtrade exited non-zero) and ``timeout`` (killed at TRADE_CANVAS_FREQTRADE_SUBPROCESS_TIMEOUT_S,
exit code 124) answer 200 with ``ok`` telling success, as the earlier backend answered a failed
freqtrade run; missing data and unusable exports answer 422 with an object detail; an unknown
strategy 404; a missing freqtrade 503 with an install hint; a full queue 429.
"""

from __future__ import annotations

from typing import Any

import falcon

from trade_canvas.freqtrade import commands as bt
from trade_canvas.freqtrade.values import BacktestJob, BacktestResult
from trade_canvas.http.errors import DetailError
from trade_canvas.http.media import query_bool, query_int, query_required, read_json_object
from trade_canvas.runtime.backtest import Backtests
from trade_canvas.runtime.system import Runtime

INSTALL_HINT = (
    "Install the backtest extra into the server's environment (.venv/bin/pip install -e "
    "'.[backtest]'), or point TRADE_CANVAS_FREQTRADE_BIN at a freqtrade executable and set "
    "TRADE_CANVAS_FREQTRADE_OFFLINE_MARKETS=0; then retry (no restart needed)."
)
_UNPROCESSABLE = frozenset({"no_ohlcv_history", "no_trades", "no_backtest_export",
                            "bad_backtest_export"})
_ANSWERED = frozenset({"ok", "failed", "timeout"})


def _backtests(runtime: Runtime) -> Backtests:
    if runtime.backtests is None:
        raise DetailError(503, "backtests are not running in this process")
    return runtime.backtests


def _require_freqtrade(backtests: Backtests) -> None:
    problem = backtests.freqtrade_missing()
    if problem is not None:
        raise DetailError(503, {"message": "freqtrade_not_installed", "error": problem,
                                "hint": INSTALL_HINT})


def run_status(result: BacktestResult) -> tuple[int, Any]:
    """Return the HTTP status and body (or error detail) for a finished run."""
    if result.status in _ANSWERED:
        return 200, result.to_dict()
    if result.status in _UNPROCESSABLE:
        return 422, {**result.detail, "id": result.job_id}
    if result.status == "strategy_not_found":
        return 404, f"Strategy not found in userdir: {result.detail.get('strategy')}"
    if result.detail.get("message") == "exchange_unreachable":
        return 502, {**result.detail, "id": result.job_id}
    if result.detail.get("message") == "freqtrade_unavailable":
        return 503, {"message": "freqtrade_not_installed", "error": result.detail.get("error"),
                     "hint": INSTALL_HINT, "id": result.job_id}
    return 500, {**result.detail, "id": result.job_id}


def _string_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise DetailError(422, f"{name} is required (a non-empty string)")
    return value


def parse_run_body(body: dict[str, Any]) -> bt.BacktestRequest:
    """Validate a run body: 400 for a bad strategy name (as before), 422 for the rest."""
    name = _string_field(body, "strategy_name")
    pair, timeframe = _string_field(body, "pair"), _string_field(body, "timeframe")
    timerange = body.get("timerange")
    if timerange is not None and not isinstance(timerange, str):
        raise DetailError(422, "timerange must be a string or null")
    if bt.STRATEGY_NAME_RE.fullmatch(name) is None:
        raise DetailError(400, "Invalid strategy_name")
    return bt.validate_request(name, pair, timeframe, timerange)


def job_summary(job: BacktestJob) -> dict[str, Any]:
    """Return a job without the child's output (the listing stays small)."""
    body = job.to_dict()
    if body["result"] is not None:
        body["result"] = {k: v for k, v in body["result"].items() if k not in ("stdout", "stderr")}
    return body


class Strategies:
    """GET /api/backtest/strategies?recursive=: the names freqtrade's list-strategies prints."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        recursive = query_bool(req, "recursive", True)
        backtests = _backtests(self.runtime)
        _require_freqtrade(backtests)
        resp.media = {"strategies": backtests.strategies(recursive)}


class PairTimeframes:
    """GET /api/backtest/pair_timeframes?pair=: timeframes with data files for the pair."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        pair = query_required(req, "pair")
        resp.media = _backtests(self.runtime).pair_timeframes(pair)


class Run:
    """POST /api/backtest/run: run one backtest and answer its result (waits for it)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_run_body(read_json_object(req))
        backtests = _backtests(self.runtime)
        _require_freqtrade(backtests)
        status, body = run_status(backtests.run(request))
        if status != 200:
            raise DetailError(status, body)
        resp.media = body


class Results:
    """GET /api/backtest/results?limit=: running, queued, then finished runs, newest first."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = query_int(req, "limit", default=20, minimum=1, maximum=1000)
        jobs = _backtests(self.runtime).results(limit or 20)
        resp.media = {"results": [job_summary(job) for job in jobs]}


class Result:
    """GET /api/backtest/results/{job_id}: one run with its full output."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.media = _backtests(self.runtime).result(job_id).to_dict()
