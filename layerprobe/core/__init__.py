"""The base every stage shares: parameter names, content keys, configs, the run-folder layout, statistics."""
