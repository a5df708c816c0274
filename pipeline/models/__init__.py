"""The model registry: every `model.name` with its builder and the model.* settings it reads. Built in: logistic,
mlp, cnn; the user's own: custom (an import path `module:function`) and saved (a .keras file).

Every model takes the dataset's inputs (one, or several passed as a list in input order) and returns
`output_width` outputs: class scores (logits unless `model.from_logits=false`) or regression outputs.
Keras is imported inside the builders, so the registry is read by config validation on the driver and the
models are built only inside workers. The builders take the model section of the settings (config.ModelSettings);
this module does not import config, which validates against it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError

# (model settings, input name -> sample shape, task, output width, seed) -> keras.Model; imports Keras itself
Builder = Callable[[Any, dict[str, tuple[int, ...]], str, int, int], Any]


@dataclass(frozen=True)
class Model:
    name: str
    build: Builder
    settings: tuple[str, ...]  # the model.* settings it reads: the keys `model=<name>` composes (config.register)
    description: str
    source: str | None = (
        None  # the model.* setting that names the user's model (required; errors name it); None: built in
    )
    summary: tuple[str, ...] = ()  # settings a one-line summary shows after the name (evaluation.markdown)

    def setting(self, settings: Any) -> tuple[str, Any]:
        """(setting, value) that errors about this model name: model.builder=..., model.path=... or model=<name>."""
        return (f"model.{self.source}", getattr(settings, self.source)) if self.source else ("model", self.name)

    def describe(self, settings: Any) -> str:
        """One line: the user's builder or file, or the name and the summary settings (`mlp [64, 64] relu`)."""
        if self.source:
            return str(getattr(settings, self.source))
        shown = [str(list(v)) if isinstance(v, tuple) else str(v) for v in (getattr(settings, k) for k in self.summary)]
        return " ".join([self.name, *shown])


def build_model(
    settings: Any, input_shapes: dict[str, tuple[int, ...]], task: str, output_width: int, dtype: str, seed: int
) -> Any:
    """Build the configured model (settings: config.ModelSettings) with weights initialised from `seed`, in floating
    dtype `dtype`. input_shapes: name -> sample shape, in input order; output_width: num_classes or output_dim."""
    import keras

    model = MODELS[settings.name]
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(seed)
        built = model.build(settings, input_shapes, task, output_width, seed)
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)
    _freeze(built, tuple(settings.freeze))
    _check_model(built, model.setting(settings), input_shapes, output_width, dtype)
    return built


def _freeze(model: Any, names: tuple[str, ...]) -> None:
    """model.freeze: set trainable=False on every layer whose name is an entry or starts with one (Keras then keeps
    its weights, BatchNorm statistics included, at their initial values); an entry that matches no layer, or a
    freeze that leaves nothing to train, is a ConfigError."""
    if not names:
        return
    layers = [layer for layer in model._flatten_layers(include_self=False) if layer.weights]
    for name in names:
        matched = [layer for layer in layers if layer.name.startswith(name)]
        if not matched:
            known = ", ".join(layer.name for layer in layers)
            raise ConfigError(f"model.freeze: no layer with weights is named {name!r} or starts with it ({known})")
        for layer in matched:
            layer.trainable = False
    if not model.trainable_variables:
        raise ConfigError(f"model.freeze={list(names)}: freezes every layer; nothing would be trained")


def _check_model(
    model: Any, named: tuple[str, Any], input_shapes: dict[str, tuple[int, ...]], output_width: int, dtype: str
) -> None:
    """One call on a zero batch creates the variables of subclassed models and checks the output width and dtype;
    errors name the setting that chose the model (`named`: model=mlp, model.builder=..., model.path=...)."""
    setting, source = named
    zeros = [np.zeros((2, *shape), dtype=dtype) for shape in input_shapes.values()]
    try:
        outputs = model(zeros[0] if len(zeros) == 1 else zeros, training=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{setting}={source}: the model cannot be called on inputs {dict(input_shapes)} ({first})"
        ) from None
    out_shape = tuple(outputs.shape)
    if out_shape[1:] != (output_width,):
        raise ConfigError(f"{setting}={source}: model outputs shape {out_shape[1:]}, expected ({output_width},)")
    if not model.trainable_variables:
        raise ConfigError(f"{setting}={source}: the model has no trainable variables")
    if model.trainable_variables[0].dtype != dtype:
        raise ConfigError(
            f"{setting}={source}: the model's variables are {model.trainable_variables[0].dtype}, train.dtype is "
            f"{dtype}"
        )


def _one_input(s: Any, input_shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The sample shape of the only input; a built-in model takes one."""
    if len(input_shapes) != 1:
        raise ConfigError(
            f"model={s.name}: takes one input, the data has {len(input_shapes)} ({', '.join(input_shapes)}); use "
            "model=custom"
        )
    return next(iter(input_shapes.values()))


def _flat_input(keras: Any, input_shape: tuple[int, ...]) -> tuple[Any, Any]:
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    return inputs, x


def _logistic(s: Any, input_shapes: dict[str, tuple[int, ...]], task: str, n_outputs: int, seed: int) -> Any:
    import keras

    inputs, x = _flat_input(keras, _one_input(s, input_shapes))
    return keras.Model(inputs, keras.layers.Dense(n_outputs, name="logits")(x), name="logistic")


# model.augment: name -> the Keras layer it adds (factor arguments as Keras takes them; rotate: fraction of 2 pi)
AUGMENTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "flip": ("RandomFlip", {"mode": "horizontal"}),
    "translate": ("RandomTranslation", {"height_factor": 0.1, "width_factor": 0.1, "fill_mode": "constant"}),
    "rotate": ("RandomRotation", {"factor": 0.05, "fill_mode": "constant"}),
    "zoom": ("RandomZoom", {"height_factor": 0.1, "fill_mode": "constant"}),
    "contrast": ("RandomContrast", {"factor": 0.2}),
}


# augmentations that warp the image (ImageProjectiveTransformV3): TensorFlow's gradient for it is the inverse warp,
# not the exact adjoint of bilinear sampling, so dE/d x_i through them is approximate (dE/d eps_i stays exact)
WARPS = ("translate", "rotate", "zoom")


def _augmented(keras: Any, s: Any, inputs: Any, input_shape: tuple[int, ...], seed: int) -> Any:
    """inputs through model.augment's random layers (identity at inference; their seed state is part of the
    recorded training state, as dropout's is), each seeded from the run's seed."""
    if s.augment and len(input_shape) != 3:
        raise ConfigError(
            f"model.augment={list(s.augment)}: needs image inputs (height, width, channels); the input shape is "
            f"{input_shape}"
        )
    if "rotate" in s.augment and keras.config.floatx() == "float64":
        raise ConfigError(
            "model.augment=rotate: Keras' RandomRotation fails in float64 (it mixes in a float32 constant); use "
            "train.dtype=float32 or leave rotate out"
        )
    x = inputs
    for i, name in enumerate(s.augment):
        layer, arguments = AUGMENTATIONS[name]
        x = getattr(keras.layers, layer)(**arguments, seed=seed * 100 + i, name=f"augment_{name}")(x)
    return x


def _mlp(s: Any, input_shapes: dict[str, tuple[int, ...]], task: str, n_outputs: int, seed: int) -> Any:
    import keras

    input_shape = _one_input(s, input_shapes)
    inputs = keras.Input(shape=input_shape)
    x = _augmented(keras, s, inputs, input_shape, seed)
    x = keras.layers.Flatten()(x) if len(input_shape) > 1 else x
    for i, width in enumerate(s.hidden):
        x = keras.layers.Dense(width, name=f"dense_{i}")(x)
        if s.batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        x = keras.layers.Activation(s.activation, name=f"act_{i}")(x)
        if s.dropout > 0:
            x = keras.layers.Dropout(s.dropout, seed=seed + i, name=f"dropout_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(n_outputs, name="logits")(x), name="mlp")


def _cnn(s: Any, input_shapes: dict[str, tuple[int, ...]], task: str, n_outputs: int, seed: int) -> Any:
    import keras

    input_shape = _one_input(s, input_shapes)
    if len(input_shape) != 3:
        raise ConfigError(
            f"model=cnn needs image data (height, width, channels); this data has input shape {input_shape}"
        )
    inputs = keras.Input(shape=input_shape)
    x = _augmented(keras, s, inputs, input_shape, seed)
    for i, n_filters in enumerate(s.filters):
        if s.batch_norm:
            x = keras.layers.Conv2D(n_filters, s.kernel_size, padding="same", name=f"conv_{i}")(x)
            x = keras.layers.BatchNormalization(name=f"conv_batch_norm_{i}")(x)
            x = keras.layers.Activation(s.activation, name=f"conv_act_{i}")(x)
        else:  # one layer, as before batch_norm existed (recorded runs keep their layer names)
            x = keras.layers.Conv2D(
                n_filters, s.kernel_size, padding="same", activation=s.activation, name=f"conv_{i}"
            )(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool_{i}")(x)
    x = keras.layers.Flatten()(x)
    if s.dropout > 0:
        x = keras.layers.Dropout(s.dropout, seed=seed, name="dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(n_outputs, name="logits")(x), name="cnn")


def _custom(s: Any, input_shapes: dict[str, tuple[int, ...]], task: str, output_width: int, seed: int) -> Any:
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
    required = [
        n
        for n, p in parameters.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    missing = [n for n in required if n not in offered]
    if missing:
        raise ConfigError(
            f"model.builder={s.builder}: asks for {missing[0]!r}; a builder can take {', '.join(sorted(offered))}"
        )
    model = builder(**(offered if takes_any else {k: v for k, v in offered.items() if k in parameters}))
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.builder={s.builder}: returned {type(model).__name__}, expected a keras.Model")
    return model


def _saved(s: Any, input_shapes: dict[str, tuple[int, ...]], task: str, output_width: int, seed: int) -> Any:
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


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("logistic", _logistic, ("freeze",), "multinomial logistic regression: one Dense layer producing logits"),
        Model(
            "mlp",
            _mlp,
            ("hidden", "activation", "dropout", "batch_norm", "augment", "freeze"),
            "Dense layers of model.hidden units, then logits",
            summary=("hidden", "activation"),
        ),
        Model(
            "cnn",
            _cnn,
            ("filters", "kernel_size", "activation", "dropout", "batch_norm", "augment", "freeze"),
            "Conv-Pool per model.filters, Dropout, Dense logits",
            summary=("filters", "activation"),
        ),
        Model(
            "custom",
            _custom,
            ("builder", "from_logits", "freeze"),
            "any Keras model a function `package.module:function` builds",
            source="builder",
        ),
        Model(
            "saved",
            _saved,
            ("path", "from_logits", "freeze"),
            "a model saved with model.save(FILE.keras): its architecture and initial weights",
            source="path",
        ),
    )
}
