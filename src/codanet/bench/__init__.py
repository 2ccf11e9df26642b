"""Benchmarks: they print a table and write JSON; ratios are always measured in the same run."""
