"""Rebuild data/ from the recorded Binance klines.

Run ``python -m freqtrade_user_data.build_sample_data`` from the repository root.

Needs pandas (it comes with freqtrade) and the recordings in ../shared beside the repository.
"""

from pathlib import Path

from trade_canvas.backtest import PairSpec
from trade_canvas.freqtrade_data import aggregate, export_candles, read_binance_klines_csv

ROOT = Path(__file__).resolve().parent
RECORDINGS = ROOT.parent.parent / "shared" / "data" / "binance"


def main() -> None:
    """Write BTC/USDT spot 1m and 5m and XRP/USDT:USDT futures 5m feather files."""
    datadir = ROOT / "data"
    btc = read_binance_klines_csv(
        RECORDINGS / "klines" / "spot_BTCUSDT_1m_2020-01-01_2020-01-03.csv")
    spot = PairSpec("BTC", "USDT")
    export_candles(datadir, spot, "1m", "spot", btc)
    export_candles(datadir, spot, "5m", "spot", aggregate(btc, 300))
    xrp = read_binance_klines_csv(
        RECORDINGS / "klines_ohlcv_only_gpl3" / "usdm_XRPUSDT_5m_2021-11-15_2021-11-21.csv"
    )
    export_candles(datadir, PairSpec("XRP", "USDT", "USDT"), "5m", "futures", xrp)


if __name__ == "__main__":
    main()
