"""Speed and memory benchmarks of registry models, one process per model (`speed`)."""
