"""Helpers shared by tests and benchmarks (real servers and fixtures, no mocks)."""
