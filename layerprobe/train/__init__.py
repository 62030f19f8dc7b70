"""A run: choosing what trains, the stages as a table, the pipeline that walks them into a run folder."""
