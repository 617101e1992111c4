"""trade_canvas: a market-data backend for crypto charting and strategy research."""

__version__ = "0.1.0"
