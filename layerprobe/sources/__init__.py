"""Where a run's model and data come from: files and the hub, the real data sets, the toy world, model presets."""
