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
from pipeline.kernels.task import make_task
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
    model = build_model(SETTINGS[name], {"x": input_shape}, "classification", 10, "float64", seed=0)
    assert all(v.dtype == "float64" for v in model.trainable_variables)
    recipe = Recipe(model, optimizers.sgd(), make_task("classification", "cross_entropy", "cross_entropy"))
    x = (tf.constant(np.random.default_rng(0).uniform(size=(6, *input_shape))),)
    y = tf.constant([0, 1, 2, 3, 4, 5], tf.int64)
    state = recipe.initial_state()
    outputs, _ = recipe.forward(state.trainable, state.non_trainable, x, training=False)
    assert outputs.shape == (6, 10)
    with tf.GradientTape() as tape:
        tape.watch(x)
        new_state, loss = recipe.step(state, x, y, tf.ones(6, tf.float64), tf.constant(0.1, tf.float64), tf.constant(0))
        moved = tf.add_n([tf.reduce_sum(w) for w in new_state.trainable])
    assert np.isfinite(loss.numpy())
    assert np.any(tape.gradient(moved, x)[0].numpy() != 0)  # the update depends on the inputs


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (
        build_model(SETTINGS["mlp"], {"x": (8, 8, 1)}, "classification", 10, "float32", seed=s) for s in (1, 1, 2)
    )
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.trainable_variables, b.trainable_variables))
    assert not np.array_equal(a.trainable_variables[0].numpy(), c.trainable_variables[0].numpy())


def test_cnn_is_conv_pool_conv_pool_dropout_dense():
    model = build_model(SETTINGS["cnn"], {"x": (28, 28, 1)}, "classification", 10, "float32", seed=0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dropout", "Dense"]


def test_cnn_refuses_flat_data():
    with pytest.raises(ConfigError, match="model=cnn needs image data"):
        build_model(SETTINGS["cnn"], {"x": (20,)}, "classification", 3, "float32", seed=0)


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
        build_model(
            ModelSettings(name="custom", builder=builder), {"x": (8, 8, 1)}, "classification", 10, "float32", seed=0
        )


def test_builder_gets_the_arguments_it_declares():
    """Old builders take (input_shape, num_classes); regression builders output_dim; multi-input input_shapes."""
    keyword_only = build_model(
        ModelSettings(name="custom", builder="custom_models:regression_head"),
        {"x": (3,)},
        "regression",
        2,
        "float64",
        seed=0,
    )
    assert keyword_only(np.zeros((4, 3))).shape == (4, 2)
    with pytest.raises(
        ConfigError,
        match=(
            r"model.builder=custom_models:build: asks for 'num_classes'; a builder can take input_shape, "
            r"input_shapes, output_dim"
        ),
    ):
        build_model(
            ModelSettings(name="custom", builder="custom_models:build"), {"x": (3,)}, "regression", 1, "float64", seed=0
        )


def test_builtin_models_refuse_several_inputs():
    with pytest.raises(ConfigError, match=r"model=mlp: takes one input, the data has 2 \(a, b\); use model=custom"):
        build_model(SETTINGS["mlp"], {"a": (2,), "b": (3,)}, "classification", 3, "float32", seed=0)


def test_unnamed_sequential_built_repeatedly_keeps_its_state_layout(tmp_path):
    """Stored states are keyed by position and shape: the same unnamed Sequential built again (new
    auto-generated variable names) reads the states the first one wrote."""
    from pipeline.io.checkpoints import load_state, save_state

    settings = ModelSettings(name="custom", builder="pipeline.examples.seed_models:mnist_mlp", from_logits=False)
    recipes = [
        Recipe(
            build_model(settings, {"x": (784,)}, "classification", 10, "float32", seed=0),
            optimizers.adam(),
            make_task("classification", "cross_entropy", "mse", False),
        )
        for _ in range(2)
    ]
    assert [v.path for v in recipes[0].model.trainable_variables] != [
        v.path for v in recipes[1].model.trainable_variables
    ]
    first = recipes[0].initial_state()
    save_state(tmp_path / "s.npz", recipes[0].state_layout(), [t.numpy() for t in recipes[0].flatten(first)])
    back = recipes[1].unflatten(load_state(tmp_path / "s.npz", recipes[1].state_layout(), "retrain"))
    for a, b in zip(recipes[0].flatten(first), recipes[1].flatten(back)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_saved_model_loads_with_its_weights(tmp_path):
    original = build_model(SETTINGS["mlp"], {"x": (8, 8, 1)}, "classification", 10, "float32", seed=3)
    path = tmp_path / "model.keras"
    original.save(path)
    loaded = build_model(
        ModelSettings(name="saved", path=str(path)), {"x": (8, 8, 1)}, "classification", 10, "float32", seed=0
    )
    for a, b in zip(original.trainable_variables, loaded.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ConfigError, match=r"model.path=.*nope.keras: file not found"):
        build_model(
            ModelSettings(name="saved", path=str(tmp_path / "nope.keras")),
            {"x": (8, 8, 1)},
            "classification",
            10,
            "float32",
            seed=0,
        )
    (tmp_path / "bad.keras").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"model.path=.*bad.keras: not a loadable Keras model"):
        build_model(
            ModelSettings(name="saved", path=str(tmp_path / "bad.keras")),
            {"x": (8, 8, 1)},
            "classification",
            10,
            "float32",
            seed=0,
        )
    with pytest.raises(
        ConfigError, match=r"model.path=.*model.keras: the model's variables are float32, train.dtype is float64"
    ):
        build_model(
            ModelSettings(name="saved", path=str(path)), {"x": (8, 8, 1)}, "classification", 10, "float64", seed=0
        )
