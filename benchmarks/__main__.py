"""``python -m benchmarks [--quick] [--only NAME] [--store sqlite|postgres] [--output PATH]``.

Runs each benchmark against a freshly started real server (gunicorn + one gevent worker, driven
from separate client processes over loopback), prints every figure next to its target with
PASS/MISS, and writes all figures to ``benchmarks/results/latest.json``. The exit status is 1
only when a benchmark broke (an exception, lost WebSocket messages, a server that died), never
because a figure missed its target: timings depend on the machine.

``cluster`` (several server processes on one Postgres schema) runs only with ``--store
postgres``: a plain run on SQLite skips it, and ``--only cluster`` without it is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from benchmarks import (cluster, factors, fanout, feeds, ingest, isolation, latency, memory, reads,
                        replay)
from benchmarks.processes import Context, StoreChoice

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _factors(ctx: Context) -> dict[str, Any]:
    return dict(factors.run(ctx.quick))


BENCHMARKS: dict[str, tuple[Callable[[Context], dict[str, Any]], list[tuple[str, str, float]]]] = {
    "ingest": (ingest.run, ingest.TARGETS),
    "latency": (latency.run, latency.TARGETS),
    "reads": (reads.run, reads.TARGETS),
    "fanout": (fanout.run, fanout.TARGETS),
    "isolation": (isolation.run, isolation.TARGETS),
    "feeds": (feeds.run, feeds.TARGETS),
    "factors": (_factors, [("full_recompute_s", "<", 0.2)]),
    "memory": (memory.run, memory.TARGETS),
    "replay": (replay.run, replay.TARGETS),
    "cluster": (cluster.run, cluster.TARGETS),
}
# Run by default only on the Postgres store (cluster mode does not exist on SQLite).
POSTGRES_ONLY = {"cluster"}


def machine() -> dict[str, Any]:
    """Describe the machine the figures come from."""
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), "")
        with open("/proc/meminfo") as handle:
            mem_kb = int(handle.readline().split()[1])
    except OSError:
        mem_kb = 0
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def verdict(value: Any, op: str, target: float) -> str:
    """Return PASS or MISS for one figure."""
    if not isinstance(value, (int, float)):
        return "MISS"
    passed = {">=": value >= target, "<=": value <= target}.get(op, value < target)
    return "PASS" if passed else "MISS"


def print_table(results: dict[str, Any]) -> None:
    """Print every figure; those with a target get the target and PASS/MISS."""
    print(f"\n{'benchmark':10s} {'figure':40s} {'value':>14s}  {'target':>12s}  verdict")
    for name, entry in results["benchmarks"].items():
        targets = {key: (op, value) for key, op, value in entry.get("targets", [])}
        for key, value in entry.get("figures", {}).items():
            if isinstance(value, (list, dict)):
                continue
            if key in targets:
                op, target = targets[key]
                print(f"{name:10s} {key:40s} {value!s:>14s}  {op + ' ' + str(target):>12s}  "
                      f"{verdict(value, op, target)}")
            else:
                print(f"{name:10s} {key:40s} {value!s:>14s}")
        if entry.get("error"):
            print(f"{name:10s} ERROR {entry['error'].splitlines()[-1]}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return 0 unless one of them broke."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; a smoke run under 60 s")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.store != "postgres" and POSTGRES_ONLY & set(args.only or ()):
        parser.error(f"{', '.join(sorted(POSTGRES_ONLY & set(args.only)))} needs --store postgres "
                     "(e.g. python -m benchmarks --only cluster --store postgres)")
    names = args.only or [name for name in BENCHMARKS
                          if args.store == "postgres" or name not in POSTGRES_ONLY]
    results: dict[str, Any] = {
        "quick": args.quick, "store": args.store, "machine": machine(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "benchmarks": {},
    }
    broken = False
    with tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp:
        for name in names:
            run, targets = BENCHMARKS[name]
            ctx = Context(args.quick, StoreChoice(args.store), Path(tmp) / name)
            print(f"== {name}", flush=True)
            started = time.monotonic()
            entry: dict[str, Any] = {"targets": [list(t) for t in targets]}
            try:
                entry["figures"] = run(ctx)
            except Exception:  # noqa: BLE001  one broken benchmark must not hide the others
                entry["error"] = traceback.format_exc()
                print(entry["error"], file=sys.stderr, flush=True)
            entry["problems"] = ctx.problems
            entry["seconds"] = round(time.monotonic() - started, 1)
            entry["verdicts"] = {key: verdict(entry.get("figures", {}).get(key), op, value)
                                 for key, op, value in targets}
            for problem in ctx.problems:
                print(f"PROBLEM in {name}: {problem}", file=sys.stderr, flush=True)
            broken = broken or bool(ctx.problems) or "error" in entry
            results["benchmarks"][name] = entry
    results["total_seconds"] = round(sum(e["seconds"] for e in results["benchmarks"].values()), 1)
    print_table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.output} ({results['total_seconds']} s)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
