"""pykka actors: per-series store, hub (and later feed, factor) under one Supervisor."""
