"""Functional SGD, momentum and Adam with the exact Keras 3 update rules (optax style: init + update).

Keras casts its float hyperparameters (learning rate, momentum, beta_1, beta_2) through float32 before
casting to the variable dtype, and computes `1 - beta` in Python double; both are mirrored here so that
float32 and float64 runs match `model.fit` to float rounding.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import tensorflow as tf

Tensors = list[tf.Tensor]


class FunctionalOptimizer(NamedTuple):
    """`slots`: names of the per-variable state buffers (state layout: slot-major, then variable order).

    `update(params, state, grads, lr, step) -> (params, state)`; `step` is the 0-based global step.
    """

    name: str
    slots: tuple[str, ...]
    update: Callable[[Tensors, Tensors, Tensors, tf.Tensor, tf.Tensor], tuple[Tensors, Tensors]]

    def init(self, params: Sequence[tf.Tensor]) -> Tensors:
        return [tf.zeros_like(p) for _ in self.slots for p in params]


def _keras_hyper(value: float | tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """A hyperparameter as Keras sees it: a float32 value cast to `dtype`."""
    return tf.cast(tf.cast(value, tf.float32), dtype)


def sgd() -> FunctionalOptimizer:
    def update(params, state, grads, lr, step):
        return [p - g * _keras_hyper(lr, p.dtype) for p, g in zip(params, grads)], []

    return FunctionalOptimizer("sgd", (), update)


def momentum(momentum: float, nesterov: bool = False) -> FunctionalOptimizer:
    """m <- momentum * m - lr * g;  w <- w + m  (nesterov: w <- w + momentum * m - lr * g)."""

    def update(params, state, grads, lr, step):
        new_params, new_state = [], []
        for p, m, g in zip(params, state, grads):
            mu, rate = _keras_hyper(momentum, p.dtype), _keras_hyper(lr, p.dtype)
            m = m * mu - g * rate
            new_params.append(p + (m * mu - g * rate) if nesterov else p + m)
            new_state.append(m)
        return new_params, new_state

    return FunctionalOptimizer("momentum", ("momentum",), update)


def adam(beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> FunctionalOptimizer:
    """Keras Adam. sqrt(v + 1e-30) instead of sqrt(v): same values, but a finite derivative where v = 0."""

    def update(params, state, grads, lr, step):
        n = len(params)
        ms, vs = state[:n], state[n:]
        new_params, new_m, new_v = [], [], []
        for p, m, v, g in zip(params, ms, vs, grads):
            dtype = p.dtype
            local_step = tf.cast(step + 1, dtype)
            beta_1_power = tf.pow(_keras_hyper(beta_1, dtype), local_step)
            beta_2_power = tf.pow(_keras_hyper(beta_2, dtype), local_step)
            alpha = _keras_hyper(lr, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
            m = m + (g - m) * tf.constant(1 - beta_1, dtype)
            v = v + (tf.square(g) - v) * tf.constant(1 - beta_2, dtype)
            new_params.append(p - (m * alpha) / (tf.sqrt(v + tf.constant(1e-30, dtype)) + tf.constant(epsilon, dtype)))
            new_m.append(m)
            new_v.append(v)
        return new_params, new_m + new_v

    return FunctionalOptimizer("adam", ("m", "v"), update)
