"""Training: the shared iteration-based trainer, losses, EMA, checkpoints."""
