"""Run freqtrade with synthesized Binance markets, so a backtest never touches the network.

Started by the backtest actor as a child process::

    python -m trade_canvas.freqtrade.offline backtesting --pairs BTC/USDT ...

The freqtrade arguments pass through unchanged. Before freqtrade's ``main`` runs, this module

* replaces ccxt's Binance ``fetch_markets``/``fetch_currencies`` (sync, async and pro) with
  synthesized markets for the pairs named by ``-p``/``--pairs``: a spot market ``B/Q`` and a
  linear perpetual ``B/Q:Q`` for each pair (``B/Q:S`` gives ``B/Q`` and ``B/Q:S``), so
  both trading modes and a strategy's informative pairs resolve;
* adds one generic leverage tier for futures pairs missing from freqtrade's bundled Binance tier
  file (backtests of such pairs would otherwise abort);
* installs an audit hook that refuses DNS look-ups and connections to anything but loopback, so
  an unexpected network call fails at once with a clear message instead of hanging on a
  timeout or silently using live exchange data.

ccxt's own ``load_markets`` stays in charge of caching and indexing; only the two network
fetches are replaced. Market numbers (fees, precision, limits) are generous defaults: a
backtest on them is not bit-identical to one on live market metadata.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any, Callable, Iterable

from trade_canvas.freqtrade.commands import PairSpec, parse_pair
from trade_canvas.errors import InvalidInput

SPOT_FEE = 0.001
FUTURES_TAKER_FEE = 0.0005
FUTURES_MAKER_FEE = 0.0002
_TICK = 1e-8
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def pairs_from_args(args: Iterable[str]) -> list[str]:
    """Return the pair names given after ``-p``/``--pairs`` (``--pairs=A`` also counts)."""
    pairs: list[str] = []
    collecting = False
    for arg in args:
        if arg.startswith("--pairs="):
            pairs.append(arg.split("=", 1)[1])
            collecting = True
        elif arg in ("-p", "--pairs"):
            collecting = True
        elif arg.startswith("-"):
            collecting = False
        elif collecting:
            pairs.append(arg)
    return pairs


def _limits(leverage_max: float | None) -> dict[str, Any]:
    return {
        "leverage": {"min": 1.0 if leverage_max else None, "max": leverage_max},
        "amount": {"min": _TICK, "max": 1e12},
        "price": {"min": _TICK, "max": 1e12},
        "cost": {"min": 0.0, "max": 1e15},
        "market": {"min": _TICK, "max": 1e12},
    }


def spot_market(base: str, quote: str) -> dict[str, Any]:
    """Return a ccxt market structure for the Binance spot market ``base/quote``."""
    return {
        "id": f"{base}{quote}", "symbol": f"{base}/{quote}", "base": base, "quote": quote,
        "settle": None, "baseId": base, "quoteId": quote, "settleId": None,
        "type": "spot", "spot": True, "margin": False, "swap": False, "future": False,
        "option": False, "contract": False, "linear": None, "inverse": None,
        "contractSize": None, "expiry": None, "expiryDatetime": None, "strike": None,
        "optionType": None, "active": True, "taker": SPOT_FEE, "maker": SPOT_FEE,
        "precision": {"amount": _TICK, "price": _TICK},
        "limits": _limits(None), "created": None, "info": {"status": "TRADING"},
    }


def linear_swap_market(base: str, quote: str, settle: str) -> dict[str, Any]:
    """Return a ccxt market structure for the Binance USD-M perpetual ``base/quote:settle``."""
    return {
        "id": f"{base}{quote}", "symbol": f"{base}/{quote}:{settle}", "base": base,
        "quote": quote, "settle": settle, "baseId": base, "quoteId": quote, "settleId": settle,
        "type": "swap", "spot": False, "margin": False, "swap": True, "future": False,
        "option": False, "contract": True, "linear": True, "inverse": False,
        "contractSize": 1.0, "expiry": None, "expiryDatetime": None, "strike": None,
        "optionType": None, "active": True, "taker": FUTURES_TAKER_FEE,
        "maker": FUTURES_MAKER_FEE, "precision": {"amount": _TICK, "price": _TICK},
        "limits": _limits(125.0), "created": None,
        "info": {"status": "TRADING", "contractType": "PERPETUAL"},
    }


def synthesize_markets(pairs: Iterable[str]) -> list[dict[str, Any]]:
    """Return spot and linear-perpetual markets for every pair, de-duplicated by symbol."""
    markets: dict[str, dict[str, Any]] = {}
    for text in pairs:
        spec: PairSpec = parse_pair(text)
        settle = spec.settle or spec.quote
        for market in (spot_market(spec.base, spec.quote),
                       linear_swap_market(spec.base, spec.quote, settle)):
            markets[market["symbol"]] = market
    return list(markets.values())


def synthesize_currencies(markets: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return a ccxt currency structure for every asset the markets mention."""
    codes = sorted({m[key] for m in markets for key in ("base", "quote", "settle") if m[key]})
    return {
        code: {
            "id": code, "code": code, "name": code, "active": True, "deposit": True,
            "withdraw": True, "fee": None, "precision": _TICK, "networks": {}, "info": {},
            "limits": {"amount": {"min": None, "max": None},
                       "withdraw": {"min": None, "max": None}},
        }
        for code in codes
    }


def generic_leverage_tier(symbol: str, settle: str) -> dict[str, Any]:
    """Return one leverage tier (0..1e12 notional, 1% maintenance margin, 20x) for ``symbol``."""
    return {
        "tier": 1.0, "symbol": symbol, "currency": settle, "minNotional": 0.0,
        "maxNotional": 1e12, "maintenanceMarginRate": 0.01, "maxLeverage": 20.0,
        "info": {"cum": 0.0},
    }


def is_loopback_host(host: object) -> bool:
    """Return True for ``localhost``-style names and loopback IP addresses."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _network_guard(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6):
        host = args[1][0]
    else:
        return
    if host is not None and not is_loopback_host(host):
        raise ConnectionRefusedError(
            f"trade_canvas offline mode: network access to {host!r} is disabled "
            "(markets are synthesized; no exchange call is allowed during a backtest)"
        )


def _patch_ccxt(markets: list[dict[str, Any]]) -> None:
    import ccxt  # type: ignore[import-untyped]
    import ccxt.async_support as ccxt_async  # type: ignore[import-untyped]

    currencies = synthesize_currencies(markets)

    def fetch_markets(self: Any, params: Any = None) -> list[dict[str, Any]]:
        return [dict(m) for m in markets]

    def fetch_currencies(self: Any, params: Any = None) -> dict[str, Any]:
        return dict(currencies)

    async def fetch_markets_async(self: Any, params: Any = None) -> list[dict[str, Any]]:
        return fetch_markets(self, params)

    async def fetch_currencies_async(self: Any, params: Any = None) -> dict[str, Any]:
        return fetch_currencies(self, params)

    ccxt.binance.fetch_markets = fetch_markets
    ccxt.binance.fetch_currencies = fetch_currencies
    ccxt_async.binance.fetch_markets = fetch_markets_async
    ccxt_async.binance.fetch_currencies = fetch_currencies_async


def _patch_leverage_tiers(markets: list[dict[str, Any]]) -> None:
    from freqtrade.exchange.binance import Binance  # type: ignore[import-untyped]

    original: Callable[[Any], dict[str, list[dict[str, Any]]]] = Binance.load_leverage_tiers
    swaps = [m for m in markets if m["swap"]]

    def load_leverage_tiers(self: Any) -> dict[str, list[dict[str, Any]]]:
        tiers = dict(original(self))
        if not tiers:  # spot mode: freqtrade wants no tiers at all
            return tiers
        for market in swaps:
            tiers.setdefault(market["symbol"],
                             [generic_leverage_tier(market["symbol"], market["settle"])])
        return tiers

    Binance.load_leverage_tiers = load_leverage_tiers


def main(argv: list[str]) -> int:
    """Patch market loading for the pairs in ``argv``, then run freqtrade with ``argv``."""
    try:
        import freqtrade.main as freqtrade_main  # type: ignore[import-untyped]
    except ImportError as exc:
        print(f"trade_canvas: freqtrade is not installed for {sys.executable}: {exc}",
              file=sys.stderr)
        return 127
    try:
        markets = synthesize_markets(pairs_from_args(argv))
    except InvalidInput as exc:
        print(f"trade_canvas: {exc}", file=sys.stderr)
        return 2
    sys.addaudithook(_network_guard)
    _patch_ccxt(markets)
    _patch_leverage_tiers(markets)
    try:
        freqtrade_main.main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
