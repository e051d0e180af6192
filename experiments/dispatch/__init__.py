"""Sends the pipeline's pending train, evaluate and ablate stages to a cluster (SLURM through
submitit) as job arrays and records the finished ones in DVC; see
experiments/stages/dispatch.py for the command."""
