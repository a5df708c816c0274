"""The functional optimizers reproduce Keras 3's own update rules step for step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.kernels import optimizers

CASES = [
    ("sgd", lambda: optimizers.sgd(), lambda: keras.optimizers.SGD(learning_rate=0.1), 0.1),
    (
        "momentum",
        lambda: optimizers.momentum(0.9),
        lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
        0.05,
    ),
    (
        "nesterov",
        lambda: optimizers.momentum(0.8, nesterov=True),
        lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.8, nesterov=True),
        0.05,
    ),
    ("adam", lambda: optimizers.adam(0.9, 0.999, 1e-7), lambda: keras.optimizers.Adam(learning_rate=0.01), 0.01),
    (
        "adam-custom",
        lambda: optimizers.adam(0.8, 0.99, 1e-5),
        lambda: keras.optimizers.Adam(learning_rate=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-5),
        0.003,
    ),
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
        params, state = opt.update(
            params, state, [tf.constant(g) for g in grads], tf.constant(lr, tf.float64), tf.constant(step)
        )

    for mine, theirs in zip(params, variables):
        assert mine.dtype == dtype
        # Same operations in the same order: equal up to the last bit or two.
        np.testing.assert_allclose(
            mine.numpy(), theirs.numpy(), rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps
        )


REGISTRY_CASES = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("momentum", {}),
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adamw", {}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True, "momentum": 0.5}),
    ("adagrad", {}),
    ("nadam", {}),
    ("lion", {}),
]
# Taken in turn. Gradient norms are about 3.9 (5 x 3) and 1.7 (3,), elements up to about 2.5: clipping is partial.
OPTIONS = [
    {},
    {"weight_decay": 0.1, "clipnorm": 2.0},
    {"global_clipnorm": 4.0},
    {"weight_decay": 0.1, "clipvalue": 1.0},
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "name,hyper,options",
    [(name, hyper, OPTIONS[i % len(OPTIONS)]) for i, (name, hyper) in enumerate(REGISTRY_CASES)],
    ids=[f"{name}-{'-'.join(hyper) or 'default'}" for name, hyper in REGISTRY_CASES],
)
def test_registry_update_matches_keras_apply(name, hyper, options, dtype):
    """Every registry entry against optimizer.apply of its Keras counterpart, with a learning rate that changes
    every step (set on the Keras optimizer before each step, as a schedule would): equal to the last bit."""
    rng = np.random.default_rng(1)
    shapes = [(5, 3), (3,)]
    initial = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads_per_step = [[rng.normal(size=s).astype(dtype) for s in shapes] for _ in range(5)]
    rates = [0.01, 0.03, 0.05, 0.02, 0.004]
    spec = optimizers.OPTIMIZERS[name]

    variables = [keras.Variable(p) for p in initial]
    keras_opt = spec.keras(rates[0], **options, **hyper)
    keras_opt.build(variables)
    opt = spec.functional(**options, **hyper)
    params = [tf.constant(p) for p in initial]
    state = opt.init(params)
    for step, (grads, lr) in enumerate(zip(grads_per_step, rates)):
        keras_opt.learning_rate = float(np.float32(lr))
        keras_opt.apply([tf.constant(g) for g in grads], variables)
        params, state = opt.update(
            params, state, [tf.constant(g) for g in grads], tf.constant(lr, tf.float64), tf.constant(step)
        )

    for mine, theirs in zip(params, variables):
        assert mine.dtype == dtype
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_state_layout_is_slot_major():
    params = [tf.zeros((2, 2)), tf.zeros((3,))]
    assert optimizers.sgd().init(params) == []
    adam_state = optimizers.adam().init(params)
    assert [tuple(s.shape) for s in adam_state] == [(2, 2), (3,), (2, 2), (3,)]
    assert optimizers.adam().slots == ("m", "v")
