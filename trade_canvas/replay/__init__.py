"""The replay exchange: a local server speaking Binance's protocol over recorded market data.

Used as the test double of the exchange and as an offline demo; see ``server.py`` for the URLs
and the admin/fault API, ``market.py`` for the timeline and the candle path model.
"""
