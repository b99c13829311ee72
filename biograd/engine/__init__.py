"""Training engines: the loops, checkpoints, distributed set-up and run logging."""
