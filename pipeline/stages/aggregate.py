"""Stage `aggregate`: combine the scores of all seeds and shards into ranking.parquet.

One row per (method, sample): influence_mean, influence_std (over seeds, population std: 0 with one
seed), n_seeds, input_grad_norm_mean, train_loss_mean, and rank (1 = most harmful = largest
influence_mean). The seeds' agreement (mean pairwise Spearman of their influence) goes to the manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline import __version__, metrics
from pipeline.config import Settings
from pipeline.errors import ConfigError, DataError
from pipeline.io.layout import RunLayout
from pipeline.io.tables import SIGN_CONVENTION, write_table

COLUMNS = ["method", "seed", "sample_id", "label", "influence", "input_grad_norm", "train_loss"]


def read_scores(layout: RunLayout) -> pa.Table:
    """Every score part of the run (all methods, seeds and shards), without the input_grad column."""
    if not (layout.root / "scores").is_dir():
        raise ConfigError(f"stages: aggregate needs scores in {layout.root}; add score to stages")
    dataset = pads.dataset(layout.root / "scores", format="parquet", partitioning="hive")
    return dataset.to_table(columns=COLUMNS)


def run(settings: Settings, n_train: int) -> dict[str, Any]:
    layout = RunLayout(settings.output_dir)
    scores = read_scores(layout)
    _check_complete(scores, settings.train.seeds, n_train)
    ranking = rank(scores)
    write_table(ranking.replace_schema_metadata({"sign_convention": SIGN_CONVENTION, "package_version": __version__, "config_hash": settings.result_hash()}), layout.ranking)
    agreement = {}
    for method in sorted(set(scores["method"].to_pylist())):
        rows = scores.filter(pc.equal(scores["method"], method)).sort_by([("seed", "ascending"), ("sample_id", "ascending")])
        n_seeds = len(set(rows["seed"].to_pylist()))
        agreement[method] = metrics.mean_pairwise_spearman(rows["influence"].to_numpy().reshape(n_seeds, -1))
    return {"rows": ranking.num_rows, "seed_agreement": agreement}


def _check_complete(scores: pa.Table, seeds: tuple[int, ...], n_train: int) -> None:
    """Every (method, seed) must hold each sample_id 0..n_train-1 exactly once: nothing lost or doubled."""
    for method in sorted(set(scores["method"].to_pylist())):
        for seed in seeds:
            part = scores.filter(pc.and_(pc.equal(scores["method"], method), pc.equal(scores["seed"], seed)))
            ids = np.sort(part["sample_id"].to_numpy())
            if ids.size != n_train or not np.array_equal(ids, np.arange(n_train)):
                raise DataError(
                    f"scores/method={method}/seed={seed}: holds {ids.size} rows ({np.unique(ids).size} distinct sample_ids) "
                    f"for {n_train} training samples; rerun the score stage"
                )


def rank(scores: pa.Table) -> pa.Table:
    """Group the per-seed rows by (method, sample_id) and rank within each method, most harmful first."""
    grouped = scores.group_by(["method", "sample_id", "label"]).aggregate(
        [
            ("influence", "mean"),
            ("influence", "stddev", pc.VarianceOptions(ddof=0)),
            ("seed", "count"),
            ("input_grad_norm", "mean"),
            ("train_loss", "mean"),
        ]
    )
    grouped = grouped.rename_columns(
        ["method", "sample_id", "label", "influence_mean", "influence_std", "n_seeds", "input_grad_norm_mean", "train_loss_mean"]
    ).sort_by([("method", "ascending"), ("influence_mean", "descending"), ("sample_id", "ascending")])
    methods = grouped["method"].to_numpy(zero_copy_only=False)
    starts = {m: int(np.argmax(methods == m)) for m in set(methods)}
    ranks = np.arange(len(methods)) - np.array([starts[m] for m in methods]) + 1
    return grouped.append_column("rank", pa.array(ranks, pa.int64()))
