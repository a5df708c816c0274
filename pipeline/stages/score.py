"""Stage `score`: every seed's scores for influence.method, as Parquet parts under
scores/method=<m>/seed=<s>/. Sweep methods (trajectory, truncated) write one part per seed from one Ray
task; sharded methods (stages.score_sharded) one part per training-set shard from a pool of actors.

Resume checks what it skips: every expected part must read back with the current scores key and exactly
its shard's sample_ids. A bad part is renamed aside (.part-<n>.parquet.corrupt) and recomputed; parts that belong to no
shard of the current layout are renamed aside too. _summary.json only records timings.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline import cluster
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError, DataError
from pipeline.io.checkpoints import retrain_hint
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.parts import part_metadata, parts_to_compute, split, whole
from pipeline.methods import REGISTRY
from pipeline.stages import queries, score_sharded, score_trak
from pipeline.stages.context import RunContext

def run(context: RunContext) -> dict[str, Any]:
    """Score every seed's missing or bad parts; returns {"method", "seeds": {seed: summary}}."""
    settings, layout = context.settings, context.layout
    method = REGISTRY[settings.influence.method]
    for seed in settings.train.seeds:
        if not layout.train_summary(seed).exists():
            raise ConfigError(f"stages: score needs the trained trajectory of seed {seed} in {layout.root}; add train to stages")
    shards = whole(context.dataset.n_train) if method.sweep else split(context.dataset.n_train, settings.influence.shard_size)
    todo = [(seed, shard) for seed in settings.train.seeds for shard in parts_to_compute(layout, method.name, seed, shards, context.score_key)]
    features = None
    if method.sweep:
        calls = [(settings, context.dataset_ref, seed, context.score_key) for seed, _ in todo]
        cluster.run_tasks(score_seed, calls, context.task_options, desc=f"score {method.name} (seeds)")
    elif method.features:
        features = score_trak.run(context, todo, shards) if todo else None
    elif todo:
        score_sharded.score_shards(context, todo)
    summaries = {}
    for seed in settings.train.seeds:
        missing = parts_to_compute(layout, method.name, seed, shards, context.score_key, repair=False)
        if missing:
            raise DataError(f"{layout.scores_dir(method.name, seed)}: parts {[s[0] for s in missing]} still missing after scoring")
        summary_path = layout.score_summary(method.name, seed)
        summary = read_json(summary_path) if summary_path.exists() else {}
        summary.update({"seed": seed, "n_samples": context.dataset.n_train, "parts": len(shards)})
        write_json(summary_path, summary)
        summaries[str(seed)] = summary
    details: dict[str, Any] = {"method": method.name, "seeds": summaries}
    if features is not None:
        details["features"] = features
    if settings.influence.queries != "mean":
        details["queries"] = queries.run(context)
    return details


def steps_per_epoch(schedule: Any) -> int:
    """Steps of one epoch of a schedule: those until a sample is used for the second time."""
    seen = np.zeros(int(schedule.index.max()) + 1, dtype=bool)
    for t in range(schedule.n_steps):
        batch = schedule.batch(t)
        if seen[batch].any():
            return t
        seen[batch] = True
    return schedule.n_steps


def score_seed(settings: Settings, dataset: Dataset, seed: int, key: str) -> dict[str, Any]:
    """Ray task body: exact hypergradients of one seed (trajectory, or truncated to the last
    influence.horizon steps), written as its single part."""
    from ray.experimental.tqdm_ray import tqdm

    from pipeline.io.checkpoints import StoredStates
    from pipeline.io.tables import read_schedule, scores_table, write_table
    from pipeline.kernels.training import as_inputs, as_targets, make_batches, per_sample_losses
    from pipeline.kernels.trajectory import ReverseSweep
    from pipeline.stages.recipes import kept_states, recipe_for

    layout = RunLayout(settings.output_dir)
    trained = read_json(layout.train_summary(seed))
    schedule = read_schedule(layout.schedule(seed))
    recipe = recipe_for(settings, dataset, seed)
    states = StoredStates(lambda step: layout.checkpoint(seed, step), trained["checkpoint_steps"], recipe, retrain_hint(seed))
    x_train = list(dataset.x_train.values())
    batches = make_batches(x_train, dataset.y_train, schedule, settings.train.dtype, recipe.task)
    x_val, y_val = as_inputs(list(dataset.x_val.values()), recipe.dtype), as_targets(dataset.y_val, recipe.task, recipe.dtype)

    method = settings.influence.method
    horizon = None if method == "trajectory" else settings.influence.horizon or steps_per_epoch(schedule)
    every_state = kept_states(settings, layout, seed, recipe, schedule.n_steps)
    bar = tqdm(total=min(schedule.n_steps, horizon or schedule.n_steps), desc=f"reverse sweep seed={seed}", unit="step")
    began, began_cpu = time.perf_counter(), time.process_time()
    result = ReverseSweep(recipe).run(states, states.steps, batches, x_val, y_val, progress=bar.update, horizon=horizon, every_state=every_state)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
    bar.close()
    train_loss = per_sample_losses(recipe, states[states.steps[-1]], x_train, dataset.y_train)
    input_grad = dict(zip(dataset.input_names, result.input_grad))
    table = scores_table(
        np.arange(dataset.n_train), dataset.y_train, dataset.task, result.influence, input_grad, train_loss, part_metadata(settings, seed, key)
    )
    write_table(table, layout.score_part(method, seed, 0))
    summary = {
        "seed": seed,
        "objective": settings.influence.objective,
        "objective_value": result.objective,
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu_seconds, 4),
        "seconds_over_training": round(seconds / max(trained["compute_seconds"], 1e-9), 3),
        "replayed": every_state is None or every_state.damaged is not None,
        "replay_max_abs_error": result.replay_error,
        "horizon": horizon,
    }
    write_json(layout.score_summary(method, seed), summary)
    return summary
