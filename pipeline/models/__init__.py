"""Keras model builders: logistic, mlp, cnn and custom (an import path `module:function`).

Every model takes inputs of `input_shape` (without the batch axis) and returns `num_classes` outputs,
logits unless `model.from_logits=false`. Imports Keras, so call it only inside workers.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from pipeline.config import ModelSettings
from pipeline.errors import ConfigError


def build_model(settings: ModelSettings, input_shape: tuple[int, ...], num_classes: int, dtype: str, seed: int) -> Any:
    """Build the configured model with weights initialised from `seed`, in floating dtype `dtype`."""
    import keras

    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(seed)
        if settings.name == "custom":
            model = _custom(settings, input_shape, num_classes)
        else:
            builders = {"logistic": _logistic, "mlp": _mlp, "cnn": _cnn}
            model = builders[settings.name](settings, input_shape, num_classes, seed)
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)
    # One call on a zero batch creates the variables of subclassed models and checks the output width.
    out_shape = tuple(model(np.zeros((2, *input_shape), dtype=dtype), training=False).shape)
    if out_shape[1:] != (num_classes,):
        raise ConfigError(f"model.builder={settings.builder}: model outputs shape {out_shape[1:]}, expected ({num_classes},)")
    return model


def _flat_input(keras: Any, input_shape: tuple[int, ...]) -> tuple[Any, Any]:
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    return inputs, x


def _logistic(s: ModelSettings, input_shape: tuple[int, ...], num_classes: int, seed: int) -> Any:
    import keras

    inputs, x = _flat_input(keras, input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="logistic")


def _mlp(s: ModelSettings, input_shape: tuple[int, ...], num_classes: int, seed: int) -> Any:
    import keras

    inputs, x = _flat_input(keras, input_shape)
    for i, width in enumerate(s.hidden):
        x = keras.layers.Dense(width, name=f"dense_{i}")(x)
        if s.batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        x = keras.layers.Activation(s.activation, name=f"act_{i}")(x)
        if s.dropout > 0:
            x = keras.layers.Dropout(s.dropout, seed=seed + i, name=f"dropout_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="mlp")


def _cnn(s: ModelSettings, input_shape: tuple[int, ...], num_classes: int, seed: int) -> Any:
    import keras

    if len(input_shape) != 3:
        raise ConfigError(f"model=cnn needs image data (height, width, channels); this data has input shape {input_shape}")
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i, n_filters in enumerate(s.filters):
        x = keras.layers.Conv2D(n_filters, s.kernel_size, padding="same", activation=s.activation, name=f"conv_{i}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool_{i}")(x)
    x = keras.layers.Flatten()(x)
    if s.dropout > 0:
        x = keras.layers.Dropout(s.dropout, seed=seed, name="dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="cnn")


def _custom(s: ModelSettings, input_shape: tuple[int, ...], num_classes: int) -> Any:
    import keras

    module_name, _, attr = str(s.builder).partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model.builder={s.builder}: cannot import ({exc})") from None
    model = builder(input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.builder={s.builder}: returned {type(model).__name__}, expected a keras.Model")
    return model
