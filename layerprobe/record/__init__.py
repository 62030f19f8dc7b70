"""Recording during training: each step's per-layer quantities into the records table."""
