"""The functional training loop reproduces `model.fit` on the same batches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.errors import DivergenceError
from pipeline.kernels import optimizers
from pipeline.kernels.schedule import checkpoint_steps, make_schedule
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Recipe, as_inputs, make_batches, per_sample_losses, train
from pipeline.models import build_model

N_TRAIN, BATCH, EPOCHS = 300, 32, 2  # 300 % 32 != 0: every epoch ends with a smaller batch

OPTIMIZERS = {
    "sgd": (optimizers.sgd, lambda: keras.optimizers.SGD(0.1), 0.1),
    "momentum": (lambda: optimizers.momentum(0.9), lambda: keras.optimizers.SGD(0.05, momentum=0.9), 0.05),
    "adam": (optimizers.adam, lambda: keras.optimizers.Adam(0.01), 0.01),
}


@pytest.fixture(scope="module")
def digits(digits_subset):
    return digits_subset(N_TRAIN)


def _recipe(model_settings, optimizer, dtype, seed, input_shapes=None, loss="cross_entropy"):
    model = build_model(model_settings, input_shapes or {"x": (8, 8, 1)}, "classification", 10, dtype, seed=seed)
    return Recipe(model, optimizer, make_task("classification", loss, loss))


def _functional_run(digits, model_settings, opt_name, dtype):
    functional, _, lr = OPTIMIZERS[opt_name]
    schedule = make_schedule(N_TRAIN, BATCH, EPOCHS, shuffle=True, seed=3, lr=lr)
    recipe = _recipe(model_settings, functional(), dtype, seed=1)
    batches = make_batches(digits.x_train["x"], digits.y_train, schedule, dtype, recipe.task)
    stored = {}
    final = train(recipe, recipe.initial_state(), batches, checkpoint_steps(schedule.n_steps, 5), stored.__setitem__)
    return schedule, recipe, final, stored


def _keras_fit(digits, model_settings, opt_name, dtype, schedule):
    _, reference, _ = OPTIMIZERS[opt_name]
    model = build_model(model_settings, digits.input_shapes, "classification", 10, dtype, seed=1)
    model.compile(
        optimizer=reference(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype),
        jit_compile=False,
    )
    steps_per_epoch = schedule.n_steps // EPOCHS
    for epoch in range(EPOCHS):
        order = np.concatenate(
            [schedule.batch(t) for t in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)]
        )
        x = digits.x_train["x"][order].astype(dtype)
        model.fit(x, digits.y_train[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_train_matches_model_fit(digits, opt_name, dtype, tolerance):
    settings = ModelSettings(hidden=(16,))
    schedule, recipe, final, _ = _functional_run(digits, settings, opt_name, dtype)
    fitted = _keras_fit(digits, settings, opt_name, dtype, schedule)
    for mine, theirs in zip(final.trainable, fitted.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=tolerance)


def test_dropout_and_batch_norm_state_is_threaded_like_fit(digits):
    """Dropout masks (seed state) and BatchNorm moving statistics evolve exactly as in model.fit."""
    settings = ModelSettings(hidden=(16,), dropout=0.3, batch_norm=True)
    schedule, recipe, final, _ = _functional_run(digits, settings, "momentum", "float64")
    fitted = _keras_fit(digits, settings, "momentum", "float64", schedule)
    for mine, theirs in zip(
        final.trainable + final.non_trainable, fitted.trainable_variables + fitted.non_trainable_variables
    ):
        np.testing.assert_allclose(
            np.asarray(mine, dtype=np.float64), np.asarray(theirs.numpy(), dtype=np.float64), rtol=0, atol=1e-12
        )


def test_stored_states_are_the_states_after_t_steps(digits):
    schedule, recipe, final, stored = _functional_run(digits, ModelSettings(hidden=(8,)), "adam", "float64")
    assert sorted(stored) == checkpoint_steps(schedule.n_steps, 5)
    assert sorted(stored)[0] == 0 and sorted(stored)[-1] == schedule.n_steps
    # Restarting from a middle checkpoint reproduces the end state bit for bit.
    middle = sorted(stored)[2]
    batches = make_batches(digits.x_train["x"], digits.y_train, schedule, "float64", recipe.task)
    resumed, _ = recipe.run_steps(stored[middle], batches, tf.constant(middle), tf.constant(schedule.n_steps))
    for a, b in zip(recipe.flatten(resumed), recipe.flatten(final)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_per_sample_loss_is_cross_entropy_by_hand(digits):
    _, recipe, final, _ = _functional_run(digits, ModelSettings(hidden=(8,)), "sgd", "float64")
    losses = per_sample_losses(recipe, final, [digits.x_train["x"][:20]], digits.y_train[:20], chunk=7)
    logits, _ = recipe.forward(
        final.trainable, final.non_trainable, as_inputs(digits.x_train["x"][:20], "float64"), training=False
    )
    logits = logits.numpy()
    by_hand = np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(20), digits.y_train[:20]]
    np.testing.assert_allclose(losses, by_hand, rtol=1e-12)


def test_divergence_names_the_step(digits):
    schedule = make_schedule(N_TRAIN, BATCH, 3, shuffle=False, seed=0, lr=1e30)
    recipe = _recipe(ModelSettings(hidden=(8,), activation="relu"), optimizers.sgd(), "float32", 0)
    batches = make_batches(digits.x_train["x"], digits.y_train, schedule, "float32", recipe.task)
    with pytest.raises(DivergenceError, match=r"training diverged: NaN/inf at step \d+"):
        train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], lambda t, s: None)


def test_finite_blow_up_is_divergence(digits):
    """A large but finite learning rate: the loss explodes without NaN, and training stops naming the step."""
    schedule = make_schedule(N_TRAIN, BATCH, 3, shuffle=False, seed=0, lr=50.0)
    recipe = _recipe(ModelSettings(hidden=(8,), activation="relu"), optimizers.sgd(), "float64", 0, loss="mse")
    batches = make_batches(digits.x_train["x"], digits.y_train, schedule, "float64", recipe.task)
    with pytest.raises(DivergenceError, match=r"training loss diverged: .* at step \d+, over 100x its early value"):
        train(recipe, recipe.initial_state(), batches, checkpoint_steps(schedule.n_steps, 4), lambda t, s: None)


def _seed000_run(x, y, schedule):
    """Seed 000's model (unnamed Sequential ending in softmax) trained functionally with Adam and cross-entropy."""
    settings = ModelSettings(name="custom", builder="pipeline.examples.seed_models:mnist_mlp", from_logits=False)
    model = build_model(settings, {"x": (784,)}, "classification", 10, "float64", seed=5)
    recipe = Recipe(model, optimizers.adam(), make_task("classification", "cross_entropy", "mse", from_logits=False))
    batches = make_batches(x, y, schedule, "float64", recipe.task)
    return train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], lambda t, s: None), settings


def test_softmax_model_trains_like_fit(monkeypatch):
    """Keras 3 scores a softmax output from the logits that produced it. With inputs large enough that
    some outputs are confident (clipping at 1e-7 would change their gradients), the functional run of
    seed 000's model equals model.fit on the same batches within float64 rounding, for a model built
    twice in one process (its auto-generated variable names differ each time)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 20, size=(96, 784))
    y = rng.integers(0, 10, size=96)
    schedule = make_schedule(96, 32, 3, shuffle=True, seed=0, lr=1e-3)
    first, settings = _seed000_run(x, y, schedule)
    second, _ = _seed000_run(x, y, schedule)
    for a, b in zip(first.trainable, second.trainable):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    fitted = build_model(settings, {"x": (784,)}, "classification", 10, "float64", seed=5)
    fitted.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(dtype="float64"),
        jit_compile=False,
    )
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")  # fit casts float64 arrays to floatx: keep them float64
    try:
        for epoch in range(3):
            order = np.concatenate([schedule.batch(t) for t in range(epoch * 3, epoch * 3 + 3)])
            fitted.fit(x[order], y[order], batch_size=32, epochs=1, shuffle=False, verbose=0)
    finally:
        keras.config.set_floatx(previous)
    for mine, theirs in zip(first.trainable, fitted.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-12)

    # The check has teeth: cross-entropy from clipped probabilities trains measurably differently here.
    import pipeline.kernels.task as task_module

    monkeypatch.setattr(task_module, "keras_logits", lambda outputs: None)
    clipped, _ = _seed000_run(x, y, schedule)
    assert (
        max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(clipped.trainable, fitted.trainable_variables))
        > 1e-6
    )
