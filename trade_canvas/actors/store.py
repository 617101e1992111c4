"""StoreActor: the single writer of one series; tells the hub once candles are durable."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pykka

from trade_canvas.actors import instruments
from trade_canvas.actors.plumbing import ChildLink, RefLookup, report_failure, tell
from trade_canvas.actors.messages import (
    CandlesCommitted,
    CandlesStored,
    Crash,
    StoreCandles,
    StoreFailed,
)
from trade_canvas.candles import Candle
from trade_canvas.errors import Unavailable
from trade_canvas.series import SeriesId
from trade_canvas.storage import CandleStore

logger = logging.getLogger(__name__)

class StoreActor(pykka.ThreadingActor):
    """Writes closed candles of one series, then tells the hub (and later the factor actor)."""

    def __init__(
        self,
        series: SeriesId,
        store: CandleStore,
        lookup: RefLookup,
        link: ChildLink,
        on_written: Callable[[str], None] | None = None,
        on_committed: Callable[[str, int | None, tuple[Candle, ...], bool], None] | None = None,
    ) -> None:
        super().__init__()
        # Cluster mode: (series, write sequence number, candles, publish) after each commit,
        # so the other processes learn of the write and this one's fan-out delivers it to the
        # hub and the owner's factor actor in sequence order with theirs (runtime/cluster.py).
        self.on_committed = on_committed
        self.series = series
        self.store = store
        self.lookup = lookup
        self.link = link
        self.on_written = on_written
        self.metric_series = instruments.series_label(series.text)

    def on_start(self) -> None:
        self.link.started()

    on_failure = report_failure

    def on_receive(self, message: Any) -> Any:
        self.link.handled()
        match message:
            case StoreCandles():
                return self._store(message)
            case Crash():
                raise RuntimeError(f"crash requested: {message.reason}")
        logger.warning("store actor %s ignored %r", self.series.text, message)
        return None

    def _store(self, message: StoreCandles) -> int:
        started = time.monotonic()
        try:
            seq = self.store.upsert_candles(self.series.text, message.candles)
        except Exception as exc:
            # An outage (Unavailable) is answered, not died of: a restart would only add backoff
            # before the next write, and the sender keeps the candles until a write commits.
            # An asker (reply_to None) gets the exception through its future either way.
            if message.reply_to is not None:
                tell(message.reply_to, StoreFailed(message.batch, f"{type(exc).__name__}: {exc}"))
                if isinstance(exc, Unavailable):
                    logger.warning("store %s: write failed: %s", self.series.text, exc)
                    return 0
            raise
        committed = time.monotonic()
        instruments.STORE_COMMIT_SECONDS.observe(committed - started)
        instruments.CANDLES_STORED.labels(self.metric_series, message.source).inc(
            len(message.candles))
        if self.on_written is not None:
            self.on_written(self.series.text)
        if self.on_committed is not None:
            self.on_committed(self.series.text, seq, message.candles, message.publish)
        # Factors follow every stored candle; only subscribers depend on ``publish``. In cluster
        # mode the fan-out tells both: told here directly, this write could overtake an earlier
        # one made by another process whose hint has not arrived yet, and the hub's cursor (or
        # the factor head) would then skip that one for good.
        if self.on_committed is None:
            stored = CandlesStored(message.candles, committed)
            if message.publish:
                tell(self.lookup("hub"), stored)
            tell(self.lookup("factor"), stored)
        if message.reply_to is not None:
            tell(message.reply_to, CandlesCommitted(message.batch))
        return len(message.candles)

