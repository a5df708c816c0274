"""The score stage's task for the sweep methods (trajectory, truncated): one reverse sweep over a seed's recorded
run, written as the seed's single part. Runs in workers (imports TensorFlow)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.cluster import worker_bar
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.io.files import write_json
from pipeline.io.parts import part_metadata
from pipeline.io.tables import scores_table, write_table
from pipeline.kernels.schedule import Schedule
from pipeline.kernels.training import per_sample_losses
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.runtime.seed import SeedRun


def steps_per_epoch(schedule: Schedule) -> int:
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
    influence.horizon steps; with dE/d x_i unless influence.input_grad=false), written as its single part."""
    run = SeedRun.load(settings, dataset, seed)
    recipe, schedule, states, layout = run.recipe, run.schedule, run.states, run.layout
    batches, x_val, y_val = run.batches(), run.x_val, run.y_val
    method = settings.influence.method
    horizon = None if method == "trajectory" else settings.influence.horizon or steps_per_epoch(schedule)
    every_state = run.kept_states()
    bar = worker_bar(min(schedule.n_steps, horizon or schedule.n_steps), f"reverse sweep seed={seed}", "step")
    began, began_cpu = time.perf_counter(), time.process_time()
    result = ReverseSweep(recipe).run(
        states,
        states.steps,
        batches,
        x_val,
        y_val,
        progress=bar.update,
        horizon=horizon,
        every_state=every_state,
        input_grad=settings.influence.input_grad,
    )
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
    bar.close()
    train_loss = per_sample_losses(recipe, states[states.steps[-1]], list(dataset.x_train.values()), dataset.y_train)
    input_grad = dict(zip(dataset.input_names, result.input_grad)) if settings.influence.input_grad else None
    table = scores_table(
        np.arange(dataset.n_train),
        dataset.y_train,
        dataset.task,
        result.influence,
        input_grad,
        train_loss,
        part_metadata(settings, seed, key),
    )
    write_table(table, layout.score_part(method, seed, 0))
    summary = {
        "seed": seed,
        "objective": settings.influence.objective,
        "objective_value": result.objective,
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu_seconds, 4),
        "seconds_over_training": round(seconds / max(run.summary["compute_seconds"], 1e-9), 3),
        "replayed": every_state is None or every_state.damaged is not None,
        "replay_max_abs_error": result.replay_error,
        "horizon": horizon,
    }
    write_json(layout.score_summary(method, seed), summary)
    return summary
