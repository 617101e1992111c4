from trade_canvas.runtime.cache import ResponseCache, WriteGenerations


def test_generation_change_invalidates() -> None:
    cache, gens = ResponseCache(1000), WriteGenerations()
    cache.put(("s", None, 10), gens.get("s"), b"old")
    assert cache.get(("s", None, 10), gens.get("s")) == b"old"
    gens.bump("s")
    assert cache.get(("s", None, 10), gens.get("s")) is None
    assert gens.get("other") == 0


def test_entries_expire() -> None:
    now = [0.0]
    cache = ResponseCache(1000, max_age_s=1.0, clock=lambda: now[0])
    cache.put(("k",), 0, b"x")
    now[0] = 0.9
    assert cache.get(("k",), 0) == b"x"
    now[0] = 1.5
    assert cache.get(("k",), 0) is None


def test_byte_budget_evicts_least_recently_used() -> None:
    cache = ResponseCache(100)
    for name in "abcd":
        cache.put((name,), 0, b"x" * 25)
    assert cache.get(("a",), 0) == b"x" * 25  # a is now the most recent
    cache.put(("e",), 0, b"x" * 25)
    assert cache.get(("b",), 0) is None and cache.get(("a",), 0) is not None
    assert cache.size <= 100
    cache.put(("huge",), 0, b"x" * 60)  # more than a quarter of the budget: not cached
    assert cache.get(("huge",), 0) is None
    assert ResponseCache(0).get(("a",), 0) is None
