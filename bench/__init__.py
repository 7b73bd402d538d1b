"""Benchmarks: figures measured side by side in one run (`make bench`); never part of the tests."""
