"""Benchmarks: measured, written as JSON under benchmarks/results/, never asserted by tests."""
