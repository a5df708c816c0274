"""Trajectory hypergradients against finite differences of real retraining, against a full-tape
reference, and against hand-checkable cases (float64, small models, short runs)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.kernels import optimizers
from pipeline.kernels.schedule import Schedule, checkpoint_steps, make_schedule
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Recipe, as_inputs, make_batches, train
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.metrics import relative_errors
from pipeline.models import build_model

N_TRAIN = 120
DTYPE = "float64"


@pytest.fixture(scope="module")
def digits(digits_subset):
    return digits_subset(N_TRAIN)


class Problem:
    """A small training run with helpers to retrain it under perturbations."""

    def __init__(
        self,
        digits,
        model=ModelSettings(hidden=(8,)),
        optimizer=None,
        lr=0.1,
        loss="cross_entropy",
        objective="cross_entropy",
        schedule=None,
    ):
        self.digits = digits
        self.x_train, self.x_val = digits.x_train["x"], digits.x_val["x"]  # [N, 8, 8, 1]
        self.schedule = schedule or make_schedule(N_TRAIN, 20, 2, shuffle=True, seed=0, lr=lr)
        keras_model = build_model(model, digits.input_shapes, "classification", digits.num_classes, DTYPE, seed=0)
        self.recipe = Recipe(keras_model, optimizer or optimizers.sgd(), make_task("classification", loss, objective))
        self.initial = self.recipe.initial_state()

    def hypergradients(self, every=None):
        stored = {}
        steps = checkpoint_steps(self.schedule.n_steps, every)
        batches = make_batches(self.x_train, self.digits.y_train, self.schedule, DTYPE, self.recipe.task)
        train(self.recipe, self.initial, batches, steps, stored.__setitem__)
        return ReverseSweep(self.recipe).run(
            stored, steps, batches, as_inputs(self.x_val, DTYPE), tf.constant(self.digits.y_val)
        )

    def retrained_objective(self, eps=None, x=None):
        x = self.x_train.astype(DTYPE) if x is None else x
        batches = make_batches(x, self.digits.y_train, self.schedule, DTYPE, self.recipe.task, eps)
        out = {}
        train(self.recipe, self.initial, batches, [0, self.schedule.n_steps], out.__setitem__)
        return float(
            self.recipe.objective(
                out[self.schedule.n_steps], as_inputs(self.x_val, DTYPE), tf.constant(self.digits.y_val)
            )
        )

    def fd_eps(self, i, h):
        eps = np.ones(N_TRAIN)
        eps[i] = 1 + h
        plus = self.retrained_objective(eps=eps)
        eps[i] = 1 - h
        return (plus - self.retrained_objective(eps=eps)) / (2 * h)

    def fd_x(self, i, u, h):
        x = self.x_train.astype(DTYPE)
        x[i] += h * u
        plus = self.retrained_objective(x=x)
        x[i] -= 2 * h * u
        return (plus - self.retrained_objective(x=x)) / (2 * h)


def _direction(x_i, seed):
    """Random unit direction on the sample's nonzero pixels (Adam is not smooth where a whole batch is 0)."""
    u = np.random.default_rng(seed).normal(size=x_i.shape) * (x_i != 0)
    return u / np.linalg.norm(u)


OPTIMIZERS = {
    "sgd": (optimizers.sgd(), 0.1, 1e-4),
    "momentum": (optimizers.momentum(0.9), 0.05, 1e-4),
    "adam": (optimizers.adam(), 0.01, 1e-5),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_matches_finite_differences_of_retraining(digits, name):
    """Two epochs: every sample is used twice, so this also checks the accumulation over steps."""
    optimizer, lr, h = OPTIMIZERS[name]
    problem = Problem(digits, optimizer=optimizer, lr=lr)
    result = problem.hypergradients()
    for i in (3, 57):
        u = _direction(problem.x_train[i], i)
        assert relative_errors(result.influence[i], problem.fd_eps(i, h)) < 1e-6
        assert relative_errors(np.sum(result.input_grad[0][i] * u), problem.fd_x(i, u, h)) < 1e-6


@pytest.mark.parametrize(
    "model,loss,objective",
    [
        (ModelSettings(hidden=(8,), dropout=0.25, batch_norm=True), "cross_entropy", "cross_entropy"),
        (ModelSettings(hidden=(8,)), "mse", "mse"),
        (ModelSettings(name="logistic"), "cross_entropy", "margin"),
    ],
    ids=["dropout+batchnorm", "mse", "margin"],
)
def test_models_losses_and_objectives_match_finite_differences(digits, model, loss, objective):
    problem = Problem(digits, model=model, optimizer=optimizers.momentum(0.9), lr=0.05, loss=loss, objective=objective)
    result = problem.hypergradients()
    for i in (3, 57):
        u = _direction(problem.x_train[i], i)
        assert relative_errors(result.influence[i], problem.fd_eps(i, 1e-4)) < 1e-6
        assert relative_errors(np.sum(result.input_grad[0][i] * u), problem.fd_x(i, u, 1e-4)) < 1e-6
    assert result.replay_error == 0.0  # the sweep recomputed exactly the recorded states


def _full_tape_reference(problem):
    """dE/d eps and dE/d x by one GradientTape over the whole unrolled run (eager, Python loop)."""
    r, s = problem.recipe, problem.schedule
    eps = tf.Variable(tf.ones(N_TRAIN, tf.float64))
    x = tf.Variable(tf.constant(problem.x_train, tf.float64))
    with tf.GradientTape() as tape:
        state = problem.initial
        for t in range(s.n_steps):
            ids = s.batch(t)
            state, _ = r.step(
                state,
                (tf.gather(x, ids),),
                tf.constant(problem.digits.y_train[ids]),
                tf.gather(eps, ids),
                tf.constant(s.lr[t]),
                tf.constant(t),
            )
        value = r.objective(state, as_inputs(problem.x_val, DTYPE), tf.constant(problem.digits.y_val))
    d_eps, d_x = tape.gradient(value, [eps, x])
    return float(value), tf.convert_to_tensor(d_eps).numpy(), tf.convert_to_tensor(d_x).numpy()


def test_checkpointed_sweep_equals_full_tape_for_every_k(digits):
    problem = Problem(digits, optimizer=optimizers.adam(), lr=0.01)
    value, d_eps, d_x = _full_tape_reference(problem)
    for every in (1, 3, 5, problem.schedule.n_steps):
        result = problem.hypergradients(every=every)
        assert result.objective == pytest.approx(value, rel=1e-14)
        np.testing.assert_allclose(result.influence, d_eps, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(result.input_grad[0], d_x, rtol=1e-9, atol=1e-15)


def test_sample_never_used_in_training_gets_exactly_zero(digits):
    base = make_schedule(N_TRAIN, 20, 2, shuffle=True, seed=0, lr=0.1)
    unused = 11
    step, sample_id, lr = base.to_rows()
    keep = sample_id != unused
    schedule = Schedule.from_rows(step[keep], sample_id[keep], lr[keep])
    result = Problem(digits, schedule=schedule).hypergradients()
    assert result.influence[unused] == 0.0
    assert not np.any(result.input_grad[0][unused])
    assert np.count_nonzero(result.influence) == N_TRAIN - 1


def test_truncated_sweep_differentiates_only_the_last_steps(digits):
    problem = Problem(digits, optimizer=optimizers.momentum(0.9), lr=0.05)
    stored, steps = {}, checkpoint_steps(problem.schedule.n_steps, 3)
    batches = make_batches(problem.x_train, digits.y_train, problem.schedule, DTYPE, problem.recipe.task)
    train(problem.recipe, problem.initial, batches, steps, stored.__setitem__)
    sweep = ReverseSweep(problem.recipe)
    validation = (as_inputs(problem.x_val, DTYPE), tf.constant(digits.y_val))
    full = sweep.run(stored, steps, batches, *validation)
    same = sweep.run(stored, steps, batches, *validation, horizon=problem.schedule.n_steps)
    np.testing.assert_array_equal(same.influence, full.influence)

    horizon = 4  # not a multiple of the checkpoint interval: the cut falls inside a segment
    cut = sweep.run(stored, steps, batches, *validation, horizon=horizon)
    last_steps = np.unique(
        np.concatenate(
            [problem.schedule.batch(t) for t in range(problem.schedule.n_steps - horizon, problem.schedule.n_steps)]
        )
    )
    unused = np.setdiff1d(np.arange(N_TRAIN), last_steps)
    assert np.all(cut.influence[unused] == 0) and np.all(cut.influence[last_steps] != 0)

    # horizon 1 by hand: one tape over the last step from the stored state before it
    t = problem.schedule.n_steps - 1
    state = problem.recipe.unflatten(problem.recipe.flatten(full_state_before(problem, stored, steps, batches, t)))
    ids = problem.schedule.batch(t)
    eps = tf.ones(len(ids), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(eps)
        after, _ = problem.recipe.step(
            state,
            (tf.constant(problem.x_train[ids]),),
            tf.constant(digits.y_train[ids]),
            eps,
            tf.constant(problem.schedule.lr[t]),
            tf.constant(t),
        )
        value = problem.recipe.objective(after, *validation)
    by_hand = tape.gradient(value, eps).numpy()
    one = sweep.run(stored, steps, batches, *validation, horizon=1)
    np.testing.assert_allclose(one.influence[ids], by_hand, rtol=1e-10)


def full_state_before(problem, stored, steps, batches, t):
    """The state after t steps, replayed from the last stored state at or before t."""
    start = max(s for s in steps if s <= t)
    state, _ = problem.recipe.run_steps(stored[start], batches, tf.constant(start), tf.constant(t))
    return state


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kept", [False, True], ids=["replay", "kept-states"])
def test_without_input_grad_the_influence_is_bit_identical(digits, dtype, kept):
    """influence.input_grad=false: x is never watched, no dE/dx accumulator exists, and the influence of the same
    trajectory is the same to the last bit (replayed or read from kept states, full run and truncated)."""
    problem = Problem(digits, optimizer=optimizers.adam(), lr=0.01)
    keras_model = build_model(ModelSettings(hidden=(8,)), digits.input_shapes, "classification", 10, dtype, seed=0)
    recipe = Recipe(keras_model, optimizers.adam(), problem.recipe.task)
    stored, segments = {}, {}
    steps = checkpoint_steps(problem.schedule.n_steps, 3)
    batches = make_batches(problem.x_train, digits.y_train, problem.schedule, dtype, recipe.task)
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__, on_segment=segments.__setitem__)
    every_state = (lambda start, stop: segments[start]) if kept else None
    sweep = ReverseSweep(recipe)
    validation = (as_inputs(problem.x_val, dtype), tf.constant(digits.y_val))
    for horizon in (None, 5):
        with_grads = sweep.run(stored, steps, batches, *validation, horizon=horizon, every_state=every_state)
        without = sweep.run(
            stored, steps, batches, *validation, horizon=horizon, every_state=every_state, input_grad=False
        )
        assert without.input_grad == () and len(with_grads.input_grad) == 1
        assert with_grads.input_grad[0].shape == problem.x_train.shape and np.any(with_grads.input_grad[0])
        np.testing.assert_array_equal(without.influence, with_grads.influence)
        assert without.objective == with_grads.objective and without.replay_error == with_grads.replay_error
        assert np.count_nonzero(without.influence) > 0


def test_without_input_grad_the_reverse_step_never_differentiates_into_x(digits):
    """The compiled reverse step without input_grad holds no gradient op whose result flows to x_B: its traced graph
    has fewer MatMul ops than the one with input_grad (the products that carry the adjoint back into the inputs)."""
    problem = Problem(digits)
    batches = make_batches(problem.x_train, digits.y_train, problem.schedule, DTYPE, problem.recipe.task)
    sweep, state = ReverseSweep(problem.recipe), problem.initial
    adjoint = problem.recipe.differentiable(state)
    t = tf.constant(0)

    def matmuls(input_grad):
        graph = sweep._reverse_step.get_concrete_function(state, adjoint, batches, t, input_grad).graph
        return sum(op.type in ("MatMul", "BatchMatMulV2") for op in graph.get_operations())

    with_grads, without = matmuls(True), matmuls(False)
    _, grad_eps, grad_x, _ = sweep._reverse_step(state, adjoint, batches, t, False)
    assert grad_x == () and grad_eps.shape == (len(problem.schedule.batch(0)),)
    assert without < with_grads, (without, with_grads)
