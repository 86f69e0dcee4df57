"""Benchmarks: each compares against a baseline measured in the same run and writes
benchmarks/results/<name>.json. Run them all with `make bench`."""
