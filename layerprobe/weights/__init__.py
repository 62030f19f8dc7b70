"""Weights at rest: checkpoints read tensor by tensor, their diffs and drift, the drift anchor."""
