"""Random augmentation layers inside the model (model.augment) and frozen layers (model.freeze): the recorded run
trains what `model.fit` trains with the same layers and seeds, the sweep's derivatives match finite differences
of retraining through the augmentation, and frozen weights stay put and carry no adjoint."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelSettings
from pipeline.errors import ConfigError
from pipeline.kernels import optimizers
from pipeline.kernels.schedule import checkpoint_steps, make_schedule
from pipeline.kernels.task import make_task
from pipeline.kernels.training import Recipe, as_inputs, make_batches, train
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.metrics import relative_errors
from pipeline.models import build_model

N_TRAIN, BATCH, EPOCHS = 64, 16, 2
SMALL_CNN = dict(name="cnn", filters=(4,), kernel_size=3)


def _recipe(digits, model: ModelSettings, dtype: str) -> Recipe:
    keras_model = build_model(model, digits.input_shapes, "classification", 10, dtype, seed=0)
    return Recipe(keras_model, optimizers.momentum(0.9), make_task("classification", "cross_entropy", "cross_entropy"))


def _recorded_final(digits, recipe: Recipe, dtype: str, eps=None, x=None):
    schedule = make_schedule(N_TRAIN, BATCH, EPOCHS, shuffle=False, seed=0, lr=0.05)
    x = digits.x_train["x"] if x is None else x
    batches = make_batches(x, digits.y_train, schedule, dtype, recipe.task, eps)
    final = {}
    train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], final.__setitem__)
    return final[schedule.n_steps]


@pytest.mark.parametrize(
    "augment,dtype,tolerance",
    [
        # the cnn without augmentation differs from model.fit by 1.7e-9 (float64) already: Keras' compiled train step
        # sums the convolution's gradient in another order; the augmentation layers add nothing to that
        (("flip", "translate", "zoom", "contrast"), "float64", 1e-8),
        (("translate", "rotate"), "float32", 1e-5),
    ],
    ids=["float64", "float32+rotate"],
)
def test_augmented_training_equals_model_fit(digits_subset, augment, dtype, tolerance):
    digits = digits_subset(N_TRAIN)
    settings = ModelSettings(**SMALL_CNN, augment=augment)  # type: ignore[arg-type]
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        final = _recorded_final(digits, _recipe(digits, settings, dtype), dtype)
        model = build_model(settings, digits.input_shapes, "classification", 10, dtype, seed=0)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
        y = keras.utils.to_categorical(digits.y_train, 10)
        model.fit(digits.x_train["x"], y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
        # without the augmentation the same run ends elsewhere: the layers really changed the training
        plain = _recorded_final(digits, _recipe(digits, ModelSettings(**SMALL_CNN), dtype), dtype)  # type: ignore[arg-type]
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    assert [layer.name for layer in model.layers[1 : 1 + len(augment)]] == [f"augment_{a}" for a in augment]
    pairs = [(mine.numpy(), theirs.numpy()) for mine, theirs in zip(final.trainable, model.trainable_variables)]
    scale = max(np.abs(theirs).max() for _, theirs in pairs)
    assert max(np.abs(mine - theirs).max() for mine, theirs in pairs) <= tolerance * scale
    assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(final.trainable, plain.trainable)) > 1e-3


@pytest.mark.parametrize(
    "augment,input_grad",
    [(("flip", "translate", "zoom", "contrast"), False), (("flip", "contrast"), True)],
    ids=["influence", "influence+input_grad"],
)
def test_sweep_through_augmentation_matches_finite_differences(digits_subset, augment, input_grad):
    """dE/d eps_i through every augmentation, and dE/d x_i (of the stored, un-augmented sample) through those whose
    TensorFlow gradient is the exact adjoint, against central differences of retraining. (translate, rotate and zoom
    warp the image with ImageProjectiveTransformV3, whose registered gradient is the inverse warp, not the adjoint of
    bilinear sampling: dE/d x_i through them was 0.09% (translate) and 9% (zoom) off here; the README says so.)"""
    digits = digits_subset(N_TRAIN)
    recipe = _recipe(digits, ModelSettings(**SMALL_CNN, augment=augment), "float64")  # type: ignore[arg-type]
    schedule = make_schedule(N_TRAIN, BATCH, EPOCHS, shuffle=False, seed=0, lr=0.05)
    steps = checkpoint_steps(schedule.n_steps, None)
    batches = make_batches(digits.x_train["x"], digits.y_train, schedule, "float64", recipe.task)
    stored = {}
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__)
    x_val, y_val = as_inputs(digits.x_val["x"], "float64"), tf.constant(digits.y_val)
    result = ReverseSweep(recipe).run(stored, steps, batches, x_val, y_val)

    def objective(eps=None, x=None) -> float:
        return float(recipe.objective(_recorded_final(digits, recipe, "float64", eps, x), x_val, y_val))

    h = 1e-5  # at 1e-4 the central difference is off by 0.4% (max-pooling's switches), at 1e-5 by 1e-8
    for i in (5, 40):
        eps = np.ones(N_TRAIN)
        eps[i] = 1 + h
        plus = objective(eps=eps)
        eps[i] = 1 - h
        assert relative_errors(result.influence[i], (plus - objective(eps=eps)) / (2 * h)) < 1e-6
        if not input_grad:
            continue
        # a direction on the sample's nonzero pixels: max-pooling over the blank background has ties (no derivative)
        u = np.random.default_rng(i).normal(size=digits.x_train["x"][i].shape) * (digits.x_train["x"][i] != 0)
        u /= np.linalg.norm(u)
        x = digits.x_train["x"].astype("float64")
        x[i] += h * u
        plus = objective(x=x)
        x[i] -= 2 * h * u
        assert relative_errors(np.sum(result.input_grad[0][i] * u), (plus - objective(x=x)) / (2 * h)) < 1e-6


def test_frozen_layers_keep_their_weights_and_carry_no_adjoint(digits_subset):
    digits = digits_subset(N_TRAIN)
    settings = ModelSettings(**SMALL_CNN, batch_norm=True, freeze=("conv_",))  # type: ignore[arg-type]
    recipe = _recipe(digits, settings, "float64")
    frozen = [v.path for v in recipe.model.non_trainable_variables]
    assert all(path.startswith("conv_") for path in frozen) and len(frozen) == 6  # kernel, bias, BN's four
    assert not any(recipe.adjoint_non_trainable)
    initial = recipe.initial_state()
    final = _recorded_final(digits, recipe, "float64")
    for before, after in zip(initial.non_trainable, final.non_trainable):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert np.abs(final.trainable[0].numpy() - initial.trainable[0].numpy()).max() > 1e-3  # the head trained

    # the sweep over the frozen base still gives exact derivatives (here dE/d eps_i against finite differences)
    schedule = make_schedule(N_TRAIN, BATCH, EPOCHS, shuffle=False, seed=0, lr=0.05)
    steps = checkpoint_steps(schedule.n_steps, None)
    batches = make_batches(digits.x_train["x"], digits.y_train, schedule, "float64", recipe.task)
    stored = {}
    train(recipe, initial, batches, steps, stored.__setitem__)
    x_val, y_val = as_inputs(digits.x_val["x"], "float64"), tf.constant(digits.y_val)
    influence = ReverseSweep(recipe).run(stored, steps, batches, x_val, y_val).influence
    eps, h = np.ones(N_TRAIN), 1e-4
    eps[7] = 1 + h
    plus = float(recipe.objective(_recorded_final(digits, recipe, "float64", eps), x_val, y_val))
    eps[7] = 1 - h
    minus = float(recipe.objective(_recorded_final(digits, recipe, "float64", eps), x_val, y_val))
    assert relative_errors(influence[7], (plus - minus) / (2 * h)) < 1e-6


@pytest.mark.parametrize(
    "settings,message",
    [
        (ModelSettings(freeze=("conv",)), r"^model.freeze: no layer with weights is named 'conv' or starts with it"),
        (ModelSettings(name="logistic", freeze=("logits",)), r"^model.freeze=\['logits'\]: freezes every layer"),
        (ModelSettings(name="cnn", augment=("rotate",)), r"^model.augment=rotate: Keras' RandomRotation fails"),
    ],
    ids=["unknown layer", "everything", "rotate in float64"],
)
def test_bad_freeze_and_augment_are_one_line_errors(digits_subset, settings, message):
    with pytest.raises(ConfigError, match=message):
        build_model(settings, digits_subset(N_TRAIN).input_shapes, "classification", 10, "float64", seed=0)


def test_augment_needs_images():
    with pytest.raises(ConfigError, match=r"^model.augment=\['flip'\]: needs image inputs"):
        build_model(ModelSettings(augment=("flip",)), {"x": (20,)}, "classification", 3, "float32", seed=0)
