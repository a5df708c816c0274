"""Per-sample methods (lookahead, tracin, loss, saliency) against finite differences and hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import DataSettings, ModelSettings
from pipeline.data import load_dataset
from pipeline.kernels import objectives, optimizers
from pipeline.kernels.per_sample import SampleScorer
from pipeline.kernels.schedule import make_schedule
from pipeline.kernels.training import Recipe, make_batches, per_sample_losses, train
from pipeline.metrics import relative_errors
from pipeline.models import build_model

DT = tf.float64


@pytest.fixture(scope="module")
def trained():
    """A briefly trained float64 MLP with momentum (so the optimizer state matters for lookahead)."""
    data = load_dataset(DataSettings(max_train=100))
    recipe = Recipe(build_model(ModelSettings(hidden=(8,)), data.input_shape, 10, "float64", 0), optimizers.momentum(0.9), "cross_entropy", True, data.input_shape)
    schedule = make_schedule(100, 20, 2, True, 0, 0.05)
    states = {}
    train(recipe, recipe.initial_state(), make_batches(data.x_train, data.y_train, schedule, "float64"), [0, 5, 10], states.__setitem__)
    return data, recipe, states


def _batch(data, ids):
    return tf.constant(data.x_train[ids], DT), tf.constant(data.y_train[ids])


def _direction(x_i, seed):
    u = np.random.default_rng(seed).normal(size=x_i.shape) * (x_i != 0)
    return u / np.linalg.norm(u)


def test_loss_and_saliency(trained):
    data, recipe, states = trained
    scorer, final = SampleScorer(recipe, "cross_entropy"), states[10]
    x, y = _batch(data, np.arange(12))
    loss, grad = scorer.loss(final, x, y)
    np.testing.assert_allclose(loss.numpy(), per_sample_losses(recipe, final, data.x_train[:12], data.y_train[:12]), rtol=1e-12)
    norm, same_grad = scorer.saliency(final, x, y)
    np.testing.assert_allclose(norm.numpy(), np.linalg.norm(grad.numpy(), axis=1), rtol=1e-12)
    np.testing.assert_array_equal(same_grad.numpy(), grad.numpy())
    i, h = 4, 1e-5
    u = _direction(data.x_train[i], i)
    plus, _ = scorer.loss(final, tf.constant(data.x_train[i : i + 1] + h * u, DT), y[i : i + 1])
    minus, _ = scorer.loss(final, tf.constant(data.x_train[i : i + 1] - h * u, DT), y[i : i + 1])
    assert relative_errors(grad.numpy()[i] @ u, (plus - minus).numpy()[0] / (2 * h)) < 1e-7


def test_tracin_matches_per_sample_gradients_by_hand(trained):
    data, recipe, states = trained
    scorer = SampleScorer(recipe, "cross_entropy")
    x_val, y_val = tf.constant(data.x_val, DT), tf.constant(data.y_val)
    checkpoints = [scorer.checkpoint(w, states[t], x_val, y_val) for w, t in ((0.025, 0), (0.025, 5))]
    ids = np.array([0, 7, 31, 64])
    x, y = _batch(data, ids)
    influence, input_grad = scorer.tracin(checkpoints, x, y)

    expected = np.zeros(ids.size)
    for c in checkpoints:
        with tf.GradientTape() as tape:
            tape.watch(c.state.trainable)
            value = recipe.objective(c.state, x_val, y_val, "cross_entropy")
        grad_e = tape.gradient(value, c.state.trainable)
        for row in range(ids.size):
            with tf.GradientTape() as tape:
                tape.watch(c.state.trainable)
                out, _ = recipe.forward(c.state.trainable, c.state.non_trainable, x[row : row + 1], training=False)
                loss = objectives.cross_entropy(out, y[row : row + 1])[0]
            grad_l = tape.gradient(loss, c.state.trainable)
            expected[row] -= c.weight * sum(float(tf.reduce_sum(a * b)) for a, b in zip(grad_e, grad_l))
    np.testing.assert_allclose(influence.numpy(), expected, rtol=1e-10)

    row, h = 2, 1e-5
    u = _direction(data.x_train[ids[row]], 3)
    plus, _ = scorer.tracin(checkpoints, x[row : row + 1] + h * u, y[row : row + 1])
    minus, _ = scorer.tracin(checkpoints, x[row : row + 1] - h * u, y[row : row + 1])
    assert relative_errors(input_grad.numpy()[row] @ u, (plus - minus).numpy()[0] / (2 * h)) < 1e-6


def _lookahead_objective(recipe, state, x_i, y_i, eps, data, steps, lr, first_step):
    for k in range(steps):
        state, _ = recipe.step(state, tf.constant(x_i[None], DT), tf.constant(y_i[None]), tf.constant([eps], DT), tf.constant(lr, tf.float64), tf.constant(first_step + k))
    return float(recipe.objective(state, tf.constant(data.x_val, DT), tf.constant(data.y_val), "cross_entropy"))


@pytest.mark.parametrize("steps", [1, 3])
def test_lookahead_matches_finite_differences(trained, steps):
    data, recipe, states = trained
    scorer, final = SampleScorer(recipe, "cross_entropy"), states[10]
    ids = np.array([3, 50, 99])
    x, y = _batch(data, ids)
    influence, input_grad = scorer.lookahead(final, x, y, tf.constant(data.x_val, DT), tf.constant(data.y_val), lr=0.05, first_step=10, steps=steps)
    h = 1e-5
    for row, i in enumerate(ids):
        f = lambda eps=1.0, dx=0.0: _lookahead_objective(recipe, final, data.x_train[i] + dx, data.y_train[i], eps, data, steps, 0.05, 10)  # noqa: E731
        assert relative_errors(influence.numpy()[row], (f(eps=1 + h) - f(eps=1 - h)) / (2 * h)) < 1e-6
        u = _direction(data.x_train[i], i)
        assert relative_errors(input_grad.numpy()[row] @ u, (f(dx=h * u) - f(dx=-h * u)) / (2 * h)) < 1e-6
