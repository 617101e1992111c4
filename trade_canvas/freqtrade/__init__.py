"""freqtrade backtests: commands and result parsing, the child-process runner, the datadir
export, the offline markets wrapper and the value types they share.

``BacktestActor`` (``actors/backtest.py``) queues runs, ``runtime/backtest.py`` is the facade's
handle on it and ``http/backtest.py`` the resources; everything freqtrade-specific is here.
"""
