"""Thin entry points of the pipeline stages and tools: parse arguments, call a library."""
