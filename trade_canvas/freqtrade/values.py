"""The values of freqtrade backtests: settings, a run's result, a job as the listing shows it.

Shared by the runner, the backtest actor, the runtime facade and the HTTP resources, so none of
them imports another for a type.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trade_canvas.freqtrade import commands as bt

RunStatus = Literal[
    "ok", "failed", "timeout", "no_trades", "no_ohlcv_history", "strategy_not_found",
    "no_backtest_export", "bad_backtest_export", "error",
]


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """The outcome of one run; ``ok``/``exit_code``/``duration_ms``/``command``/``stdout``/
    ``stderr`` keep the earlier API's response shape."""

    job_id: str
    status: RunStatus
    exit_code: int
    duration_ms: int
    command: tuple[str, ...] = ()
    stdout: str = ""
    stderr: str = ""
    pair: str | None = None
    trading_mode: str | None = None
    series_id: str | None = None
    summary: bt.BacktestSummary | None = None
    export_zip: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BacktestResult:
        """Rebuild a result from ``to_dict``'s shape (a stored record)."""
        summary = data.get("summary")
        return cls(
            job_id=data["id"], status=data["status"], exit_code=data["exit_code"],
            duration_ms=data["duration_ms"], command=tuple(data.get("command") or ()),
            stdout=data.get("stdout", ""), stderr=data.get("stderr", ""),
            pair=data.get("pair"), trading_mode=data.get("trading_mode"),
            series_id=data.get("series_id"),
            summary=bt.BacktestSummary(**summary) if summary else None,
            export_zip=data.get("export_zip"), detail=dict(data.get("detail") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape of a run result."""
        return {
            "id": self.job_id, "ok": self.ok, "status": self.status,
            "exit_code": self.exit_code, "duration_ms": self.duration_ms,
            "command": list(self.command), "stdout": self.stdout, "stderr": self.stderr,
            "pair": self.pair, "trading_mode": self.trading_mode, "series_id": self.series_id,
            "summary": self.summary.to_dict() if self.summary else None,
            "export_zip": self.export_zip, "detail": dict(self.detail),
        }


MiB = 1024 * 1024

JobState = Literal["queued", "running", "done"]


@dataclass(frozen=True, slots=True)
class BacktestSettings:
    """Where freqtrade lives and how runs are bounded (built by ``config/`` from the env).

    ``datadir`` None: the base config's ``datadir`` (relative to the config file), else
    ``<userdir>/data``. ``python`` runs the offline wrapper; ``bin`` runs freqtrade directly when
    ``offline_markets`` is off and appears in download hints.
    """

    root: Path
    config_path: Path
    userdir: Path
    datadir: Path | None = None
    strategy_path: Path | None = None
    bin: str = "freqtrade"
    python: str = sys.executable
    offline_markets: bool = True
    subprocess_timeout_s: float = 120.0
    require_trades: bool = False
    max_concurrent: int = 2
    queue_size: int = 8
    keep_results: int = 50
    output_cap_bytes: int = MiB


@dataclass(frozen=True, slots=True)
class BacktestJob:
    """One submitted backtest as the listing shows it; ``result`` once ``state`` is done."""

    job_id: str
    request: bt.BacktestRequest
    state: JobState
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: BacktestResult | None = None
    progress: dict[str, Any] | None = None  # e.g. fetching missing candles before the run

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BacktestJob:
        """Rebuild a job from ``to_dict``'s shape (a stored record)."""
        result = data.get("result")
        return cls(
            job_id=data["id"], request=bt.BacktestRequest(**data["request"]),
            state=data["state"], submitted_at=data["submitted_at"],
            started_at=data.get("started_at"), finished_at=data.get("finished_at"),
            result=BacktestResult.from_dict(result) if result else None,
            progress=data.get("progress"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape used by the listing endpoint."""
        return {
            "id": self.job_id, "state": self.state,
            "request": {"strategy_name": self.request.strategy_name, "pair": self.request.pair,
                        "timeframe": self.request.timeframe,
                        "timerange": self.request.timerange},
            "submitted_at": self.submitted_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "progress": self.progress,
            "result": self.result.to_dict() if self.result else None,
        }
