"""The optimizer registry: every optimizer, with weight decay and each gradient clipping, with and without a
learning-rate schedule, trains like `model.fit` with its Keras counterpart, and the reverse sweep through it
matches finite differences of retraining (float64, a tiny MLP on synthetic data, a few steps)."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.kernels import optimizers
from pipeline.kernels.lr_schedules import learning_rates, make_schedule_object
from pipeline.kernels.schedule import checkpoint_steps, make_schedule
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Recipe, as_inputs, make_batches, train
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.metrics import relative_errors
from pipeline.models import build_model

N, N_VAL, FEATURES, CLASSES = 22, 12, 6, 3
BATCH, EPOCHS = 8, 2  # 3 steps per epoch, the last of 6 samples
N_STEPS = EPOCHS * 3
LR = 0.05
MODEL = ModelSettings(hidden=(5,))

VARIANTS = {  # id -> (registry name, hyperparameters)
    "sgd": ("sgd", {}),
    "nesterov": ("momentum", {"nesterov": True}),
    "adam": ("adam", {}),
    "adamw-amsgrad": ("adamw", {"amsgrad": True}),
    "rmsprop-centered-momentum": ("rmsprop", {"centered": True, "momentum": 0.5}),
    "adagrad": ("adagrad", {}),
    "nadam": ("nadam", {}),
    "lion": ("lion", {}),
}
# Per-variable gradient norms here are 0.03-0.8, global norms 0.4-1.1, elements up to 0.36: each threshold
# clips some gradients and not others. Weight decay goes with a clipping to check Keras' order (clip, decay, update).
OPTIONS = {
    "decay+clipnorm": {"weight_decay": 0.5, "clipnorm": 0.4},
    "global_clipnorm": {"global_clipnorm": 0.7},
    "decay+clipvalue": {"weight_decay": 0.5, "clipvalue": 0.2},
}
SCHEDULES = {"constant-lr": None, "warmup_cosine": {"warmup_steps": 2}}

# Eager tests: tf.data warns that its functions stay compiled.
pytestmark = pytest.mark.filterwarnings("ignore:Even though the:UserWarning")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + N_VAL, FEATURES))
    y = rng.integers(0, CLASSES, size=N + N_VAL)
    return x[:N], y[:N], x[N:], y[N:]


@pytest.fixture
def eager():
    """tf.functions run eagerly for one test: the same code without tracing (a few steps of a tiny model); for
    Keras' fit too, and learning_rates then gives the eager values, which Keras uses then."""
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(previous)


def _task():
    return make_task("classification", "cross_entropy", "cross_entropy")


def _learning_rate(schedule):
    """(Keras learning_rate, functional per-step lr): the float LR, or one schedule object and its values."""
    if schedule is None:
        return LR, LR
    obj = make_schedule_object("warmup_cosine", LR, N_STEPS, **schedule)
    return obj, learning_rates(obj, N_STEPS)


def _functional(data, optimizer, lr, dtype="float64"):
    x, y, _, _ = data
    recipe = Recipe(
        build_model(MODEL, {"x": (FEATURES,)}, "classification", CLASSES, dtype, seed=1), optimizer, _task()
    )
    schedule = make_schedule(N, BATCH, EPOCHS, shuffle=False, seed=0, lr=lr)
    batches = make_batches(x, y, schedule, dtype, recipe.task)
    final = {}
    train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], final.__setitem__)
    return [t.numpy() for t in final[schedule.n_steps].trainable]


def _fit(data, keras_optimizer, dtype="float64"):
    x, y, _, _ = data
    model = build_model(MODEL, {"x": (FEATURES,)}, "classification", CLASSES, dtype, seed=1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)
    model.compile(optimizer=keras_optimizer, loss=loss, jit_compile=False)
    model.fit(x.astype(dtype), y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return [v.numpy() for v in model.trainable_variables]


def _max_relative(mine, theirs):
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(mine, theirs))


def _matrix(fast, keep=lambda i, j, k: True):
    """pytest params (name, hyper, options, schedule) of the variant x options x schedule cases that `keep`
    (i, j, k: indices of the three); those where `fast` holds run by default, the others with -m slow."""
    params = []
    for i, (variant, (name, hyper)) in enumerate(VARIANTS.items()):
        for j, (option_id, options) in enumerate(OPTIONS.items()):
            for k, (schedule_id, schedule) in enumerate(SCHEDULES.items()):
                if not keep(i, j, k):
                    continue
                marks = () if fast(i, j, k) else (pytest.mark.slow,)
                params.append(
                    pytest.param(name, hyper, options, schedule, id=f"{variant}-{option_id}-{schedule_id}", marks=marks)
                )
    return params


# (i + j + k) even: every variant meets every option and both schedules, every option both schedules.
@pytest.mark.parametrize("name,hyper,options,schedule", _matrix(lambda i, j, k: (i + j + k) % 2 == 0))
def test_training_matches_model_fit(data, float64_keras, eager, name, hyper, options, schedule):
    """Same batches, same float64 weights: observed max relative difference 1.0e-15 over the whole matrix (float32
    runs of it: 1.3e-6, from the loss gradients: the updates alone are bit-exact, see test_optimizers.py).
    Run eagerly for speed (Keras too); test_compiled_training_matches_too compiles both."""
    spec = optimizers.OPTIMIZERS[name]
    keras_lr, lr = _learning_rate(schedule)
    mine = _functional(data, spec.functional(**options, **hyper), lr)
    theirs = _fit(data, spec.keras(keras_lr, **options, **hyper))
    assert _max_relative(mine, theirs) <= 1e-9


# Compiled, Grappler folds constants in the schedule (learning_rates gives the compiled values then) and could
# in the updates: warmup_cosine with decay+clipnorm or global_clipnorm; adamw and nadam by default.
@pytest.mark.parametrize(
    "name,hyper,options,schedule", _matrix(lambda i, j, k: (i, j) in ((3, 1), (6, 0)), lambda i, j, k: k == 1 and j < 2)
)
def test_compiled_training_matches_too(data, float64_keras, name, hyper, options, schedule):
    """Compiled functional training (tf.function) against compiled model.fit, as each runs by default."""
    spec = optimizers.OPTIMIZERS[name]
    keras_lr, lr = _learning_rate(schedule)
    mine = _functional(data, spec.functional(**options, **hyper), lr)
    theirs = _fit(data, spec.keras(keras_lr, **options, **hyper))
    assert _max_relative(mine, theirs) <= 1e-9


def test_every_option_changes_training(data, eager):
    """The matrix has teeth: each weight decay and clipping option alone moves the trained weights."""
    plain = _functional(data, optimizers.build("adam"), LR)
    for option in ({"weight_decay": 0.5}, {"clipnorm": 0.4}, {"global_clipnorm": 0.7}, {"clipvalue": 0.2}):
        assert _max_relative(_functional(data, optimizers.build("adam", **option), LR), plain) > 1e-4, option


# ----- hypergradients through the new optimizers against finite differences of retraining ------------------


# id -> (registry name, hyperparameters and options, schedule, finite-difference step). In the adamw check the
# global gradient norm is 0.55-0.88: clipped at 2 of the 6 steps, every step at least 2% away from the kink.
GRADCHECKS = {
    "adamw+warmup_cosine+global_clipnorm": ("adamw", {"global_clipnorm": 0.7}, {"warmup_steps": 2}, 1e-5),
    "rmsprop-centered-momentum": ("rmsprop", {"centered": True, "momentum": 0.5}, None, 1e-5),
    "nadam": ("nadam", {}, None, 1e-5),
    "nesterov+weight_decay": ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.5}, None, 1e-4),
}


@pytest.mark.parametrize("name,settings,schedule,h", list(GRADCHECKS.values()), ids=list(GRADCHECKS))
def test_sweep_matches_finite_differences(data, eager, name, settings, schedule, h):
    """dE/d eps_i from the reverse sweep against central differences of retraining, for two samples (eager: the
    same code, compiled in test_trajectory.py). Observed relative errors 1e-11 to 2e-8."""
    x, y, x_val, y_val = data
    _, lr = _learning_rate(schedule)
    model = build_model(MODEL, {"x": (FEATURES,)}, "classification", CLASSES, "float64", seed=0)
    recipe = Recipe(model, optimizers.build(name, **settings), _task())
    schedule = make_schedule(N, BATCH, EPOCHS, shuffle=True, seed=0, lr=lr)
    validation = (as_inputs(x_val, "float64"), tf.constant(y_val))
    steps = checkpoint_steps(schedule.n_steps, None)
    batches = make_batches(x, y, schedule, "float64", recipe.task)
    stored = {}
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__)
    result = ReverseSweep(recipe).run(stored, steps, batches, *validation)

    def retrained(eps):
        final = {}
        batches = make_batches(x, y, schedule, "float64", recipe.task, eps)
        train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], final.__setitem__)
        return float(recipe.objective(final[schedule.n_steps], *validation))

    for i in (3, 17):
        eps = np.ones(N)
        eps[i] = 1 + h
        plus = retrained(eps)
        eps[i] = 1 - h
        assert relative_errors(result.influence[i], (plus - retrained(eps)) / (2 * h)) < 1e-6


def test_lion_hypergradients_are_exactly_zero(data, eager):
    """sign has derivative 0: the weights trained by Lion do not depend on the sample weights (to first order)."""
    x, y, x_val, y_val = data
    model = build_model(MODEL, {"x": (FEATURES,)}, "classification", CLASSES, "float64", seed=0)
    recipe = Recipe(model, optimizers.build("lion", weight_decay=0.5), _task())
    schedule = make_schedule(N, BATCH, EPOCHS, shuffle=True, seed=0, lr=LR)
    batches = make_batches(x, y, schedule, "float64", recipe.task)
    stored = {}
    train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], stored.__setitem__)
    result = ReverseSweep(recipe).run(
        stored, [0, schedule.n_steps], batches, as_inputs(x_val, "float64"), tf.constant(y_val)
    )
    assert not np.any(result.influence)


# ----- the registry itself -----------------------------------------------------------------------------------


def test_registry_names_and_defaults_follow_keras():
    assert list(optimizers.OPTIMIZERS) == ["sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "nadam", "lion"]
    for spec in optimizers.OPTIMIZERS.values():
        keras_defaults = inspect.signature(getattr(keras.optimizers, spec.keras_class).__init__).parameters
        assert keras_defaults["weight_decay"].default == spec.weight_decay
        for key, default in spec.hyper.items():
            if spec.name != "momentum":  # Keras' SGD defaults to momentum 0; this entry to 0.9
                assert keras_defaults[key].default == default, (spec.name, key)
        reference = spec.keras(0.01)
        assert all(getattr(reference, key) == value for key, value in spec.hyperparameters().items())


def test_existing_names_keep_their_state_layout():
    assert optimizers.build("sgd").slots == optimizers.sgd().slots == ()
    assert optimizers.build("momentum").slots == optimizers.momentum(0.9).slots == ("momentum",)
    assert optimizers.build("sgd", momentum=0.5).slots == ("momentum",)
    assert optimizers.build("adam").slots == optimizers.adam().slots == ("m", "v")
    assert optimizers.build("nadam").slots == ("m", "v", "u_product")
    assert optimizers.build("rmsprop", momentum=0.5, centered=True).slots == (
        "velocity",
        "momentum",
        "average_gradient",
    )


def test_initial_slot_values_are_keras_float32_constants():
    params = [tf.zeros((2, 3), tf.float64)]
    (accumulator,) = optimizers.build("adagrad", initial_accumulator_value=0.1).init(params)
    np.testing.assert_array_equal(accumulator.numpy(), np.full((2, 3), float(np.float32(0.1))))
    m, v, u = optimizers.build("nadam").init(params)
    assert not np.any(m.numpy()) and not np.any(v.numpy()) and np.all(u.numpy() == 1.0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: optimizers.build("adamax"), "optimizer 'adamax': unknown"),
        (lambda: optimizers.build("adam", rho=0.9), "unknown hyperparameter 'rho'"),
        (lambda: optimizers.build("rmsprop", centered=1), "centered=1 must be true or false"),
        (lambda: optimizers.build("adam", beta_1="0.9"), "beta_1='0.9' must be a number"),
        (lambda: optimizers.build("sgd", clipnorm=1.0, clipvalue=1.0), "only one of clipnorm, clipvalue"),
        (lambda: optimizers.build("adam", weight_decay="0.1"), "weight_decay='0.1': must be a number"),
        (lambda: optimizers.build("sgd", momentum=1.5), r"momentum=1.5: must be in \[0, 1\]"),
        (lambda: optimizers.build("lion", beta_1=0.0), r"beta_1=0.0: must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
