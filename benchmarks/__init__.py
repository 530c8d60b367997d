"""Benchmarks of slsam (run as modules: python -m benchmarks.micro)."""
