"""Riskwatch benchmarks: one command (``python -m bench.run``) on one embedded broker."""
