"""Several objectives in one reverse sweep (ReverseSweep.run_queries) against the single-objective sweep:
a one-hot query is the mean objective of a one-sample validation set, and queries are linear in the
objective (float64, a small MLP, momentum, two epochs)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.kernels import optimizers
from pipeline.kernels.schedule import checkpoint_steps, make_schedule
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Recipe, as_inputs, make_batches, train
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.metrics import relative_errors

N_TRAIN = 120
DTYPE = "float64"
QUERIES = (0, 5, 17)  # validation samples


@pytest.fixture(scope="module")
def run(digits_subset):
    """(dataset, sweep, checkpoints, steps, batches) of one recorded training run."""
    from pipeline.models import build_model

    data = digits_subset(N_TRAIN)
    schedule = make_schedule(N_TRAIN, 20, 2, shuffle=True, seed=0, lr=0.05)
    model = build_model(
        ModelSettings(hidden=(8,)), data.input_shapes, "classification", data.num_classes, DTYPE, seed=0
    )
    recipe = Recipe(model, optimizers.momentum(0.9), make_task("classification", "cross_entropy", "cross_entropy"))
    stored, steps = {}, checkpoint_steps(schedule.n_steps, 4)
    batches = make_batches(data.x_train["x"], data.y_train, schedule, DTYPE, recipe.task)
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__)
    return data, ReverseSweep(recipe), stored, steps, batches


def _validation(data, rows=None):
    rows = np.arange(data.n_val) if rows is None else np.asarray(rows)
    return as_inputs(data.x_val["x"][rows], DTYPE), tf.constant(data.y_val[rows])


def test_one_hot_query_equals_mean_over_that_single_validation_sample(run):
    data, sweep, stored, steps, batches = run
    weights = tf.constant(np.eye(len(QUERIES)), tf.float64)
    result = sweep.run_queries(stored, steps, batches, *_validation(data, QUERIES), weights, input_grad=True)
    assert result.influence.shape == (len(QUERIES), N_TRAIN) and result.input_grad[0].shape == (
        len(QUERIES),
        N_TRAIN,
        8,
        8,
        1,
    )
    assert result.replay_error == 0.0
    for q, j in enumerate(QUERIES):
        single = sweep.run(stored, steps, batches, *_validation(data, [j]))
        assert result.objective[q] == pytest.approx(single.objective, rel=1e-14)
        assert relative_errors(result.influence[q], single.influence).max() <= 1e-8
        assert relative_errors(result.input_grad[0][q].ravel(), single.input_grad[0].ravel()).max() <= 1e-8


def test_mean_of_per_sample_queries_equals_the_mean_objective(run):
    data, sweep, stored, steps, batches = run
    n_val = data.n_val
    result = sweep.run_queries(stored, steps, batches, *_validation(data), tf.constant(np.eye(n_val), tf.float64))
    mean = sweep.run(stored, steps, batches, *_validation(data))
    assert result.input_grad == ()
    assert np.mean(result.objective) == pytest.approx(mean.objective, rel=1e-12)
    np.testing.assert_allclose(
        result.influence.mean(axis=0), mean.influence, rtol=1e-8, atol=1e-15 * np.abs(mean.influence).max()
    )


def test_class_query_is_the_mean_over_that_class(run):
    data, sweep, stored, steps, batches = run
    rows = np.flatnonzero(data.y_val == 3)
    weights = np.zeros((2, data.n_val))
    weights[0, rows] = 1 / rows.size
    weights[1] = 1 / data.n_val  # the mean objective, as a query
    result = sweep.run_queries(stored, steps, batches, *_validation(data), tf.constant(weights, tf.float64))
    of_class, mean = (
        sweep.run(stored, steps, batches, *_validation(data, rows)),
        sweep.run(stored, steps, batches, *_validation(data)),
    )
    np.testing.assert_allclose(result.influence[0], of_class.influence, rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(result.influence[1], mean.influence, rtol=1e-8, atol=1e-15)
