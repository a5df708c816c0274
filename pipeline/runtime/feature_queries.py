"""The queries' task for a features method (trak): one batch of queries scored from the stored features and
kernel, written as the batch's part. Runs in workers; NumPy only, so these tasks never load TensorFlow."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import DataError
from pipeline.io import features
from pipeline.io.layout import RunLayout
from pipeline.io.parts import Shard
from pipeline.io.queries import part_metadata, query_table, write_query_part
from pipeline.kernels import trak_scores
from pipeline.runtime.jobs import query_weights


def score_features_query_batch(
    settings: Settings,
    dataset: Dataset,
    seed: int,
    number: int,
    ids: np.ndarray,
    shards: list[Shard],
    key: str,
    features_key: str,
    score_key: str,
) -> dict[str, Any]:
    """Ray task body for a features method: the queries `ids` of batch `number` as one matrix product per checkpoint
    and shard, influence[q, i] = mean over checkpoints of -slope_i t_q^T G^-1 phi_i with t_q = the query's weights @
    the validation samples' features; written as the batch's part."""
    began = time.perf_counter()
    layout, method = RunLayout(settings.output_dir), settings.influence.method
    folder = features.features_dir(layout.root, method, seed)
    validation = features.read_npz(folder / "validation.npz", features_key)
    kernel = features.read_npz(folder / "kernel.npz", score_key)
    if validation is None or "per_sample" not in validation or kernel is None:
        raise DataError(
            f"{folder}: validation features or kernel missing or of other settings; rerun to recompute them"
        )
    rows, weights = query_weights(settings.influence.queries, dataset, ids)
    n_checkpoints = kernel["inverse"].shape[0]
    influence = np.zeros((ids.size, dataset.n_train))
    for c in range(n_checkpoints):
        targets = weights @ validation["per_sample"][c, rows].astype(np.float64)
        for shard, start, stop in shards:
            part = features.read_shard(folder, shard)
            influence[:, start:stop] += (
                trak_scores.scores(part.phi[c], part.slope[c], kernel["inverse"][c], targets) / n_checkpoints
            )
    seconds = time.perf_counter() - began
    write_query_part(
        query_table(ids, influence, {}, part_metadata(settings, seed, key)),
        layout.query_part(method, seed, number),
        dataset.n_train,
    )
    return {"seed": seed, "batch": number, "n_queries": int(ids.size), "seconds": seconds, "replayed": False}
