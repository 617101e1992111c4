"""Smoke-test strategy for spot: always in the market, so every backtest has trades.

Enters long on every even candle and exits on every odd one (freqtrade ignores an entry on a
candle that also signals an exit), so a run over any timerange with a few candles trades; use it to check that data, export and
result parsing work end to end (the runbook's example), never for research.
"""

from pandas import DataFrame

from freqtrade.strategy import IStrategy


class TradeCanvasAlwaysTradeSpotStrategy(IStrategy):
    INTERFACE_VERSION = 3

    timeframe = "1m"
    can_short = False
    minimal_roi = {"0": 100.0}  # exits come from the signal below
    stoploss = -0.99
    process_only_new_candles = True
    startup_candle_count = 0

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["even"] = (dataframe.index % 2) == 0
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["even"], "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[~dataframe["even"], "exit_long"] = 1
        return dataframe
