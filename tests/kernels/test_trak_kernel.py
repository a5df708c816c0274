"""TRAK kernel against hand computation: the projection assembled whole, per-sample gradients taken one
sample at a time, the closed-form influence function of least squares, and finite differences in x."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.kernels import optimizers, trak_scores
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Recipe, as_inputs
from pipeline.kernels.trak import Projection, TrakScorer, blocks
from pipeline.models import build_model

DT = tf.float64


def _whole(projection: Projection) -> np.ndarray:
    """[p, k] the projection matrix assembled from its blocks (only tests ever hold it whole)."""
    per_variable: list[list[np.ndarray]] = [[] for _ in projection.shapes]
    for number, b in enumerate(projection.blocks):
        per_variable[b.variable].append(projection.block(number).numpy())
    return np.concatenate([np.concatenate(rows) for rows in per_variable])


def test_blocks_cover_every_parameter_once():
    plan = blocks([5, 12, 3], block_rows=4)
    assert [(b.variable, b.start, b.stop) for b in plan] == [
        (0, 0, 4),
        (0, 4, 5),
        (1, 0, 4),
        (1, 4, 8),
        (1, 8, 12),
        (2, 0, 3),
    ]


def test_projection_is_rademacher_reproducible_and_consistent():
    shapes = [(6, 5), (5,), (5, 3)]
    projection = Projection(shapes, dim=64, seed=7, block_rows=8)
    whole = _whole(projection)
    assert whole.shape == (50, 64)
    np.testing.assert_array_equal(np.abs(whole), np.full(whole.shape, 1 / 8))  # +-1/sqrt(k)
    assert 0.4 < np.mean(whole > 0) < 0.6
    np.testing.assert_array_equal(_whole(Projection(shapes, 64, 7, block_rows=8)), whole)  # same seed, same matrix
    assert not np.array_equal(_whole(Projection(shapes, 64, 8, block_rows=8)), whole)
    rng = np.random.default_rng(0)
    flat = [rng.normal(size=(3, 30)), rng.normal(size=(3, 5)), rng.normal(size=(3, 15))]
    projected = projection.project([tf.constant(f, tf.float32) for f in flat]).numpy()
    np.testing.assert_allclose(projected, np.concatenate(flat, axis=1) @ whole, rtol=1e-5, atol=1e-6)
    w = rng.normal(size=64)
    lifted = np.concatenate([t.numpy().reshape(-1) for t in projection.lift(w, DT)])
    np.testing.assert_allclose(lifted, whole @ w, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def classifier(digits_subset):
    data = digits_subset(60)
    model = build_model(ModelSettings(hidden=(6,)), data.input_shapes, "classification", 10, "float64", 0)
    recipe = Recipe(model, optimizers.sgd(), make_task("classification", "cross_entropy", "cross_entropy"))
    state = recipe.initial_state()
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    return data, recipe, state, TrakScorer(recipe, Projection(shapes, dim=32, seed=3, block_rows=100))


def test_classification_features_are_projected_margin_gradients(classifier):
    data, recipe, state, scorer = classifier
    x, y = as_inputs(data.x_train["x"][:7], DT), tf.constant(data.y_train[:7])
    features = scorer.features(state, x, y)
    whole = _whole(scorer.projection)
    for i in range(7):
        with tf.GradientTape() as tape:
            tape.watch(state.trainable)
            logits, _ = recipe.forward(state.trainable, state.non_trainable, (x[0][i : i + 1],), training=False)
            p = tf.nn.softmax(logits)[0, int(y[i])]
            margin = tf.math.log(p / (1 - p))  # TRAK's output function, spelled out
        grad = np.concatenate([g.numpy().reshape(-1) for g in tape.gradient(margin, state.trainable)])
        np.testing.assert_allclose(features.phi.numpy()[i], grad @ whole, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(features.slope.numpy()[i], -(1 - p.numpy()), rtol=1e-10)


def test_scores_from_features_equal_the_lifted_direction_and_its_x_gradient(classifier):
    data, recipe, state, scorer = classifier
    x, y = as_inputs(data.x_train["x"][:40], DT), tf.constant(data.y_train[:40])
    features = scorer.features(state, x, y)
    phi, slope = features.phi.numpy(), features.slope.numpy()
    inverse = trak_scores.kernel_inverse(phi.astype(np.float64).T @ phi, 1e-3)
    x_val, y_val = as_inputs(data.x_val["x"], DT), tf.constant(data.y_val)
    target = scorer.objective_feature(state, x_val, y_val).numpy()
    expected = trak_scores.scores(phi, slope, inverse, target[None])[0]
    direction = scorer.projection.lift(inverse @ target, DT)
    along, (grad,) = scorer.directional(state, direction, x, y)
    np.testing.assert_allclose(along.numpy(), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    # d/dx_i of the score, against central differences along a random direction of x_i
    i, h = 5, 1e-5
    u = np.random.default_rng(1).normal(size=x[0].shape[1:])
    shifted = [
        scorer.directional(state, direction, (x[0][i : i + 1] + s * h * u,), y[i : i + 1])[0].numpy()[0]
        for s in (1, -1)
    ]
    np.testing.assert_allclose((shifted[0] - shifted[1]) / (2 * h), np.sum(grad.numpy()[i] * u), rtol=1e-6)


def test_mean_of_per_sample_objective_features_is_the_objective_feature(classifier):
    data, _, state, scorer = classifier
    x_val, y_val = as_inputs(data.x_val["x"], DT), tf.constant(data.y_val)
    rows = scorer.objective_features(state, x_val, y_val).numpy()
    np.testing.assert_allclose(
        rows.mean(axis=0), scorer.objective_feature(state, x_val, y_val).numpy(), rtol=1e-4, atol=1e-6
    )


def test_least_squares_trak_is_the_influence_function_with_unit_curvature():
    """Linear regression, k = p: TRAK's kernel is X^T X exactly, so its score is the influence function
    -grad E^T H^-1 grad loss_i / N with H = (1/N) X^T X, i.e. the true one (curvature 2) times 2."""
    rng = np.random.default_rng(0)
    n, d = 30, 4
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    x_val, y_val = rng.normal(size=(10, d)), rng.normal(size=10)
    model = keras.Sequential([keras.Input((d,), dtype="float64"), keras.layers.Dense(1, dtype="float64")])
    model(np.zeros((1, d)))
    weights = rng.normal(size=(d, 1)), rng.normal(size=1)
    model.set_weights(list(weights))
    recipe = Recipe(model, optimizers.sgd(), make_task("regression", "mse", "mse"))
    state = recipe.initial_state()
    scorer = TrakScorer(recipe, Projection([(d, 1), (1,)], dim=d + 1, seed=0))
    features = scorer.features(state, (tf.constant(x),), tf.constant(y))
    phi, slope = features.phi.numpy().astype(np.float64), features.slope.numpy()
    inverse = trak_scores.kernel_inverse(phi.T @ phi, 0.0)
    target = scorer.objective_feature(state, (tf.constant(x_val),), tf.constant(y_val)).numpy()
    trak = trak_scores.scores(phi, slope, inverse, target[None])[0]

    design = np.hstack([x, np.ones((n, 1))])  # gradient of the output in (kernel, bias)
    residual = 2 * (design @ np.concatenate([weights[0][:, 0], weights[1]]) - y)  # d loss_i / d out_i
    val_design = np.hstack([x_val, np.ones((10, 1))])
    grad_e = val_design.T @ (2 * (val_design @ np.concatenate([weights[0][:, 0], weights[1]]) - y_val)) / 10
    hessian = 2 * design.T @ design / n
    influence_function = -(grad_e @ np.linalg.solve(hessian, (design * residual[:, None]).T)) / n
    np.testing.assert_allclose(trak, 2 * influence_function, rtol=2e-3, atol=1e-6 * np.abs(trak).max())
    np.testing.assert_allclose(np.abs(slope), np.abs(residual), rtol=1e-10)


def test_self_influence_is_the_quadratic_form():
    rng = np.random.default_rng(2)
    phi, slope = rng.normal(size=(9, 4)), rng.normal(size=9)
    inverse = trak_scores.kernel_inverse(phi.T @ phi, 0.1)
    expected = [slope[i] ** 2 * phi[i] @ inverse @ phi[i] for i in range(9)]
    np.testing.assert_allclose(trak_scores.self_influence(phi, slope, inverse), expected, rtol=1e-12)
    np.testing.assert_allclose(
        inverse, np.linalg.inv(phi.T @ phi + 0.1 * np.trace(phi.T @ phi) / 4 * np.eye(4)), rtol=1e-12
    )
