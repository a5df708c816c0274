"""Pure TensorFlow kernels: no Ray, Hydra or file I/O.

State in, state out: functional optimizers with the Keras 3 update rules, the training step with
per-sample weights eps, objectives, and the reverse sweep that yields hypergradients.
"""
