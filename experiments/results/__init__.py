"""CPU results (`make results`): scaled models trained long enough to separate, several seeds
each, evaluated on the whole test split; statistics, curves, listening examples."""
