"""Drive a FactorActor over the recorded real BTCUSDT klines and record what it produced.

The record pins the factor path's output so that optimisations of the actor cannot change it:
every stored event, every stored draw version, and after each closed candle the set of active
instruction ids a ``draw: true`` WebSocket client holds once it applied the pushed deltas (plus
the cursor it ends at). ``python -m tests.fakes.factor_golden`` rewrites the golden file; only do
that when the factor output is meant to change.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

from tests.fakes.store import MemoryCandleStore
from tests.unit.test_factor_engine import load_recording
from trade_canvas.actors.plumbing import ChildLink, ChildRecord
from trade_canvas.actors.factor import FactorActor, FactorOptions
from trade_canvas.actors.messages import CandlesStored
from trade_canvas.candles import Candle
from trade_canvas.factors.engine import FactorParams
from trade_canvas.series import parse_series_id

GOLDEN = Path(__file__).parent / "golden" / "factors_btcusdt_1m.json.gz"
SERIES = parse_series_id("binance:spot:BTC/USDT:1m")
OPTIONS = FactorOptions(FactorParams(), "golden", rebuild=True, keep_candles=5000, chunk=500)


class DrawClient:
    """Applies pushed ``draw_delta`` messages as a ``draw: true`` client would."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.cursor = 0
        self.lock = threading.Lock()
        self.other: list[dict[str, Any]] = []
        self.steps: list[tuple[int, str, int]] = []  # (to_time, digest of active ids, cursor)

    def tell(self, message: Any) -> None:
        body = message.message
        with self.lock:
            if body.get("type") != "draw_delta":
                self.other.append(body)
                return
            assert body["from_version_id"] == self.cursor, "a pushed delta skipped versions"
            patch_ids = {row["instruction_id"] for row in body["instruction_catalog_patch"]}
            if "active_ids" in body:
                self.active = set(body["active_ids"])
            else:
                self.active = (self.active | patch_ids) - set(body["removed_ids"])
            self.cursor = body["next_cursor"]["version_id"]
            self.steps.append((body["to_candle_time"], digest(sorted(self.active)), self.cursor))


def digest(ids: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


def make_actor(store: MemoryCandleStore, client: DrawClient) -> FactorActor:
    record = ChildRecord(kind="factor", series_id=SERIES.text, start=lambda link: None)  # type: ignore[arg-type,return-value]
    lookup = lambda kind: client if kind == "hub" else None  # noqa: E731
    return FactorActor(SERIES, store, lookup, ChildLink(record, None), OPTIONS)


def drain(actor: FactorActor) -> None:
    while not actor.actor_inbox.empty():
        actor.on_receive(actor.actor_inbox.get_nowait().message)


def run(batches: Sequence[Sequence[Candle]]) -> tuple[dict[str, Any], DrawClient]:
    """Fold the batches one after another (as the store would tell them); return the record."""
    store, client = MemoryCandleStore(), DrawClient()
    actor = make_actor(store, client)
    actor.on_start()
    for batch in batches:
        store.upsert_candles(SERIES.text, batch)
        actor.on_receive(CandlesStored(tuple(batch)))
        drain(actor)
    return record_of(store, client), client


def record_of(store: MemoryCandleStore, client: DrawClient) -> dict[str, Any]:
    sid = SERIES.text
    events = [[e.factor_name, e.kind, e.event_key, e.candle_time, e.payload_json]
              for e in store.read_factor_events(sid, 0, 2**62)]
    versions = [[v.version_id, v.instruction_id, v.kind, v.visible_time, v.definition_json]
                for v in store.read_draw_versions(sid, 0, 2**62)]
    return {"events": events, "versions": versions, "steps": [list(s) for s in client.steps]}


def one_by_one() -> list[list[Candle]]:
    return [[c] for c in load_recording()]


def batches_of(size: int) -> list[list[Candle]]:
    candles = load_recording()
    return [candles[i:i + size] for i in range(0, len(candles), size)]


# The recorded runs: candle by candle (the live feed) and batches of 37 (bulk ingest).
RUNS = {"one_by_one": one_by_one, "batches_37": lambda: batches_of(37)}


def load_golden() -> dict[str, Any]:
    with gzip.open(GOLDEN, "rt") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


if __name__ == "__main__":
    records = {name: run(make())[0] for name, make in RUNS.items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    with gzip.open(GOLDEN, "wt") as handle:
        json.dump(records, handle, separators=(",", ":"))
    for name, record in records.items():
        print(f"{name}: {len(record['events'])} events, {len(record['versions'])} versions, "
              f"{len(record['steps'])} pushes")
    print(f"-> {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
