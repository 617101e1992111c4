"""Benchmarks: scripts exposing run(quick) -> dict of figures."""
