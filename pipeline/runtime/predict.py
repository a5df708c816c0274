"""The queries' prediction task: a seed's trained model (its last checkpoint) on the validation rows the run's
queries use, written for the report (io.predictions), which shows them next to each query and reads files only.
Runs in workers (imports TensorFlow)."""

from __future__ import annotations

import numpy as np

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.io.predictions import predictions_path, write_predictions
from pipeline.runtime.seed import SeedRun

PREDICT_CHUNK = 1024  # validation rows per forward pass


def predict_queries(settings: Settings, dataset: Dataset, seed: int, rows: np.ndarray, key: str) -> int:
    """Ray task body: outputs [len(rows), k] of seed's final model on validation rows `rows` (ascending), inference
    mode, as float64, written under the queries key `key`; returns the number of rows."""
    run = SeedRun.load(settings, dataset, seed)
    recipe, state = run.recipe, run.final
    chunks = []
    for start in range(0, rows.size, PREDICT_CHUNK):
        x, _ = run.validation(rows[start : start + PREDICT_CHUNK])
        outputs, _ = recipe.forward(state.trainable, state.non_trainable, x, training=False)
        chunks.append(np.asarray(outputs, np.float64))
    outputs = np.concatenate(chunks).reshape(rows.size, -1)
    write_predictions(predictions_path(run.layout, settings.influence.method, seed), rows, outputs, key, seed)
    return int(rows.size)
