"""The training engine: optimizer, train state, pure step functions, checkpoints, the loop."""
