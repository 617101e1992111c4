"""Factor fingerprint: decides when stored factor events and state must be rebuilt (pure).

``fingerprint`` is the SHA-256 hex digest of compact, key-sorted JSON::

    {"code_version": FACTOR_CODE_VERSION, "graph": [factor names in order],
     "params": {"pivot_window_major", "pivot_window_minor"},
     "sources": {module name: sha256 of its source text},
     "logic_version": TRADE_CANVAS_FACTOR_LOGIC_VERSION}

Unlike the earlier backend it hashes every module that computes events (including the anchor
and the head logic) and names no file that does not exist. It is per parameter set, not per
series: the caller stores it per series. The source texts are read with ``inspect.getsource``
(a read of already-imported modules' files, done once per process by the caller, e.g. at boot);
tests or callers may pass them in instead.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Mapping

from trade_canvas.factors import (
    FACTOR_NAMES, anchor, draw, engine, events, overlay, pen, pivot, slices, zhongshu,
)
from trade_canvas.factors.engine import FactorParams

# Bump when event or state semantics change in a way the source hash would not show.
FACTOR_CODE_VERSION = "1"

# draw and slices too: rendered instructions are stored as overlay versions
_MODULES = (pivot, pen, zhongshu, anchor, engine, events, slices, draw, overlay)


def factor_sources() -> dict[str, str]:
    """Return ``{module name: source text}`` of the modules behind stored events and overlay."""
    return {module.__name__: inspect.getsource(module) for module in _MODULES}


def fingerprint(
    params: FactorParams, logic_version: str, sources: Mapping[str, str] | None = None
) -> str:
    """Return the fingerprint of the factor logic for ``params`` and ``logic_version``."""
    texts = factor_sources() if sources is None else sources
    body = {
        "code_version": FACTOR_CODE_VERSION,
        "graph": list(FACTOR_NAMES),
        "params": params.to_dict(),
        "sources": {
            name: hashlib.sha256(text.encode("utf-8")).hexdigest()
            for name, text in sorted(texts.items())
        },
        "logic_version": logic_version,
    }
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()
