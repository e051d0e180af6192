"""Thin entry points of the pipeline's commands (`python -m experiments.stages.<name>`)."""
