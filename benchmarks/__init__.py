"""Benchmark scripts (run by hand, never by the tests; speed is not asserted anywhere)."""
