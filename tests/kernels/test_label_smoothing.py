"""Label smoothing: the training loss equals Keras' CategoricalCrossentropy(label_smoothing) on one-hot labels, training
equals `model.fit` with it, and the reverse sweep through the smoothed loss matches finite differences (float64)."""

from __future__ import annotations

import keras
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
from pipeline.models import build_model

N, N_VAL, FEATURES, CLASSES, BATCH, EPOCHS, LR = 22, 12, 6, 3, 8, 2, 0.05
MODEL = ModelSettings(hidden=(5,))
SMOOTHING = 0.1


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N + N_VAL, FEATURES))
    y = rng.integers(0, CLASSES, size=N + N_VAL)
    return x[:N], y[:N], x[N:], y[N:]


@pytest.mark.parametrize("from_logits", [True, False])
def test_smoothed_loss_is_keras_categorical_crossentropy(from_logits):
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(7, 4)) * 3)
    labels = tf.constant(rng.integers(0, 4, size=7))
    outputs = logits if from_logits else keras.activations.softmax(logits)
    mine = make_task("classification", "cross_entropy", "cross_entropy", from_logits, SMOOTHING).loss(outputs, labels)
    keras_loss = keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=SMOOTHING, reduction=None, dtype="float64"
    )
    theirs = keras_loss(tf.one_hot(labels, 4, dtype=tf.float64), outputs)
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-12 if from_logits else 1e-6)


def test_only_the_training_loss_is_smoothed():
    task = make_task("classification", "cross_entropy", "cross_entropy", True, SMOOTHING)
    outputs, labels = tf.constant([[2.0, 0.0, -1.0]], tf.float64), tf.constant([0])
    assert float(task.loss(outputs, labels)[0]) > float(task.objective(outputs, labels)[0])
    with pytest.raises(ValueError, match="cross_entropy"):
        make_task("classification", "mse", "cross_entropy", True, SMOOTHING)


def _recipe(seed: int) -> Recipe:
    model = build_model(MODEL, {"x": (FEATURES,)}, "classification", CLASSES, "float64", seed=seed)
    return Recipe(
        model, optimizers.build("adam"), make_task("classification", "cross_entropy", "cross_entropy", True, SMOOTHING)
    )


def test_training_with_label_smoothing_matches_model_fit(data, float64_keras):
    x, y, _, _ = data
    recipe = _recipe(seed=1)
    schedule = make_schedule(N, BATCH, EPOCHS, shuffle=False, seed=0, lr=LR)
    final = {}
    train(
        recipe,
        recipe.initial_state(),
        make_batches(x, y, schedule, "float64", recipe.task),
        [0, schedule.n_steps],
        final.__setitem__,
    )
    model = build_model(MODEL, {"x": (FEATURES,)}, "classification", CLASSES, "float64", seed=1)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=SMOOTHING, dtype="float64")
    model.compile(optimizer=optimizers.OPTIMIZERS["adam"].keras(LR), loss=loss, jit_compile=False)
    model.fit(x, keras.utils.to_categorical(y, CLASSES), batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    for mine, theirs in zip(final[schedule.n_steps].trainable, model.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-12)


def test_sweep_through_the_smoothed_loss_matches_finite_differences(data):
    x, y, x_val, y_val = data
    recipe = _recipe(seed=0)
    schedule = make_schedule(N, BATCH, EPOCHS, shuffle=True, seed=0, lr=LR)
    validation = (as_inputs(x_val, "float64"), tf.constant(y_val))
    steps = checkpoint_steps(schedule.n_steps, None)
    batches = make_batches(x, y, schedule, "float64", recipe.task)
    stored = {}
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__)
    result = ReverseSweep(recipe).run(stored, steps, batches, *validation)

    def retrained(eps: np.ndarray) -> float:
        final = {}
        train(
            recipe,
            recipe.initial_state(),
            make_batches(x, y, schedule, "float64", recipe.task, eps),
            [0, schedule.n_steps],
            final.__setitem__,
        )
        return float(recipe.objective(final[schedule.n_steps], *validation))

    h = 1e-5
    for i in (3, 17):
        eps = np.ones(N)
        eps[i] = 1 + h
        plus = retrained(eps)
        eps[i] = 1 - h
        assert relative_errors(result.influence[i], (plus - retrained(eps)) / (2 * h)) < 1e-6
