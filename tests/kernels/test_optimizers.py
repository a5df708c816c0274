"""The functional optimizers reproduce Keras 3's own update rules step for step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.kernels import optimizers

CASES = [
    ("sgd", lambda: optimizers.sgd(), lambda: keras.optimizers.SGD(learning_rate=0.1), 0.1),
    ("momentum", lambda: optimizers.momentum(0.9), lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9), 0.05),
    ("nesterov", lambda: optimizers.momentum(0.8, nesterov=True), lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.8, nesterov=True), 0.05),
    ("adam", lambda: optimizers.adam(0.9, 0.999, 1e-7), lambda: keras.optimizers.Adam(learning_rate=0.01), 0.01),
    ("adam-custom", lambda: optimizers.adam(0.8, 0.99, 1e-5), lambda: keras.optimizers.Adam(learning_rate=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-5), 0.003),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,functional,reference,lr", CASES, ids=[c[0] for c in CASES])
def test_update_matches_keras_optimizer(name, functional, reference, lr, dtype):
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (3,)]
    initial = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads_per_step = [[rng.normal(size=s).astype(dtype) for s in shapes] for _ in range(7)]

    variables = [keras.Variable(p) for p in initial]
    keras_opt = reference()
    keras_opt.build(variables)
    opt = functional()
    params = [tf.constant(p) for p in initial]
    state = opt.init(params)
    for step, grads in enumerate(grads_per_step):
        keras_opt.apply([tf.constant(g) for g in grads], variables)
        params, state = opt.update(params, state, [tf.constant(g) for g in grads], tf.constant(lr, tf.float64), tf.constant(step))

    for mine, theirs in zip(params, variables):
        assert mine.dtype == dtype
        # Same operations in the same order: equal up to the last bit or two.
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


def test_state_layout_is_slot_major():
    params = [tf.zeros((2, 2)), tf.zeros((3,))]
    assert optimizers.sgd().init(params) == []
    adam_state = optimizers.adam().init(params)
    assert [tuple(s.shape) for s in adam_state] == [(2, 2), (3,), (2, 2), (3,)]
    assert optimizers.adam().slots == ("m", "v")
