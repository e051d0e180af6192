"""Benchmark harness: one module per DVC stage (`python -m experiments.<stage>`)."""
