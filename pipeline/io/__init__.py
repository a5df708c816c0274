"""Files of a run: layout, atomic writes, checkpoints, schedules, score tables and the manifest."""
