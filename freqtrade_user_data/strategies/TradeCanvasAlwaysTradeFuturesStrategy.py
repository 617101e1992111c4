"""Smoke-test strategy for futures configs: the spot twin, long and short, always trading.

Alternates: enters long on even candles and short on odd ones while flat, exiting on the next
candle, so a futures backtest over any timerange produces trades in both directions. For
checking the futures data path end to end, never for research.
"""

from pandas import DataFrame

from freqtrade.strategy import IStrategy


class TradeCanvasAlwaysTradeFuturesStrategy(IStrategy):
    INTERFACE_VERSION = 3

    timeframe = "1m"
    can_short = True
    minimal_roi = {"0": 100.0}
    stoploss = -0.99
    process_only_new_candles = True
    startup_candle_count = 0

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["even"] = (dataframe.index % 2) == 0
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["even"], "enter_long"] = 1
        dataframe.loc[~dataframe["even"], "enter_short"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[~dataframe["even"], "exit_long"] = 1
        dataframe.loc[dataframe["even"], "exit_short"] = 1
        return dataframe
