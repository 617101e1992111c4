"""The README stays true: every setting and every HTTP route is documented."""

import re
from pathlib import Path

from trade_canvas.config import known_names

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [name for name in known_names() if f"`{name}`" not in README]
    assert missing == []


def test_every_route_is_documented() -> None:
    source = (ROOT / "trade_canvas" / "http" / "app.py").read_text()
    routes = set(re.findall(r'"(/(?:api|ws)/[^"]*)"', source))
    assert routes, "no routes found in http/app.py"
    missing = sorted(r for r in routes if r.split("{")[0].rstrip("/") not in README)
    assert missing == []
