"""Helpers shared by the tests and the benchmarks (one place, not a copy per file)."""
