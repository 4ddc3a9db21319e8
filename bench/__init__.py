"""Benchmarks: speculative vs target-only, split services vs in-process."""
