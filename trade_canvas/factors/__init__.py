"""Factor name table: the factors in dependency order and the catalog served to the UI.

Each factor is one pure module (``pivot``, ``pen``, ``zhongshu``, ``anchor``); ``engine`` steps
them in the order below, ``slices`` and ``draw`` build the read-side payloads, ``fingerprint``
decides when stored factor data must be rebuilt. ``catalog()`` is the body of
``GET /api/factor/catalog``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# name -> the names it depends on; listed in topological order
FACTOR_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "pivot": (),
    "pen": ("pivot",),
    "zhongshu": ("pen",),
    "anchor": ("pen", "zhongshu"),
}
FACTOR_NAMES: tuple[str, ...] = tuple(FACTOR_DEPENDENCIES)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One factor or sub-feature toggle of the UI's factor panel."""

    key: str
    label: str
    default_visible: bool
    sub_features: tuple[CatalogEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the catalog JSON shape (sub features have no ``sub_features`` key)."""
        data: dict[str, Any] = {
            "key": self.key, "label": self.label, "default_visible": self.default_visible
        }
        if self.key in FACTOR_DEPENDENCIES:
            data["sub_features"] = [sub.to_dict() for sub in self.sub_features]
        return data


def _entry(key: str, label: str, *subs: tuple[str, str, bool]) -> CatalogEntry:
    return CatalogEntry(key, label, True, tuple(CatalogEntry(*sub) for sub in subs))


CATALOG: tuple[CatalogEntry, ...] = (
    _entry("pivot", "Pivot", ("pivot.major", "Major", True), ("pivot.minor", "Minor", False)),
    _entry(
        "pen", "Pen",
        ("pen.confirmed", "Confirmed", True),
        ("pen.extending", "Extending", True),
        ("pen.candidate", "Candidate", True),
    ),
    _entry(
        "zhongshu", "Zhongshu", ("zhongshu.alive", "Alive", True), ("zhongshu.dead", "Dead", True)
    ),
    _entry(
        "anchor", "Anchor",
        ("anchor.current", "Current", True),
        ("anchor.history", "History", True),
        ("anchor.switch", "Switches", True),
    ),
)


def catalog() -> dict[str, Any]:
    """Return the ``GET /api/factor/catalog`` body, factors in dependency order."""
    return {"schema_version": 1, "factors": [entry.to_dict() for entry in CATALOG]}
