"""Ray task bodies of the evaluation: one retraining each, returning the validation objective E."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.data import Dataset


def fresh_objective(settings: Settings, dataset: Dataset, seed: int, eps: np.ndarray) -> float:
    """Train from seed `seed`'s own initialisation on its own schedule (data order) with eps [N] scaling each
    sample's weight (0 removes it; the weights are the data's and the class weights, runtime.recipes.sample_weights);
    returns E. Nothing is read from or written to a run directory."""
    from pipeline.kernels.training import as_inputs, as_targets, make_batches, train
    from pipeline.runtime.recipes import recipe_for, sample_weights, schedule_for

    recipe = recipe_for(settings, dataset, seed)
    schedule = schedule_for(settings, dataset, seed)
    batches = make_batches(
        list(dataset.x_train.values()),
        dataset.y_train,
        schedule,
        settings.train.dtype,
        recipe.task,
        eps,
        sample_weights(settings, dataset),
    )
    final: dict[int, Any] = {}
    train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], final.__setitem__)
    x_val, y_val = (
        as_inputs(list(dataset.x_val.values()), recipe.dtype),
        as_targets(dataset.y_val, recipe.task, recipe.dtype),
    )
    return float(recipe.evaluate(final[schedule.n_steps], x_val, y_val)["objective"])
