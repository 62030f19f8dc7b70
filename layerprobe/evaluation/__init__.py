"""Evaluating a model: generation, probes, harness tasks, one service and its cache, the outcomes read from it."""
