"""Thin entry points, one per DVC stage or user command: parse arguments, load settings, call the
harness library, write outputs. No module here imports another."""
