"""Ray task bodies of the evaluation: one retraining each, returning the validation objective E."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.data import Dataset


def fresh_objective(settings: Settings, dataset: Dataset, seed: int, eps: np.ndarray) -> float:
    """Train from seed `seed`'s own initialisation on its own schedule (data order) with eps [N] scaling each
    sample's weight (0 removes it; runtime.recipes.training_batches);
    returns E. Nothing is read from or written to a run directory."""
    from pipeline.kernels.training import as_inputs, as_targets, train
    from pipeline.runtime.recipes import recipe_for, schedule_for, training_batches

    recipe = recipe_for(settings, dataset, seed)
    schedule = schedule_for(settings, dataset, seed)
    batches = training_batches(settings, dataset, recipe, schedule, eps)
    final: dict[int, Any] = {}
    train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], final.__setitem__)
    x_val, y_val = (
        as_inputs(list(dataset.x_val.values()), recipe.dtype),
        as_targets(dataset.y_val, recipe.task, recipe.dtype),
    )
    return float(recipe.evaluate(final[schedule.n_steps], x_val, y_val)["objective"])
