"""Every model builder: shapes, dtype, determinism, and a training step through the functional recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.errors import ConfigError
from pipeline.kernels import optimizers
from pipeline.kernels.training import Recipe
from pipeline.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/custom_models.py

SETTINGS = {
    "logistic": ModelSettings(name="logistic"),
    "mlp": ModelSettings(name="mlp", hidden=(16, 8), activation="relu", dropout=0.2, batch_norm=True),
    "cnn": ModelSettings(name="cnn", filters=(4, 8), kernel_size=3, activation="relu", dropout=0.5),
    "custom": ModelSettings(name="custom", builder="custom_models:build"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("input_shape", [(8, 8, 1), (28, 28, 1)])
def test_builds_trains_and_differentiates(name, input_shape):
    model = build_model(SETTINGS[name], input_shape, 10, "float64", seed=0)
    assert all(v.dtype == "float64" for v in model.trainable_variables)
    recipe = Recipe(model, optimizers.sgd(), "cross_entropy", True, input_shape)
    d = int(np.prod(input_shape))
    x = tf.constant(np.random.default_rng(0).uniform(size=(6, d)))
    y = tf.constant([0, 1, 2, 3, 4, 5], tf.int64)
    state = recipe.initial_state()
    outputs, _ = recipe.forward(state.trainable, state.non_trainable, x, training=False)
    assert outputs.shape == (6, 10)
    with tf.GradientTape() as tape:
        tape.watch(x)
        new_state, loss = recipe.step(state, x, y, tf.ones(6, tf.float64), tf.constant(0.1, tf.float64), tf.constant(0))
        moved = tf.add_n([tf.reduce_sum(w) for w in new_state.trainable])
    assert np.isfinite(loss.numpy())
    assert np.any(tape.gradient(moved, x).numpy() != 0)  # the update depends on the inputs


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (build_model(SETTINGS["mlp"], (8, 8, 1), 10, "float32", seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.trainable_variables, b.trainable_variables))
    assert not np.array_equal(a.trainable_variables[0].numpy(), c.trainable_variables[0].numpy())


def test_cnn_is_conv_pool_conv_pool_dropout_dense():
    model = build_model(SETTINGS["cnn"], (28, 28, 1), 10, "float32", seed=0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dropout", "Dense"]


def test_cnn_refuses_flat_data():
    with pytest.raises(ConfigError, match="model=cnn needs image data"):
        build_model(SETTINGS["cnn"], (20,), 3, "float32", seed=0)


@pytest.mark.parametrize(
    "builder,message",
    [
        ("no_such_module_xyz:build", r"model.builder=no_such_module_xyz:build: cannot import"),
        ("custom_models:missing", r"model.builder=custom_models:missing: cannot import"),
        ("custom_models:not_a_model", r"returned str, expected a keras.Model"),
        ("custom_models:wrong_width", r"outputs shape \(11,\), expected \(10,\)"),
    ],
)
def test_custom_builder_errors_name_the_setting(builder, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelSettings(name="custom", builder=builder), (8, 8, 1), 10, "float32", seed=0)
