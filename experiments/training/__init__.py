"""Training: one Lightning trainer for every registry model (`trainer.train`)."""
