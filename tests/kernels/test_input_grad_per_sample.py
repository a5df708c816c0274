"""lookahead and tracin with input_grad=False (influence.input_grad=false): no input gradient, the same influence to
the last bit, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.kernels import optimizers
from pipeline.kernels.per_sample import SampleScorer
from pipeline.kernels.schedule import make_schedule
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Recipe, as_inputs, make_batches, train
from pipeline.models import build_model


@pytest.fixture(scope="module", params=["float64", "float32"])
def trained(request, digits_subset):
    dtype = request.param
    data = digits_subset(100)
    model = build_model(ModelSettings(hidden=(8,)), data.input_shapes, "classification", 10, dtype, 0)
    recipe = Recipe(model, optimizers.momentum(0.9), make_task("classification", "cross_entropy", "cross_entropy"))
    states = {}
    train(
        recipe,
        recipe.initial_state(),
        make_batches(data.x_train["x"], data.y_train, make_schedule(100, 20, 2, True, 0, 0.05), dtype, recipe.task),
        [0, 5, 10],
        states.__setitem__,
    )
    ids = np.arange(0, 100, 7)
    x, y = as_inputs(data.x_train["x"][ids], dtype), tf.constant(data.y_train[ids])
    return SampleScorer(recipe), states, x, y, (as_inputs(data.x_val["x"], dtype), tf.constant(data.y_val))


def test_tracin_without_input_grad(trained):
    scorer, states, x, y, validation = trained
    checkpoints = [scorer.checkpoint(w, states[t], *validation) for w, t in ((0.025, 0), (0.025, 5))]
    influence, grads = scorer.tracin(checkpoints, x, y)
    lean, none = scorer.tracin(checkpoints, x, y, input_grad=False)
    assert none == () and len(grads) == 1 and np.any(grads[0].numpy())
    np.testing.assert_array_equal(lean.numpy(), influence.numpy())


@pytest.mark.parametrize("steps", [1, 2])
def test_lookahead_without_input_grad(trained, steps):
    scorer, states, x, y, validation = trained
    influence, grads = scorer.lookahead(states[10], x, y, *validation, lr=0.05, first_step=10, steps=steps)
    lean, none = scorer.lookahead(states[10], x, y, *validation, lr=0.05, first_step=10, steps=steps, input_grad=False)
    assert none == () and len(grads) == 1 and np.any(grads[0].numpy())
    np.testing.assert_array_equal(lean.numpy(), influence.numpy())
