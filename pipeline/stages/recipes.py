"""Settings -> kernel objects (model, functional optimizer, recipe, schedule, batches). Runs in workers."""

from __future__ import annotations

import functools
from typing import Any

from pipeline.config import ModelSettings, OptimizerSettings, Settings, TrainSettings
from pipeline.data import Dataset
from pipeline.kernels.schedule import Schedule, make_schedule


def schedule_for(settings: Settings, dataset: Dataset, seed: int) -> Schedule:
    t = settings.train
    return make_schedule(dataset.n_train, t.batch_size, t.epochs, t.shuffle, seed, settings.optimizer.lr)


def functional_optimizer(settings: OptimizerSettings) -> Any:
    from pipeline.kernels import optimizers

    if settings.name == "adam":
        return optimizers.adam(settings.beta_1, settings.beta_2, settings.epsilon)
    if settings.name == "momentum":
        return optimizers.momentum(settings.momentum, settings.nesterov)
    return optimizers.sgd()


def recipe_for(settings: Settings, dataset: Dataset, seed: int) -> Any:
    """The Recipe of one seed; its model's variables hold the seed's initial weights.

    Cached per worker process, so the tasks of a run that a worker executes reuse one model and its
    compiled loops instead of tracing them again (a Recipe is pure: nothing ever assigns its variables).
    """
    return _cached_recipe(settings.model, settings.optimizer, settings.train, dataset.input_shape, dataset.num_classes, seed)


@functools.lru_cache(maxsize=8)
def _cached_recipe(
    model: ModelSettings, optimizer: OptimizerSettings, train: TrainSettings, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> Any:
    from pipeline.cluster import configure_tensorflow
    from pipeline.kernels.training import Recipe
    from pipeline.models import build_model

    configure_tensorflow()
    keras_model = build_model(model, input_shape, num_classes, train.dtype, seed)
    return Recipe(keras_model, functional_optimizer(optimizer), train.loss, model.from_logits, input_shape)
