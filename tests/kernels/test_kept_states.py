"""The replay-free sweep: every state kept from training (train(on_segment=...)) gives exactly the
hypergradients of the replaying sweep, for the mean objective, a truncated horizon and Q queries, with
Adam and BatchNorm (whose statistics are state too); states that are not the run's are caught by the
comparison with the checkpoints."""

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

N_TRAIN = 90
DTYPE = "float64"


@pytest.fixture(scope="module")
def recorded(digits_subset):
    """(recipe, checkpoints, steps, batches, validation, kept) with kept[start] the states of each segment."""
    from pipeline.models import build_model

    data = digits_subset(N_TRAIN)
    schedule = make_schedule(N_TRAIN, 16, 2, shuffle=True, seed=1, lr=0.01)
    model = build_model(
        ModelSettings(hidden=(8,), batch_norm=True),
        data.input_shapes,
        "classification",
        data.num_classes,
        DTYPE,
        seed=0,
    )
    recipe = Recipe(model, optimizers.adam(), make_task("classification", "cross_entropy", "cross_entropy"))
    batches = make_batches(data.x_train["x"], data.y_train, schedule, DTYPE, recipe.task)
    checkpoints, kept, steps = {}, {}, checkpoint_steps(schedule.n_steps, 4)
    train(recipe, recipe.initial_state(), batches, steps, checkpoints.__setitem__, on_segment=kept.__setitem__)
    validation = (as_inputs(data.x_val["x"], DTYPE), tf.constant(data.y_val))
    return recipe, checkpoints, steps, batches, validation, kept


def every_state(kept):
    """`every_state` over segments of the recorded layout: (start, stop) -> the kept arrays."""

    def read(start, stop):
        arrays = kept[start]
        assert arrays[0].shape[0] == stop - start
        return arrays

    return read


def test_kept_states_are_the_states_before_each_step(recorded):
    recipe, checkpoints, steps, _, _, kept = recorded
    assert sorted(kept) == steps[:-1]
    assert recipe.state_dtypes() == [
        np.dtype(t.dtype.as_numpy_dtype) for t in recipe.flatten(recipe.initial_state())
    ]  # what states.npy records
    for start in steps[:-1]:
        for kept_tensor, checkpoint_tensor in zip(kept[start], recipe.flatten(checkpoints[start])):
            np.testing.assert_array_equal(kept_tensor[0], checkpoint_tensor.numpy())


@pytest.mark.parametrize("horizon", [None, 6])
def test_sweep_without_replay_equals_the_replaying_sweep(recorded, horizon):
    recipe, checkpoints, steps, batches, validation, kept = recorded
    sweep = ReverseSweep(recipe)
    replayed = sweep.run(checkpoints, steps, batches, *validation, horizon=horizon)
    read = sweep.run(checkpoints, steps, batches, *validation, horizon=horizon, every_state=every_state(kept))
    assert np.count_nonzero(replayed.influence) > 0
    np.testing.assert_array_equal(read.influence, replayed.influence)
    np.testing.assert_array_equal(read.input_grad[0], replayed.input_grad[0])
    assert read.replay_error == 0.0 and replayed.replay_error == 0.0


def test_queries_without_replay_equal_the_replaying_queries(recorded):
    recipe, checkpoints, steps, batches, (x_val, y_val), kept = recorded
    sweep = ReverseSweep(recipe)
    weights = tf.constant(np.eye(int(y_val.shape[0]))[[0, 4, 9]], tf.float64)
    replayed = sweep.run_queries(checkpoints, steps, batches, x_val, y_val, weights, input_grad=True)
    read = sweep.run_queries(
        checkpoints, steps, batches, x_val, y_val, weights, input_grad=True, every_state=every_state(kept)
    )
    np.testing.assert_array_equal(read.influence, replayed.influence)
    np.testing.assert_array_equal(read.input_grad[0], replayed.input_grad[0])


def test_states_of_another_run_show_as_replay_error(recorded):
    recipe, checkpoints, steps, batches, validation, kept = recorded
    shifted = {start: [a + 1e-3 if a.dtype.kind == "f" else a for a in arrays] for start, arrays in kept.items()}
    result = ReverseSweep(recipe).run(checkpoints, steps, batches, *validation, every_state=every_state(shifted))
    assert result.replay_error == pytest.approx(1e-3, rel=1e-6)
