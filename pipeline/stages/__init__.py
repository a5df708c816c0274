"""Orchestration, one module per stage, run by the driver: plan the work, submit Ray tasks and actors, check and
record what they wrote. The task bodies and actor classes live in pipeline.runtime and are named here through its
handles (`runtime.score_seed`, ...), so no stage module imports TensorFlow or a kernel that does. No math here."""
