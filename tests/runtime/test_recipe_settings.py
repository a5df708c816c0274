"""A training recipe given as settings (optimizer, weight decay, clipping, schedule, label smoothing) trains what
`model.fit` trains with the Keras objects the README names, and bad recipe settings are one-line ConfigErrors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config import ModelSettings, OptimizerSettings, Settings, TrainSettings
from pipeline.errors import ConfigError
from pipeline.kernels import optimizers
from pipeline.kernels.lr_schedules import make_schedule_object
from pipeline.kernels.training import make_batches, train
from pipeline.models import build_model
from pipeline.runtime.recipes import recipe_for, schedule_for

N_TRAIN, BATCH, EPOCHS = 96, 32, 2


def _settings(**optimizer: object) -> Settings:
    return Settings(
        model=ModelSettings(hidden=(8,)),
        optimizer=OptimizerSettings(**optimizer),  # type: ignore[arg-type]
        train=TrainSettings(epochs=EPOCHS, batch_size=BATCH, shuffle=False, dtype="float64", label_smoothing=0.1),
    )


RECIPES = {
    "adamw+warmup_cosine+global_clipnorm": dict(
        name="adamw", lr=0.01, weight_decay=0.004, schedule="warmup_cosine", warmup_steps=2, global_clipnorm=1.0
    ),
    "sgd-nesterov+decay+exponential+clipnorm": dict(
        name="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="exponential",
        decay_steps=2,
        decay_rate=0.5,
        clipnorm=0.5,
    ),
}


@pytest.mark.parametrize("optimizer", list(RECIPES.values()), ids=list(RECIPES))
def test_recipe_settings_train_like_model_fit(digits_subset, float64_keras, optimizer):
    data = digits_subset(N_TRAIN)
    settings = _settings(**optimizer)
    recipe, schedule = recipe_for(settings, data, 0), schedule_for(settings, data, 0)
    final = {}
    batches = make_batches(data.x_train["x"], data.y_train, schedule, "float64", recipe.task)
    train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], final.__setitem__)

    o = settings.optimizer
    rate = make_schedule_object(o.schedule, o.lr, schedule.n_steps, **o.schedule_params())
    spec = optimizers.OPTIMIZERS[o.name]
    keras_optimizer = spec.keras(
        rate,
        weight_decay=o.weight_decay,
        clipnorm=o.clipnorm,
        global_clipnorm=o.global_clipnorm,
        **{k: getattr(o, k) for k in spec.hyper},
    )
    model = build_model(settings.model, data.input_shapes, "classification", 10, "float64", seed=0)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, dtype="float64")
    model.compile(optimizer=keras_optimizer, loss=loss, jit_compile=False)
    y = keras.utils.to_categorical(data.y_train, 10)
    model.fit(data.x_train["x"], y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    for mine, theirs in zip(final[schedule.n_steps].trainable, model.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-10)
    assert schedule.lr[0] != schedule.lr[-1]  # the schedule moved the learning rate


def test_a_warm_up_longer_than_the_run_names_its_setting(digits_subset):
    settings = _settings(name="adam", lr=0.01, schedule="warmup_cosine", warmup_steps=50)
    with pytest.raises(ConfigError, match=r"^optimizer.warmup_steps=50: must be less than the run's 6 steps$"):
        schedule_for(settings, digits_subset(N_TRAIN), 0)


@pytest.mark.parametrize(
    "optimizer,message",
    [
        (dict(weight_decay=-0.1), "optimizer.weight_decay=-0.1: must be a number >= 0"),
        (dict(schedule="cosines"), "optimizer.schedule='cosines': must be one of"),
        (dict(schedule="warmup_cosine"), "optimizer.warmup_steps: required by optimizer.schedule=warmup_cosine"),
        (dict(schedule="cosine", decay_rate=0.5), "optimizer.decay_rate: not a parameter of optimizer.schedule=cosine"),
        (dict(clipnorm=1.0, clipvalue=0.5), "set at most one of optimizer.clipnorm"),
    ],
)
def test_bad_recipe_settings_are_one_line_errors(optimizer, message):
    from pipeline.config import validate

    with pytest.raises(ConfigError) as info:
        validate(_settings(**optimizer))
    assert message in str(info.value) and "\n" not in str(info.value)


def mixed_precision_model(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """A custom builder with one float16 layer (mixed precision)."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(8, dtype="mixed_float16", name="half"),
            keras.layers.Dense(num_classes, dtype="float32"),
        ]
    )


def test_mixed_precision_is_refused_naming_the_layer(digits_subset):
    settings = Settings(model=ModelSettings(name="custom", builder=f"{__name__}:mixed_precision_model"))
    with pytest.raises(
        ConfigError, match=r"^model: layer 'half' computes in float16 .*mixed precision is not supported"
    ):
        recipe_for(settings, digits_subset(N_TRAIN), 0)
