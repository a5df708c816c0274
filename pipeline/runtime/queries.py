"""The queries' task for the sweep method: one reverse sweep of a seed carrying one batch of queries
(kernels.trajectory.ReverseSweep.run_queries), written as the batch's part. Runs in workers (imports TensorFlow)."""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.io.queries import part_metadata, query_table, write_query_part
from pipeline.kernels.training import Recipe
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.runtime.jobs import query_weights
from pipeline.runtime.seed import SeedRun


@functools.lru_cache(maxsize=8)
def _sweep(recipe: Recipe) -> ReverseSweep:
    """One ReverseSweep per (cached) recipe in a worker, so its compiled functions are traced once."""
    return ReverseSweep(recipe)


def score_query_batch(
    settings: Settings, dataset: Dataset, seed: int, number: int, ids: np.ndarray, key: str
) -> dict[str, Any]:
    """Ray task body: one reverse sweep carrying the queries `ids` of batch `number`, written as its part."""
    influence = settings.influence
    run = SeedRun.load(settings, dataset, seed)
    recipe, states = run.recipe, run.states
    train_batches = run.batches()
    rows, weights = query_weights(influence.queries, dataset, ids)
    x_val, y_val = run.validation(rows)
    every_state = run.kept_states()
    began = time.perf_counter()
    result = _sweep(recipe).run_queries(
        states,
        states.steps,
        train_batches,
        x_val,
        y_val,
        tf.constant(weights, recipe.dtype),
        input_grad=influence.query_input_grad,
        every_state=every_state,
    )
    seconds = time.perf_counter() - began
    input_grad = dict(zip(dataset.input_names, result.input_grad))
    table = query_table(ids, result.influence, input_grad, part_metadata(settings, seed, key))
    write_query_part(table, run.layout.query_part(influence.method, seed, number), dataset.n_train)
    return {
        "seed": seed,
        "batch": number,
        "n_queries": int(ids.size),
        "seconds": seconds,
        "replayed": every_state is None or every_state.damaged is not None,
        "objective": result.objective.tolist(),
    }
