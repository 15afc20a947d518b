"""Benchmarks against ``implicit`` and pandas; run each as ``python -m benchmarks.NAME`` from
the repository root (results under ``benchmarks/results/``, see BENCHMARKS.md)."""
