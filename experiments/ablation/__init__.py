"""S4M ablation grid cells: cost, budget, training and evaluation of one cell."""
