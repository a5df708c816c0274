"""Orchestration, one module per stage. Driver-side functions submit Ray tasks; the task bodies import
TensorFlow (inside the worker) and call the kernels. No math here."""
