"""Stage `train`: one Ray task per seed trains the model functionally and records its trajectory:
schedule.parquet, checkpoints/step=<t>.npz (t = 0 and every influence.checkpoint_every steps, and the
last step), then _summary.json, whose presence marks the seed as done (a rerun skips it)."""

from __future__ import annotations

import time
from typing import Any

from pipeline import cluster
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout


def run(settings: Settings, dataset_ref: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Train every seed not yet trained in this output dir; returns {seed: summary}."""
    layout = RunLayout(settings.output_dir)
    todo = [s for s in settings.train.seeds if not layout.train_summary(s).exists()]
    cluster.run_tasks(train_seed, [(settings, dataset_ref, s) for s in todo], options, desc="train (seeds)")
    return {str(s): read_json(layout.train_summary(s)) for s in settings.train.seeds}


def train_seed(settings: Settings, dataset: Dataset, seed: int) -> dict[str, Any]:
    """Ray task body: train one seed, write its trajectory and summary."""
    import numpy as np
    import tensorflow as tf
    from ray.experimental.tqdm_ray import tqdm

    from pipeline.io.checkpoints import save_state
    from pipeline.io.tables import write_schedule
    from pipeline.kernels.schedule import checkpoint_steps
    from pipeline.kernels.training import make_batches, train
    from pipeline.stages.recipes import recipe_for, schedule_for

    layout = RunLayout(settings.output_dir)
    schedule = schedule_for(settings, dataset, seed)
    recipe = recipe_for(settings, dataset, seed)
    stored = checkpoint_steps(schedule.n_steps, settings.influence.checkpoint_every)
    names = recipe.state_names()
    write_schedule(layout.schedule(seed), schedule)
    batches = make_batches(dataset.x_train, dataset.y_train, schedule, settings.train.dtype)

    io_seconds = 0.0

    def save(step: int, state: Any) -> None:
        nonlocal io_seconds
        began = time.perf_counter()
        save_state(layout.checkpoint(seed, step), names, [np.asarray(t) for t in recipe.flatten(state)])
        io_seconds += time.perf_counter() - began

    bar = tqdm(total=schedule.n_steps, desc=f"train seed={seed}", unit="step")
    began = time.perf_counter()
    final = train(recipe, recipe.initial_state(), batches, stored, save, progress=bar.update)
    seconds = time.perf_counter() - began
    bar.close()
    val_loss, val_accuracy = recipe.evaluate(final, tf.constant(dataset.x_val, recipe.dtype), tf.constant(dataset.y_val), settings.train.loss)
    summary = {
        "seed": seed,
        "n_steps": schedule.n_steps,
        "checkpoint_steps": stored,
        "seconds": round(seconds, 4),
        "compute_seconds": round(seconds - io_seconds, 4),
        "val_loss": float(val_loss),
        "val_accuracy": float(val_accuracy),
    }
    write_json(layout.train_summary(seed), summary)
    return summary
