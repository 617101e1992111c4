"""Copy every candle from one CandleStore to another, resumably, and verify the result.

Each series is copied oldest first in batches of ``read_since`` pages, each batch one upsert
(one transaction) in the target. The target's newest candle is therefore a safe resume point:
everything older has been written. A re-run after an interruption starts each series after the
target's head, so it copies only what is missing, and upserts make any overlap harmless.
Candles the source changed at or before the target's head after an earlier run are not
re-copied; the count check at the end reports series whose counts differ.

Also ``python -m trade_canvas.storage.copy --from SQLITE_PATH --to DSN`` (see ``main``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from trade_canvas.errors import InvalidInput, TradeCanvasError
from trade_canvas.storage import CandleStore, open_store

logger = logging.getLogger(__name__)

# Lower than any candle_time either backend can hold (both store signed 64-bit integers).
BEFORE_ALL = -(2**63)

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class SeriesMismatch:
    """A series whose candle count differs between source and target after the copy."""

    series_id: str
    source_count: int
    target_count: int


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What one copy run did: rows written now, rows found already copied, count mismatches."""

    series: int
    copied: int
    already_present: int
    mismatches: tuple[SeriesMismatch, ...]

    @property
    def ok(self) -> bool:
        """Return True when every series has the same count in source and target."""
        return not self.mismatches


def copy_store(
    source: CandleStore,
    target: CandleStore,
    progress: Progress | None = None,
    batch_size: int = 5000,
) -> CopyReport:
    """Copy every series of ``source`` into ``target``, resuming from the target's heads.

    Args:
        progress: called as ``progress(done_rows, total_rows)`` after each batch; rows already
            in the target count as done.
        batch_size: candles per read page and per target transaction.

    Raises:
        InvalidInput: ``batch_size`` is below 1.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    series_ids = source.series_ids()
    source_counts = {series_id: source.count(series_id) for series_id in series_ids}
    total = sum(source_counts.values())
    done = 0

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, total)

    copied = present = 0
    for series_id in series_ids:
        already = min(target.count(series_id), source_counts[series_id])
        present += already
        advance(already)
        copied += _copy_series(source, target, series_id, batch_size, advance)
    mismatches = _verify(source_counts, target)
    logger.info("copied %d candles of %d series (%d already present, %d mismatches)",
                copied, len(series_ids), present, len(mismatches))
    return CopyReport(len(series_ids), copied, present, mismatches)


def _copy_series(
    source: CandleStore,
    target: CandleStore,
    series_id: str,
    batch_size: int,
    advance: Callable[[int], None],
) -> int:
    head = target.head_time(series_id)
    cursor = BEFORE_ALL if head is None else head
    copied = 0
    while True:
        batch = source.read_since(series_id, cursor, batch_size)
        if not batch:
            return copied
        target.upsert_candles(series_id, batch)
        copied += len(batch)
        cursor = batch[-1].candle_time
        advance(len(batch))
        time.sleep(0)  # under gevent, let other greenlets run between batches
        if len(batch) < batch_size:
            return copied


def _verify(source_counts: dict[str, int], target: CandleStore) -> tuple[SeriesMismatch, ...]:
    mismatches = []
    for series_id, expected in source_counts.items():
        actual = target.count(series_id)
        if actual != expected:
            logger.warning("series %s: source has %d candles, target %d",
                           series_id, expected, actual)
            mismatches.append(SeriesMismatch(series_id, expected, actual))
    return tuple(mismatches)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trade_canvas store copy",
        description="Copy all candles between stores; re-run to resume an interrupted copy.",
    )
    parser.add_argument("--from", dest="source", required=True,
                        help="SQLite file path or postgresql:// DSN to read")
    parser.add_argument("--to", dest="target", required=True,
                        help="SQLite file path or postgresql:// DSN to write")
    parser.add_argument("--schema", default="public",
                        help="PostgreSQL schema for a DSN side (default: public)")
    parser.add_argument("--batch-size", type=int, default=5000,
                        help="candles per batch and per target transaction (default: 5000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the copy command line; return 0 when verified, 1 on mismatches, 2 on errors."""
    from trade_canvas.storage.postgres import redact_dsn

    args = _parser().parse_args(argv)
    if args.source == args.target:
        print("error: --from and --to name the same store", file=sys.stderr)
        return 2
    try:
        source = _open(args.source, args.schema, must_exist=True)
    except TradeCanvasError as exc:
        print(f"error: --from: {exc}", file=sys.stderr)
        return 2
    try:
        target = _open(args.target, args.schema, must_exist=False)
    except TradeCanvasError as exc:
        source.close()
        print(f"error: --to: {exc}", file=sys.stderr)
        return 2
    print(f"copying {redact_dsn(args.source)} -> {redact_dsn(args.target)}", file=sys.stderr)
    try:
        return _run_copy(source, target, args.batch_size)
    finally:
        source.close()
        target.close()


def _open(spec: str, schema: str, must_exist: bool) -> CandleStore:
    if spec.startswith(("postgresql://", "postgres://")):
        return open_store(spec, postgres=True, schema=schema)
    return open_store(spec, postgres=False, must_exist=must_exist)


def _run_copy(source: CandleStore, target: CandleStore, batch_size: int) -> int:
    from tqdm import tqdm  # type: ignore[import-untyped]

    with tqdm(unit="candle", unit_scale=True, dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = copy_store(source, target, progress=progress, batch_size=batch_size)
        except TradeCanvasError as exc:
            bar.close()
            print(f"error: copy interrupted, re-run to resume: {exc}", file=sys.stderr)
            return 2
    print(f"{report.series} series, {report.copied} candles copied, "
          f"{report.already_present} already present", file=sys.stderr)
    for item in report.mismatches:
        print(f"MISMATCH {item.series_id}: source {item.source_count}, "
              f"target {item.target_count}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
