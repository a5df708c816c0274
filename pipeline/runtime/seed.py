"""One trained seed as a worker sees it. `SeedRun.load` reads the seed's record (training summary, schedule,
checkpoints) and builds its recipe; every task and actor that works on a trained seed starts from it, and the
registry's sharded kernels take it (methods.Method.kernel). Runs in workers (imports TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.io.checkpoints import StoredStates, retrain_hint
from pipeline.io.files import read_json
from pipeline.io.layout import RunLayout
from pipeline.io.states import AUTO, StoredRun, open_states
from pipeline.io.tables import read_schedule
from pipeline.kernels.per_sample import SampleScorer
from pipeline.kernels.schedule import Schedule
from pipeline.kernels.training import Batches, Recipe, TrainState, as_inputs, as_targets
from pipeline.runtime.recipes import output_weights, recipe_for, training_batches


@dataclass(frozen=True)
class SeedRun:
    """The recorded training run of `seed` in settings.output_dir: its recipe (the model and losses), training
    summary, schedule and checkpoints (`states`: step -> TrainState, read from disk on access)."""

    settings: Settings
    dataset: Dataset
    seed: int
    layout: RunLayout
    recipe: Recipe
    summary: dict[str, Any]  # trajectory/seed=<s>/_summary.json
    schedule: Schedule
    states: StoredStates

    @classmethod
    def load(cls, settings: Settings, dataset: Dataset, seed: int, recipe: Recipe | None = None) -> SeedRun:
        """The seed's record. recipe: the model to read the checkpoints into; default the seed's own
        (runtime.recipes.recipe_for); the recipe of another seed of the same run serves as well (states are keyed by
        position and checked by shape), which saves building a model per seed."""
        layout = RunLayout(settings.output_dir)
        summary = read_json(layout.train_summary(seed))
        schedule = read_schedule(layout.schedule(seed))
        recipe = recipe_for(settings, dataset, seed) if recipe is None else recipe
        states = StoredStates(
            lambda step: layout.checkpoint(seed, step), summary["checkpoint_steps"], recipe, retrain_hint(seed)
        )
        return cls(settings, dataset, seed, layout, recipe, summary, schedule, states)

    @property
    def steps(self) -> list[int]:
        """The checkpointed steps: 0, every train.checkpoint_every steps, and the last."""
        return self.states.steps

    @property
    def n_train(self) -> int:
        return self.dataset.n_train

    @property
    def initial(self) -> TrainState:
        """The stored initial state (step 0)."""
        return self.states[0]

    @cached_property
    def final(self) -> TrainState:
        """The state after the last step."""
        return self.states[self.steps[-1]]

    @cached_property
    def scorer(self) -> SampleScorer:
        """The per-sample kernels on this recipe (kernels.per_sample)."""
        return SampleScorer(self.recipe)

    @cached_property
    def output_weights(self) -> tuple[float, ...]:
        """influence.output_weights, one per model output (runtime.recipes.output_weights)."""
        return output_weights(self.settings, self.dataset)

    def batches(
        self, eps: np.ndarray | None = None, x: dict[str, np.ndarray] | None = None, dtype: str | None = None
    ) -> Batches:
        """The training set on the seed's schedule (runtime.recipes.training_batches): eps [N] scales the samples'
        weights (default ones), inputs x (name -> [N, *shape]; default the dataset's), in `dtype` (default
        train.dtype)."""
        return training_batches(self.settings, self.dataset, self.recipe, self.schedule, eps, x, dtype)

    def validation(
        self, rows: np.ndarray | None = None, dtype: str | tf.DType | None = None
    ) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
        """Validation inputs and targets as tensors in `dtype` (default the recipe's): every sample, or `rows` in that
        order."""
        dtype = self.recipe.dtype if dtype is None else dtype
        x = [a if rows is None else a[rows] for a in self.dataset.x_val.values()]
        y = self.dataset.y_val if rows is None else self.dataset.y_val[rows]
        return as_inputs(x, dtype), as_targets(y, self.recipe.task, dtype)

    @cached_property
    def _validation(self) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
        return self.validation()

    @property
    def x_val(self) -> tuple[tf.Tensor, ...]:
        """Every validation input, in the recipe's dtype."""
        return self._validation[0]

    @property
    def y_val(self) -> tf.Tensor:
        """Every validation target (class ids int64, else the recipe's dtype)."""
        return self._validation[1]

    def kept_states(self) -> StoredRun | None:
        """Where a sweep gets its states: the states kept from training (io.states.StoredRun, influence.state_memory),
        or None to replay from the checkpoints; prints one line when kept states were asked for but cannot be read or
        trusted, or when a segment read later does not match its digest. Quiet when influence.state_memory=auto and
        training recorded that the states did not fit (it said so then, and the score summary says `replayed`)."""
        memory = self.settings.influence.state_memory
        if memory is None:
            return None
        recorded = self.summary.get("states") or {}
        if memory == AUTO and recorded.get("kept") is False:
            return None
        layout, seed = self.layout, self.seed
        path = layout.states(seed)

        def tell(why: str) -> None:
            print(f"[score] seed={seed}: {path.relative_to(layout.root)} {why}; replaying from the checkpoints")

        run, problem = open_states(
            path, self.recipe.state_layout(), self.recipe.state_dtypes(), self.schedule.n_steps, tell
        )
        if problem == "missing" and any(path.parent.glob(f".{path.name}.corrupt*")):
            tell("missing (quarantined after a digest mismatch)")
        elif problem == "missing":
            tell("missing (trained without influence.state_memory, or over its budget)")
        elif problem is not None:
            tell(problem)
        return run
