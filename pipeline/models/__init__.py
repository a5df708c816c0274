"""Keras model builders: logistic, mlp, cnn, custom (an import path `module:function`) and saved (a .keras file).

Every model takes the dataset's inputs (one, or several passed as a list in input order) and returns
`output_width` outputs: class scores (logits unless `model.from_logits=false`) or regression outputs.
Imports Keras, so call it only inside workers.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ModelSettings
from pipeline.errors import ConfigError


def build_model(
    settings: ModelSettings, input_shapes: dict[str, tuple[int, ...]], task: str, output_width: int, dtype: str, seed: int
) -> Any:
    """Build the configured model with weights initialised from `seed`, in floating dtype `dtype`.

    input_shapes: name -> sample shape, in input order; output_width: num_classes or output_dim.
    """
    import keras

    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(seed)
        if settings.name == "custom":
            model = _custom(settings, input_shapes, task, output_width)
        elif settings.name == "saved":
            model = _saved(settings)
        else:
            if len(input_shapes) != 1:
                raise ConfigError(f"model={settings.name}: takes one input, the data has {len(input_shapes)} ({', '.join(input_shapes)}); use model=custom")
            builders = {"logistic": _logistic, "mlp": _mlp, "cnn": _cnn}
            model = builders[settings.name](settings, next(iter(input_shapes.values())), output_width, seed)
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)
    _check_model(model, settings, input_shapes, output_width, dtype)
    return model


def _check_model(model: Any, settings: ModelSettings, input_shapes: dict[str, tuple[int, ...]], output_width: int, dtype: str) -> None:
    """One call on a zero batch creates the variables of subclassed models and checks the output width and dtype."""
    zeros = [np.zeros((2, *shape), dtype=dtype) for shape in input_shapes.values()]
    source = settings.builder if settings.name == "custom" else settings.path if settings.name == "saved" else settings.name
    setting = {"custom": "model.builder", "saved": "model.path"}.get(settings.name, "model")
    try:
        outputs = model(zeros[0] if len(zeros) == 1 else zeros, training=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{setting}={source}: the model cannot be called on inputs {dict(input_shapes)} ({first})") from None
    out_shape = tuple(outputs.shape)
    if out_shape[1:] != (output_width,):
        raise ConfigError(f"{setting}={source}: model outputs shape {out_shape[1:]}, expected ({output_width},)")
    if not model.trainable_variables:
        raise ConfigError(f"{setting}={source}: the model has no trainable variables")
    if model.trainable_variables[0].dtype != dtype:
        raise ConfigError(f"{setting}={source}: the model's variables are {model.trainable_variables[0].dtype}, train.dtype is {dtype}")


def _flat_input(keras: Any, input_shape: tuple[int, ...]) -> tuple[Any, Any]:
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    return inputs, x


def _logistic(s: ModelSettings, input_shape: tuple[int, ...], n_outputs: int, seed: int) -> Any:
    import keras

    inputs, x = _flat_input(keras, input_shape)
    return keras.Model(inputs, keras.layers.Dense(n_outputs, name="logits")(x), name="logistic")


def _mlp(s: ModelSettings, input_shape: tuple[int, ...], n_outputs: int, seed: int) -> Any:
    import keras

    inputs, x = _flat_input(keras, input_shape)
    for i, width in enumerate(s.hidden):
        x = keras.layers.Dense(width, name=f"dense_{i}")(x)
        if s.batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        x = keras.layers.Activation(s.activation, name=f"act_{i}")(x)
        if s.dropout > 0:
            x = keras.layers.Dropout(s.dropout, seed=seed + i, name=f"dropout_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(n_outputs, name="logits")(x), name="mlp")


def _cnn(s: ModelSettings, input_shape: tuple[int, ...], n_outputs: int, seed: int) -> Any:
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
    return keras.Model(inputs, keras.layers.Dense(n_outputs, name="logits")(x), name="cnn")


def _custom(s: ModelSettings, input_shapes: dict[str, tuple[int, ...]], task: str, output_width: int) -> Any:
    """Call the user's builder with the keyword arguments it declares, out of input_shape (one input) or
    input_shapes (name -> shape), and num_classes (classification) or output_dim (regression)."""
    import keras

    module_name, _, attr = str(s.builder).partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model.builder={s.builder}: cannot import ({exc})") from None
    offered: dict[str, Any] = {"input_shapes": dict(input_shapes)}
    if len(input_shapes) == 1:
        offered["input_shape"] = next(iter(input_shapes.values()))
    offered["num_classes" if task == "classification" else "output_dim"] = output_width
    parameters = inspect.signature(builder).parameters
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    required = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [n for n in required if n not in offered]
    if missing:
        raise ConfigError(f"model.builder={s.builder}: asks for {missing[0]!r}; a builder can take {', '.join(sorted(offered))}")
    model = builder(**(offered if takes_any else {k: v for k, v in offered.items() if k in parameters}))
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.builder={s.builder}: returned {type(model).__name__}, expected a keras.Model")
    return model


def _saved(s: ModelSettings) -> Any:
    """A user's saved model (.keras): its architecture, and its weights as the initial state."""
    import keras

    path = Path(str(s.path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.path={s.path}: file not found")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.path={s.path}: not a loadable Keras model ({first})") from None
