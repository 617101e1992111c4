"""A small moving-average crossover strategy for trade_canvas's offline backtests.

Long only: enter when the fast simple moving average crosses above the slow one, exit when it
crosses back below. Works for spot and futures configs and on any timeframe; it needs nothing
beyond pandas, so it runs wherever freqtrade does.
"""

from pandas import DataFrame

from freqtrade.strategy import IStrategy


class SampleStrategy(IStrategy):
    INTERFACE_VERSION = 3

    timeframe = "5m"
    can_short = False
    minimal_roi = {"0": 100.0}  # exits come from the crossover, not from ROI
    stoploss = -0.10
    process_only_new_candles = True
    startup_candle_count = 30

    fast_period = 9
    slow_period = 21

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["sma_fast"] = dataframe["close"].rolling(self.fast_period).mean()
        dataframe["sma_slow"] = dataframe["close"].rolling(self.slow_period).mean()
        above = dataframe["sma_fast"] > dataframe["sma_slow"]
        dataframe["cross_up"] = above & ~above.shift(1, fill_value=True)
        dataframe["cross_down"] = ~above & above.shift(1, fill_value=False)
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["cross_up"] & (dataframe["volume"] > 0), "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["cross_down"], "exit_long"] = 1
        return dataframe
