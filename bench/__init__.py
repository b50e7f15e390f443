"""Benchmarks: each prints the project's figure beside its anchor, measured in the same run."""
