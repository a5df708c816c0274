"""Settings -> kernel objects (task, model, functional optimizer, Recipe, schedule), and check_run, the Ray task
the driver runs once before it claims output.dir. Runs in workers (imports TensorFlow and Keras)."""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import tensorflow as tf

from pipeline.cluster import configure_tensorflow
from pipeline.config import ModelSettings, OptimizerSettings, Settings, TrainSettings
from pipeline.data import Dataset
from pipeline.errors import ConfigError, UserInputError, first_line
from pipeline.kernels import optimizers
from pipeline.kernels.lr_schedules import learning_rates, make_schedule_object
from pipeline.kernels.optimizers import FunctionalOptimizer
from pipeline.kernels.schedule import Schedule, make_schedule
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Batches, Recipe, as_inputs, as_targets, make_batches
from pipeline.methods import REGISTRY
from pipeline.models import build_model


def schedule_for(settings: Settings, dataset: Dataset, seed: int) -> Schedule:
    """The batches of one seed and the learning rate of every step: optimizer.lr, or optimizer.schedule's value at
    each step exactly as Keras evaluates it (a bad schedule parameter is a ConfigError naming its setting)."""
    t, o = settings.train, settings.optimizer
    if o.schedule == "constant":
        return make_schedule(dataset.n_train, t.batch_size, t.epochs, t.shuffle, seed, o.lr)
    n_steps = t.epochs * math.ceil(dataset.n_train / t.batch_size)
    try:
        rates = learning_rates(make_schedule_object(o.schedule, o.lr, n_steps, **o.schedule_params()), n_steps)
    except ValueError as exc:
        raise ConfigError(
            f"optimizer.schedule={o.schedule}: {exc}" if ":" in o.schedule else f"optimizer.{exc}"
        ) from None
    return make_schedule(dataset.n_train, t.batch_size, t.epochs, t.shuffle, seed, rates)


def functional_optimizer(settings: OptimizerSettings) -> FunctionalOptimizer:
    """optimizer.name's registry entry with its Keras hyperparameters, weight decay and clipping."""
    spec = optimizers.OPTIMIZERS[settings.name]
    return optimizers.build(
        settings.name,
        weight_decay=settings.weight_decay,
        clipnorm=settings.clipnorm,
        clipvalue=settings.clipvalue,
        global_clipnorm=settings.global_clipnorm,
        **{name: getattr(settings, name) for name in spec.hyper},
    )


def output_weights(settings: Settings, dataset: Dataset) -> tuple[float, ...]:
    """influence.output_weights (ones when null), one weight per model output; ConfigError otherwise."""
    width = dataset.width
    weights = settings.influence.output_weights or (1.0,) * width
    if len(weights) != width:
        raise ConfigError(f"influence.output_weights has {len(weights)} values; the model has {width} outputs")
    return tuple(weights)


def sample_weights(settings: Settings, dataset: Dataset) -> np.ndarray | None:
    """[N] weight w_i of each training sample in the training loss: the data's w_train times train.class_weight of
    its class (Keras multiplies sample_weight and class_weight the same way); None when neither is given."""
    weights = dataset.w_train
    class_weight = settings.train.class_weight
    if class_weight is not None:
        if len(class_weight) != dataset.width:
            raise ConfigError(
                f"train.class_weight has {len(class_weight)} values; the data has {dataset.width} classes"
            )
        by_class = np.asarray(class_weight, np.float64)[dataset.y_train]
        weights = by_class if weights is None else weights * by_class
    if weights is not None and not weights.any():
        raise ConfigError("train.class_weight: every training sample has weight 0")
    return weights


def training_batches(
    settings: Settings,
    dataset: Dataset,
    recipe: Recipe,
    schedule: Schedule,
    eps: np.ndarray | None = None,
    x: dict[str, np.ndarray] | None = None,
    dtype: str | None = None,
) -> Batches:
    """The training set on `schedule` with the samples' weights (sample_weights), each scaled by eps [N] (default
    ones; 0 removes a sample); inputs x (name -> [N, *shape], default the dataset's) in `dtype` (default
    train.dtype). What training, the sweeps and every retraining feed the compiled loops."""
    inputs = dataset.x_train if x is None else x
    dtype = settings.train.dtype if dtype is None else dtype
    weight = sample_weights(settings, dataset)
    return make_batches(list(inputs.values()), dataset.y_train, schedule, dtype, recipe.task, eps, weight)


def check_weights_supported(settings: Settings, dataset: Dataset) -> None:
    """Sample or class weights are differentiated exactly by the sweep methods; the per-sample estimators of a
    validation derivative (tracin, lookahead, trak, ...) do not model them yet: ConfigError rather than scores that
    ignore them."""
    method = REGISTRY[settings.influence.method]
    if sample_weights(settings, dataset) is None or method.sweep or method.measures != "validation":
        return
    which = "train.class_weight" if settings.train.class_weight is not None else "the data's sample weights (w_train)"
    sweeps = ", ".join(name for name, m in REGISTRY.items() if m.sweep)
    raise ConfigError(f"{which}: influence.method={method.name} does not model sample weights; use {sweeps}")


def check_run(settings: Settings, dataset: Dataset) -> None:
    """Ray task body run before output.dir is claimed: builds the first seed's learning-rate schedule and model and
    checks them, the user's losses (recipe_for) and influence.output_weights. A custom builder that raises is one
    ConfigError naming it."""
    output_weights(settings, dataset)
    check_weights_supported(settings, dataset)
    schedule_for(settings, dataset, settings.train.seeds[0])
    try:
        recipe_for(settings, dataset, settings.train.seeds[0])
    except UserInputError:
        raise
    except Exception as exc:
        if settings.model.name != "custom":
            raise
        detail = f": {first_line(exc)}" if str(exc).strip() else ""
        raise ConfigError(f"model.builder={settings.model.builder} raised {type(exc).__name__}{detail}") from None


def recipe_for(settings: Settings, dataset: Dataset, seed: int) -> Recipe:
    """The Recipe of one seed; its model's variables hold the seed's initial weights.

    Cached per worker process, so the tasks of a run that a worker executes reuse one model and its
    compiled loops instead of tracing them again (a Recipe is pure: nothing ever assigns its variables).
    """
    recipe = _cached_recipe(
        settings.task.name,
        settings.model,
        settings.optimizer,
        settings.train,
        settings.influence.objective,
        tuple(dataset.input_shapes.items()),
        dataset.width,
        seed,
    )
    _check_losses(settings, recipe, dataset)
    return recipe


@functools.lru_cache(maxsize=8)
def _cached_recipe(
    task: str,
    model: ModelSettings,
    optimizer: OptimizerSettings,
    train: TrainSettings,
    objective: str,
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...],
    width: int,
    seed: int,
) -> Recipe:
    configure_tensorflow()
    try:
        losses = make_task(task, str(train.loss), objective, model.from_logits, train.label_smoothing)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"train.loss={train.loss} / influence.objective={objective}: cannot import ({exc})") from None
    keras_model = build_model(model, dict(input_shapes), task, width, train.dtype, seed)
    _refuse_mixed_precision(keras_model)
    return Recipe(keras_model, functional_optimizer(optimizer), losses)


def _refuse_mixed_precision(model: keras.Model) -> None:
    """ConfigError for a layer whose policy computes in another dtype than it stores its weights in (mixed
    precision, e.g. mixed_float16): the sweep's derivatives are exact only in float32 or float64 throughout."""
    for layer in model._flatten_layers(include_self=False):
        policy = layer.dtype_policy
        if policy.compute_dtype != policy.variable_dtype:
            raise ConfigError(
                f"model: layer {layer.name!r} computes in {policy.compute_dtype} (dtype policy {policy.name}); mixed "
                "precision is not supported, exact derivatives need float32 or float64 throughout"
            )


def _check_losses(settings: Settings, recipe: Recipe, dataset: Dataset) -> None:
    """User losses ('module:function') must give one finite value per sample and a second derivative."""
    user = [
        (name, value)
        for name, value in (("train.loss", settings.train.loss), ("influence.objective", settings.influence.objective))
        if ":" in str(value)
    ]
    if not user or id(recipe) in _CHECKED:
        return
    rows = min(4, dataset.n_train)
    x = as_inputs([a[:rows] for a in dataset.x_train.values()], recipe.dtype)
    y = as_targets(dataset.y_train[:rows], recipe.task, recipe.dtype)
    state = recipe.initial_state()
    for setting, value in user:
        fn = recipe.task.loss if setting == "train.loss" else recipe.task.objective
        try:
            with tf.GradientTape() as outer:
                outer.watch(state.trainable)
                with tf.GradientTape() as inner:
                    inner.watch(state.trainable)
                    outputs, _ = recipe.forward(state.trainable, state.non_trainable, x, training=False)
                    values = fn(outputs, y)
                grads = inner.gradient(tf.reduce_sum(values), state.trainable)
                if any(g is None for g in grads):
                    raise ValueError("no gradient with respect to the model outputs")
                norm = tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in grads])
            second = outer.gradient(norm, state.trainable)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{setting}={value}: not usable as a loss ({first})") from None
        if tuple(values.shape) != (rows,):
            raise ConfigError(
                f"{setting}={value}: must return one value per sample (shape [{rows}]), got {tuple(values.shape)}"
            )
        if not np.all(np.isfinite(values.numpy())):
            raise ConfigError(f"{setting}={value}: gives NaN/inf on the first training samples")
        if all(g is None for g in second):
            raise ConfigError(
                f"{setting}={value}: cannot be differentiated twice (the reverse sweep needs second derivatives)"
            )
    _CHECKED.add(id(recipe))


_CHECKED: set[int] = set()  # ids of the (cached) recipes whose user losses passed the check in this worker
