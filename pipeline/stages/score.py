"""Stage `score` (method `trajectory`): one Ray task per trained seed runs the reverse sweep over the
stored checkpoints and writes scores/method=trajectory/seed=<s>/part-00000.parquet, then _summary.json."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from pipeline import __version__, cluster
from pipeline.config import SHARDED_METHODS, Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout

METHOD = "trajectory"


def run(settings: Settings, dataset_ref: Any, n_train: int, options: dict[str, Any]) -> dict[str, Any]:
    """Score every seed not yet scored with influence.method; returns {seed: summary}."""
    layout = RunLayout(settings.output_dir)
    for seed in settings.train.seeds:
        if not layout.train_summary(seed).exists():
            raise ConfigError(f"stages: score needs the trained trajectory of seed {seed} in {layout.root}; add train to stages")
    if settings.influence.method in SHARDED_METHODS:
        from pipeline.stages import score_sharded

        return score_sharded.run(settings, dataset_ref, n_train, options)
    todo = [s for s in settings.train.seeds if not layout.score_summary(METHOD, s).exists()]
    cluster.run_tasks(score_seed, [(settings, dataset_ref, s) for s in todo], options, desc=f"score {METHOD} (seeds)")
    return {str(s): read_json(layout.score_summary(METHOD, s)) for s in settings.train.seeds}


def part_metadata(settings: Settings, seed: int) -> dict[str, str]:
    """Schema metadata of a score part (tables.scores_schema adds the sign convention)."""
    return {
        "package_version": __version__,
        "config_hash": settings.result_hash(),
        "method": settings.influence.method,
        "seed": str(seed),
        "objective": settings.influence.objective,
    }


class StoredStates(Mapping):
    """Checkpoints of one seed as a read-only mapping step -> TrainState, loaded from disk on access."""

    def __init__(self, layout: RunLayout, seed: int, steps: list[int], recipe: Any):
        self.layout, self.seed, self.steps, self.recipe = layout, seed, steps, recipe
        self.names = recipe.state_names()

    def __getitem__(self, step: int) -> Any:
        from pipeline.io.checkpoints import load_state

        if step not in self.steps:
            raise KeyError(step)
        return self.recipe.unflatten(load_state(self.layout.checkpoint(self.seed, step), self.names))

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def score_seed(settings: Settings, dataset: Dataset, seed: int) -> dict[str, Any]:
    """Ray task body: trajectory hypergradients of one seed."""
    from ray.experimental.tqdm_ray import tqdm

    from pipeline.io.tables import read_schedule, scores_table, write_table
    from pipeline.kernels.training import make_batches, per_sample_losses
    from pipeline.kernels.trajectory import ReverseSweep
    from pipeline.stages.recipes import recipe_for

    layout = RunLayout(settings.output_dir)
    trained = read_json(layout.train_summary(seed))
    schedule = read_schedule(layout.schedule(seed))
    recipe = recipe_for(settings, dataset, seed)
    states = StoredStates(layout, seed, trained["checkpoint_steps"], recipe)
    batches = make_batches(dataset.x_train, dataset.y_train, schedule, settings.train.dtype)

    bar = tqdm(total=schedule.n_steps, desc=f"reverse sweep seed={seed}", unit="step")
    began = time.perf_counter()
    result = ReverseSweep(recipe, settings.influence.objective).run(
        states, states.steps, batches, dataset.x_val, dataset.y_val, progress=bar.update
    )
    seconds = time.perf_counter() - began
    bar.close()
    train_loss = per_sample_losses(recipe, states[states.steps[-1]], dataset.x_train, dataset.y_train)

    table = scores_table(np.arange(dataset.n_train), dataset.y_train, result.influence, result.input_grad, train_loss, part_metadata(settings, seed))
    write_table(table, layout.score_part(METHOD, seed, 0))
    summary = {
        "seed": seed,
        "objective": settings.influence.objective,
        "objective_value": result.objective,
        "seconds": round(seconds, 4),
        "seconds_over_training": round(seconds / max(trained["compute_seconds"], 1e-9), 3),
        "replay_max_abs_error": result.replay_error,
        "n_samples": dataset.n_train,
        "parts": 1,
    }
    write_json(layout.score_summary(METHOD, seed), summary)
    return summary
