"""Per-sample methods (lookahead, tracin, loss, saliency, sensitivity) against finite differences
and hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.kernels import optimizers
from pipeline.kernels.per_sample import SampleScorer
from pipeline.kernels.schedule import make_schedule
from pipeline.kernels.task import cross_entropy, make_task
from pipeline.kernels.training import Recipe, as_inputs, make_batches, per_sample_losses, train
from pipeline.metrics import relative_errors
from pipeline.models import build_model

DT = tf.float64


@pytest.fixture(scope="module")
def trained(digits_subset):
    """A briefly trained float64 MLP with momentum (so the optimizer state matters for lookahead)."""
    data = digits_subset(100)
    model = build_model(ModelSettings(hidden=(8,)), data.input_shapes, "classification", 10, "float64", 0)
    recipe = Recipe(model, optimizers.momentum(0.9), make_task("classification", "cross_entropy", "cross_entropy"))
    schedule = make_schedule(100, 20, 2, True, 0, 0.05)
    states = {}
    train(
        recipe,
        recipe.initial_state(),
        make_batches(data.x_train["x"], data.y_train, schedule, "float64", recipe.task),
        [0, 5, 10],
        states.__setitem__,
    )
    return data, recipe, states


def _batch(data, ids):
    return as_inputs(data.x_train["x"][ids], DT), tf.constant(data.y_train[ids])


def _val(data):
    return as_inputs(data.x_val["x"], DT), tf.constant(data.y_val)


def _shift(x, row, delta):
    """The 1-tuple of inputs holding sample `row` of x moved by delta."""
    return (x[0][row : row + 1] + delta,)


def _direction(x_i, seed):
    u = np.random.default_rng(seed).normal(size=x_i.shape) * (x_i != 0)
    return u / np.linalg.norm(u)


def test_loss_and_saliency(trained):
    data, recipe, states = trained
    scorer, final = SampleScorer(recipe), states[10]
    x, y = _batch(data, np.arange(12))
    loss, (grad,) = scorer.loss(final, x, y)
    np.testing.assert_allclose(
        loss.numpy(), per_sample_losses(recipe, final, [data.x_train["x"][:12]], data.y_train[:12]), rtol=1e-12
    )
    norm, (same_grad,) = scorer.saliency(final, x, y)
    np.testing.assert_allclose(norm.numpy(), np.linalg.norm(grad.numpy().reshape(12, -1), axis=1), rtol=1e-12)
    np.testing.assert_array_equal(same_grad.numpy(), grad.numpy())
    i, h = 4, 1e-5
    u = _direction(data.x_train["x"][i], i)
    plus, _ = scorer.loss(final, _shift(x, i, h * u), y[i : i + 1])
    minus, _ = scorer.loss(final, _shift(x, i, -h * u), y[i : i + 1])
    assert relative_errors(np.sum(grad.numpy()[i] * u), (plus - minus).numpy()[0] / (2 * h)) < 1e-7


def test_tracin_matches_per_sample_gradients_by_hand(trained):
    data, recipe, states = trained
    scorer = SampleScorer(recipe)
    x_val, y_val = _val(data)
    checkpoints = [scorer.checkpoint(w, states[t], x_val, y_val) for w, t in ((0.025, 0), (0.025, 5))]
    ids = np.array([0, 7, 31, 64])
    x, y = _batch(data, ids)
    influence, (input_grad,) = scorer.tracin(checkpoints, x, y)

    expected = np.zeros(ids.size)
    for c in checkpoints:
        with tf.GradientTape() as tape:
            tape.watch(c.state.trainable)
            value = recipe.objective(c.state, x_val, y_val)
        grad_e = tape.gradient(value, c.state.trainable)
        for row in range(ids.size):
            with tf.GradientTape() as tape:
                tape.watch(c.state.trainable)
                out, _ = recipe.forward(
                    c.state.trainable, c.state.non_trainable, (x[0][row : row + 1],), training=False
                )
                loss = cross_entropy(from_logits=True)(out, y[row : row + 1])[0]
            grad_l = tape.gradient(loss, c.state.trainable)
            expected[row] -= c.weight * sum(float(tf.reduce_sum(a * b)) for a, b in zip(grad_e, grad_l))
    np.testing.assert_allclose(influence.numpy(), expected, rtol=1e-10)

    row, h = 2, 1e-5
    u = _direction(data.x_train["x"][ids[row]], 3)
    plus, _ = scorer.tracin(checkpoints, _shift(x, row, h * u), y[row : row + 1])
    minus, _ = scorer.tracin(checkpoints, _shift(x, row, -h * u), y[row : row + 1])
    assert relative_errors(np.sum(input_grad.numpy()[row] * u), (plus - minus).numpy()[0] / (2 * h)) < 1e-6


def _lookahead_objective(recipe, state, x_i, y_i, eps, data, steps, lr, first_step):
    for k in range(steps):
        state, _ = recipe.step(
            state,
            as_inputs(x_i[None], DT),
            tf.constant(y_i[None]),
            tf.constant([eps], DT),
            tf.constant(lr, tf.float64),
            tf.constant(first_step + k),
        )
    return float(recipe.objective(state, *_val(data)))


@pytest.mark.parametrize("steps", [1, 3])
def test_lookahead_matches_finite_differences(trained, steps):
    data, recipe, states = trained
    scorer, final = SampleScorer(recipe), states[10]
    ids = np.array([3, 50, 99])
    x, y = _batch(data, ids)
    influence, (input_grad,) = scorer.lookahead(final, x, y, *_val(data), lr=0.05, first_step=10, steps=steps)
    h = 1e-5
    for row, i in enumerate(ids):
        x_i = data.x_train["x"][i]

        def f(eps=1.0, dx=0.0, x_i=x_i, i=i):
            return _lookahead_objective(recipe, final, x_i + dx, data.y_train[i], eps, data, steps, 0.05, 10)

        assert relative_errors(influence.numpy()[row], (f(eps=1 + h) - f(eps=1 - h)) / (2 * h)) < 1e-6
        u = _direction(x_i, i)
        assert relative_errors(np.sum(input_grad.numpy()[row] * u), (f(dx=h * u) - f(dx=-h * u)) / (2 * h)) < 1e-6


def test_sensitivity_of_a_two_input_model_is_analytic(float64_keras):
    """Seed 004's subclassed model out = (hidden(h) + 1) * p on inputs [p, h]: the sensitivity kernel gives
    d out / d p = hidden(h) + 1 and d out / d h = p * kernel exactly, and influence = the output."""
    settings = ModelSettings(name="custom", builder="pipeline.examples.seed_models:price_model")
    shapes = {"reference_prices": (1,), "hidden_inputs": (2,)}
    model = build_model(settings, shapes, "regression", 1, "float64", 0)
    recipe = Recipe(model, optimizers.sgd(), make_task("regression", "mse", "mse"))
    state = recipe.initial_state()
    rng = np.random.default_rng(1)
    prices, hidden = rng.uniform(50, 150, size=(6, 1)), rng.normal(size=(6, 2))
    influence, (d_prices, d_hidden) = SampleScorer(recipe).sensitivity(state, as_inputs([prices, hidden], DT), [1.0])
    kernel, bias = (v.numpy() for v in model.trainable_variables)
    hidden_out = hidden @ kernel + bias  # [6, 1]
    np.testing.assert_allclose(influence.numpy(), ((hidden_out + 1) * prices)[:, 0], rtol=1e-15)
    np.testing.assert_allclose(d_prices.numpy(), hidden_out + 1, rtol=1e-15)
    np.testing.assert_allclose(d_hidden.numpy(), prices * kernel[:, 0][None, :], rtol=1e-15)


def test_sensitivity_weights_pick_output_rows(trained):
    """With output weights e_k the sensitivity is row k of the Jacobian d out / d x, checked by finite differences."""
    data, recipe, states = trained
    final, scorer = states[10], SampleScorer(recipe)
    x, _ = _batch(data, np.array([5]))
    u = _direction(data.x_train["x"][5], 9)
    h = 1e-6
    for k in (0, 7):
        weights = np.eye(10)[k]
        value, (grad,) = scorer.sensitivity(final, x, weights)
        out, _ = recipe.forward(final.trainable, final.non_trainable, x, training=False)
        assert value.numpy()[0] == pytest.approx(out.numpy()[0, k], rel=1e-14)
        plus, _ = scorer.sensitivity(final, _shift(x, 0, h * u), weights)
        minus, _ = scorer.sensitivity(final, _shift(x, 0, -h * u), weights)
        assert relative_errors(np.sum(grad.numpy()[0] * u), (plus - minus).numpy()[0] / (2 * h)) < 1e-7
