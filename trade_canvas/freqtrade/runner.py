"""One freqtrade run: the userdir and data files it needs, its child process, its result.

Blocking, and run outside the actor: ``run_backtest`` and ``list_strategies`` are called in a
worker thread (a greenlet under gevent's monkey-patching, where ``subprocess`` is cooperative).
A child runs in its own session with its output in files (only the last ``output_cap_bytes``
are kept), and is killed as a process group at the timeout. ``BacktestActor`` in
``actors/backtest.py`` queues the runs; ``commands.py`` builds the command lines and parses
the exports.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from zipfile import BadZipFile, ZipFile

import trade_canvas
from trade_canvas.freqtrade import commands as bt
from trade_canvas.freqtrade.values import BacktestResult, BacktestSettings, RunStatus
from trade_canvas.candles import Candle
from trade_canvas.errors import ConfigError, InvalidInput, TradeCanvasError, Unavailable

logger = logging.getLogger(__name__)

KILL_GRACE_S = 5.0
# A run's export folder (userdir/backtest_results/tc_<job id>) is removed at the next run once
# it is this old: its result was parsed when the run ended, the folder is only for inspection.
EXPORT_MAX_AGE_S = 7 * 86400.0
STRATEGY_MISSING_MARKER = "Impossible to load Strategy"
_PACKAGE_ROOT = Path(trade_canvas.__file__).resolve().parent.parent

# --- paths and prerequisites ------------------------------------------------------------------


def ensure_inside(path: Path, parent: Path, what: str) -> Path:
    """Return ``path`` resolved, if it stays inside ``parent`` (symlinks followed).

    Raises:
        ConfigError: when it escapes.
    """
    resolved, root = path.resolve(), parent.resolve()
    if not resolved.is_relative_to(root):
        raise ConfigError(f"{what} {resolved} is outside the freqtrade userdir {root}")
    return resolved


def load_base_config(settings: BacktestSettings) -> dict[str, Any]:
    """Read the base freqtrade config.

    Raises:
        ConfigError: missing userdir or config, or config not a JSON object.
    """
    if not settings.userdir.is_dir():
        raise ConfigError(f"Freqtrade userdir not found: {settings.userdir}")
    if settings.strategy_path is not None and not settings.strategy_path.is_dir():
        raise ConfigError(f"Freqtrade strategy path not found: {settings.strategy_path}")
    try:
        base = json.loads(settings.config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Freqtrade config not found: {settings.config_path}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Freqtrade config unreadable: {settings.config_path}: {exc}") from None
    if not isinstance(base, dict):
        raise ConfigError(f"Freqtrade config is not a JSON object: {settings.config_path}")
    return base


def resolve_datadir(settings: BacktestSettings, base: dict[str, Any]) -> Path:
    """Return the data directory, confined to the userdir.

    Raises:
        ConfigError: when it resolves outside the userdir.
    """
    if settings.datadir is not None:
        datadir = settings.datadir
    elif base.get("datadir"):
        datadir = settings.config_path.parent / str(base["datadir"])
    else:
        datadir = settings.userdir / "data"
    return ensure_inside(datadir, settings.userdir, "datadir")


def pair_timeframes(settings: BacktestSettings, pair: str) -> dict[str, Any]:
    """Return which timeframes have data for ``pair`` (the pair_timeframes endpoint's body)."""
    base = load_base_config(settings)
    mode = bt.trading_mode_of(base)
    spec = bt.freqtrade_pair(pair, mode)
    datadir = resolve_datadir(settings, base)
    listing = bt.data_listing_dir(datadir, mode)
    names = [p.name for p in listing.iterdir()] if listing.is_dir() else []
    return {"pair": pair, "trading_mode": mode, "datadir": str(datadir),
            "available_timeframes": bt.available_timeframes(names, spec, mode)}


def export_candles(
    settings: BacktestSettings, pair: str, timeframe: str, candles: Sequence[Candle],
    merge: bool = False,
) -> Path:
    """Write candles where this setup's freqtrade reads them; returns the file.

    With ``merge`` the rows of an existing file are kept and the new candles added.
    """
    from trade_canvas.freqtrade import datadir as data_files  # pandas: only when someone exports

    base = load_base_config(settings)
    mode = bt.trading_mode_of(base)
    spec = bt.freqtrade_pair(pair, mode)
    datadir = resolve_datadir(settings, base)
    return data_files.export_candles(
        datadir, spec, bt.validate_timeframe(timeframe), mode, candles, merge)


# --- running a child --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    """How a child process ended; ``exit_code`` 124 on timeout, 127 when it could not start."""

    exit_code: int
    timed_out: bool
    duration_ms: int
    stdout: str
    stderr: str
    start_error: str | None = None


# What a child inherits: what a Python program, freqtrade and its HTTP client need, and never
# our own settings (TRADE_CANVAS_POSTGRES_DSN may carry a password) or other secrets (PG*,
# cloud credentials) of the server's environment.
_CHILD_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ",
    "TMPDIR", "TEMP", "TMP", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
})
_CHILD_ENV_PREFIXES = ("LC_", "PYTHON")


def child_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Return the child's environment: the allowed part of ours, this package importable."""
    env = {name: value for name, value in environ.items()
           if name in _CHILD_ENV_NAMES or name.startswith(_CHILD_ENV_PREFIXES)}
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{_PACKAGE_ROOT}{os.pathsep}{old}" if old else str(_PACKAGE_ROOT)
    env.update({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "160"})
    return env


def read_tail(path: Path, cap: int) -> str:
    """Return the last ``cap`` bytes of ``path`` as text (missing file: empty)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - cap))
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's whole process group, then SIGKILL it after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers that ignored SIGTERM
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_child(
    argv: Sequence[str], cwd: Path, log_dir: Path, timeout_s: float, cap: int,
    clock: Callable[[], float] = time.monotonic,
) -> ChildOutcome:
    """Run ``argv`` in its own session, output to files in ``log_dir``, killed at ``timeout_s``."""
    out_path, err_path = log_dir / "stdout.log", log_dir / "stderr.log"
    started = clock()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        except OSError as exc:
            return ChildOutcome(127, False, 0, "", "", start_error=f"{argv[0]}: {exc}")
        try:
            code, timed_out = proc.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            code, timed_out = 124, True
    duration_ms = int((clock() - started) * 1000)
    stderr = read_tail(err_path, cap)
    if timed_out:
        stderr += f"\ntimeout after {timeout_s:g}s: process group killed"
    return ChildOutcome(code, timed_out, duration_ms, read_tail(out_path, cap), stderr)


# --- one backtest, start to end (runs in a worker thread) -------------------------------------


def _missing_history(
    settings: BacktestSettings, spec: bt.PairSpec, request: bt.BacktestRequest,
    mode: bt.TradingMode, datadir: Path,
) -> dict[str, Any] | None:
    paths = bt.expected_data_paths(datadir, spec, request.timeframe, mode)
    if any(p.is_file() for p in paths):
        return None
    listing = bt.data_listing_dir(datadir, mode)
    names = [p.name for p in listing.iterdir()] if listing.is_dir() else []
    return {
        "message": "no_ohlcv_history", "pair": spec.text, "timeframe": request.timeframe,
        "trading_mode": mode, "datadir": str(datadir),
        "expected_paths": [str(p) for p in paths],
        "available_timeframes": bt.available_timeframes(names, spec, mode),
        "hint": bt.NO_HISTORY_HINT,
        "download_data_cmd": bt.download_data_command(
            settings.bin, settings.config_path, settings.userdir, spec, request.timeframe, mode),
    }


def _newest_zip(export_dir: Path) -> Path | None:
    zips = sorted(export_dir.glob("*.zip"), key=lambda p: (p.stat().st_mtime, p.name))
    return zips[-1] if zips else None


def read_export(export_dir: Path, strategy: str) -> tuple[RunStatus, dict[str, Any], Any]:
    """Return (status, detail, summary) from the newest export zip in ``export_dir``."""
    archive = _newest_zip(export_dir)
    if archive is None:
        return "no_backtest_export", {
            "message": "no_backtest_export", "export_dir": str(export_dir),
            "hint": "freqtrade wrote no result; see stdout/stderr"}, None
    try:
        with ZipFile(archive) as zipped:
            member = bt.pick_result_member(zipped.namelist())
            if member is None:
                raise InvalidInput("no result JSON in the export zip")
            summary = bt.parse_result_json(zipped.read(member), strategy)
    except (BadZipFile, OSError, InvalidInput) as exc:
        return "bad_backtest_export", {
            "message": "bad_backtest_export", "export_zip": str(archive), "error": str(exc)}, None
    return "ok", {"export_zip": str(archive)}, summary


def _classify(
    settings: BacktestSettings, outcome: ChildOutcome, export_dir: Path, strategy: str
) -> tuple[RunStatus, dict[str, Any], Any]:
    if outcome.start_error is not None:
        return "error", {"message": "freqtrade_unavailable", "error": outcome.start_error}, None
    if outcome.timed_out:
        return "timeout", {"message": "timeout",
                           "timeout_s": settings.subprocess_timeout_s}, None
    if STRATEGY_MISSING_MARKER in outcome.stderr or STRATEGY_MISSING_MARKER in outcome.stdout:
        return "strategy_not_found", {"message": "strategy_not_found", "strategy": strategy}, None
    if outcome.exit_code == 127 and "freqtrade is not installed" in outcome.stderr:
        return "error", {"message": "freqtrade_unavailable",
                         "error": outcome.stderr.strip()}, None
    if outcome.exit_code != 0:
        return "failed", {"message": "freqtrade_failed"}, None
    # freqtrade exits 0 on configuration errors, so success means a readable export.
    return read_export(export_dir, strategy)


def _require_trades(
    status: RunStatus, detail: dict[str, Any], summary: Any, outcome: ChildOutcome,
    strategy: str,
) -> tuple[RunStatus, dict[str, Any]]:
    if status != "ok" or summary is None or summary.total_trades > 0:
        return status, detail
    return "no_trades", {
        "message": "no_trades", "strategy": strategy, "total_trades": 0,
        "export_zip": detail.get("export_zip"),
        "stdout_tail": bt.tail(outcome.stdout, bt.STDOUT_TAIL_CHARS),
    }


def _prepare(
    settings: BacktestSettings, job_id: str, request: bt.BacktestRequest
) -> dict[str, Any]:
    base = load_base_config(settings)
    mode = bt.trading_mode_of(base)
    spec = bt.freqtrade_pair(request.pair, mode)
    datadir = resolve_datadir(settings, base)
    export_dir = ensure_inside(
        settings.userdir / "backtest_results" / f"tc_{job_id}", settings.userdir, "export dir")
    config_path = ensure_inside(
        settings.userdir / f"trade_canvas_bt_{job_id}.json", settings.userdir, "temp config")
    try:
        series_id: str | None = bt.series_id_for(spec, request.timeframe, mode)
    except InvalidInput:
        series_id = None  # a timeframe freqtrade knows and the store cannot hold
    return {"base": base, "mode": mode, "spec": spec, "datadir": datadir,
            "export_dir": export_dir, "config_path": config_path, "series_id": series_id}


def clean_exports(results_dir: Path, now: float, max_age_s: float) -> list[Path]:
    """Remove our runs' export folders (``tc_*``) last changed over ``max_age_s`` ago.

    Returns the removed folders; freqtrade's own files in ``results_dir`` are never touched.
    """
    removed: list[Path] = []
    if not results_dir.is_dir():
        return removed
    for folder in results_dir.glob("tc_*"):
        try:
            old = folder.is_dir() and now - folder.stat().st_mtime > max_age_s
        except OSError:
            continue  # removed meanwhile by a concurrent run
        if old:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        logger.info("removed %d backtest export folders older than %.0f days",
                    len(removed), max_age_s / 86400)
    return removed


def run_backtest(
    settings: BacktestSettings, job_id: str, request: bt.BacktestRequest
) -> BacktestResult:
    """Run one backtest to the end (blocking) and return its result; never raises."""
    try:
        return _run_backtest(settings, job_id, request)
    except TradeCanvasError as exc:
        return BacktestResult(job_id, "error", -1, 0, detail={
            "message": type(exc).__name__, "error": str(exc)})
    except Exception as exc:  # boundary: a worker thread must always report back
        logger.exception("backtest %s crashed", job_id)
        return BacktestResult(job_id, "error", -1, 0, detail={
            "message": "internal_error", "error": f"{type(exc).__name__}: {exc}"})


def _run_backtest(
    settings: BacktestSettings, job_id: str, request: bt.BacktestRequest
) -> BacktestResult:
    prep = _prepare(settings, job_id, request)
    spec, mode = prep["spec"], prep["mode"]
    common = {"pair": spec.text, "trading_mode": mode, "series_id": prep["series_id"]}
    missing = _missing_history(settings, spec, request, mode, prep["datadir"])
    if missing is not None:
        return BacktestResult(job_id, "no_ohlcv_history", -1, 0, detail=missing, **common)
    args = bt.backtesting_args(
        request, spec, config=prep["config_path"], datadir=prep["datadir"],
        export_dir=prep["export_dir"], userdir=settings.userdir,
        strategy_path=settings.strategy_path) + ["--cache", "none"]
    argv = bt.child_command(settings.python, settings.bin, settings.offline_markets, args)
    clean_exports(prep["export_dir"].parent, time.time(), EXPORT_MAX_AGE_S)
    prep["export_dir"].mkdir(parents=True, exist_ok=True)
    prep["config_path"].write_text(
        bt.render_config(bt.build_config(prep["base"], request, spec, prep["datadir"])),
        encoding="utf-8")
    try:
        outcome = run_child(argv, settings.root, prep["export_dir"],
                            settings.subprocess_timeout_s, settings.output_cap_bytes)
    finally:
        prep["config_path"].unlink(missing_ok=True)
    status, detail, summary = _classify(settings, outcome, prep["export_dir"],
                                        request.strategy_name)
    if settings.require_trades:
        status, detail = _require_trades(status, detail, summary, outcome, request.strategy_name)
    logger.info("backtest %s %s %s %s: %s (exit %d, %d ms)", job_id, request.strategy_name,
                spec.text, request.timeframe, status, outcome.exit_code, outcome.duration_ms)
    return BacktestResult(
        job_id, status, outcome.exit_code, outcome.duration_ms, tuple(argv), outcome.stdout,
        outcome.stderr, summary=summary, export_zip=detail.get("export_zip"), detail=detail,
        **common)


def list_strategies(settings: BacktestSettings, recursive: bool = True) -> list[str]:
    """Run ``freqtrade list-strategies`` and return the names (blocking).

    Raises:
        ConfigError: missing userdir/strategy path.
        Unavailable: freqtrade failed and printed no names.
    """
    load_base_config(settings)
    args = bt.list_strategies_args(settings.userdir, settings.strategy_path, recursive)
    argv = bt.child_command(settings.python, settings.bin, settings.offline_markets, args)
    log_dir = ensure_inside(settings.userdir / "logs", settings.userdir, "log dir")
    log_dir.mkdir(exist_ok=True)
    outcome = run_child(argv, settings.root, log_dir, settings.subprocess_timeout_s,
                        settings.output_cap_bytes)
    names = bt.parse_strategy_list(outcome.stdout)
    if outcome.exit_code != 0 and not names:
        raise Unavailable(
            f"freqtrade list-strategies failed (exit {outcome.exit_code}): "
            f"{outcome.start_error or bt.tail(outcome.stderr, 2000)}")
    return names



def freqtrade_missing(settings: BacktestSettings) -> str | None:
    """Return why this setup cannot start freqtrade at all, or None when it can.

    Cheap enough for every request (no child is started): with offline markets the child is
    ``settings.python`` importing freqtrade, checked with ``find_spec`` when that is our own
    interpreter; otherwise the ``settings.bin`` executable must be on the PATH (or a file).
    """
    if not settings.offline_markets:
        if shutil.which(settings.bin) is None:
            return f"freqtrade executable not found: {settings.bin}"
        return None
    if settings.python != sys.executable:
        return None if shutil.which(settings.python) else f"python not found: {settings.python}"
    try:
        found = importlib.util.find_spec("freqtrade") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        found = False
    return None if found else f"freqtrade is not installed for {sys.executable}"
