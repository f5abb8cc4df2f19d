"""Benchmarks: each prints figures and ratios measured in the same run (`make bench` runs all)."""
