"""The factor event value: one append-only ledger row, keyed for idempotent storage (pure).

A row is stored under ``UNIQUE(series_id, factor_name, event_key)`` with ``candle_time`` = the
tick (closed candle) that produced it. The payload travels as canonical JSON text (sorted keys,
compact separators): it is immutable, hashable and exactly what the store writes, so an event can
be passed between actors without copying.

Sample row::

    FactorEvent(factor_name="pen", kind="pen.confirmed",
                event_key="confirmed:180:300:-1", candle_time=540,
                payload_json='{"direction":-1,"end_price":1.0,"end_time":300,...}')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import orjson


@dataclass(frozen=True, slots=True)
class FactorEvent:
    """One factor ledger row; ``candle_time`` is the tick that made it visible."""

    factor_name: str
    kind: str
    event_key: str
    candle_time: int
    payload_json: str

    def payload(self) -> dict[str, Any]:
        """Return a fresh dict decoded from ``payload_json``."""
        decoded: dict[str, Any] = json.loads(self.payload_json)
        return decoded

    def to_dict(self) -> dict[str, Any]:
        """Return the row shape ``{factor_name, kind, event_key, candle_time, payload}``."""
        return {
            "factor_name": self.factor_name,
            "kind": self.kind,
            "event_key": self.event_key,
            "candle_time": self.candle_time,
            "payload": self.payload(),
        }


def encode_payload(payload: Mapping[str, Any]) -> str:
    """Return the canonical JSON text of a payload (sorted keys, compact).

    orjson, not ``json``: the factor actor encodes a few definitions after every closed candle.
    """
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()


def make_event(
    factor_name: str, kind: str, event_key: str, candle_time: int, payload: Mapping[str, Any]
) -> FactorEvent:
    """Build an event, encoding ``payload`` canonically."""
    return FactorEvent(factor_name, kind, event_key, candle_time, encode_payload(payload))


def event_from_dict(row: Mapping[str, Any]) -> FactorEvent:
    """Rebuild an event from ``to_dict()`` output or a stored row with a ``payload`` mapping."""
    return make_event(
        str(row["factor_name"]),
        str(row["kind"]),
        str(row["event_key"]),
        int(row["candle_time"]),
        row["payload"],
    )
