"""Benchmarks: each module has ``run(args) -> dict`` and compares the Ray path with a bare loop."""
