"""Stage `aggregate`: combine the scores of all seeds and shards into ranking.parquet.

One row per (method, sample), for every method scored from this output.dir's trajectory: label or
target, influence_mean, influence_std (over seeds, population std: 0 with one seed), n_seeds,
input_grad_norm_mean (null where the parts hold no input gradients: influence.input_grad=false),
train_loss_mean, influence_ensemble (the seeds combined by `aggregate.ensemble`, pipeline.ensembles; equal to
influence_mean for `mean`) and rank (1 = most harmful = largest influence_ensemble). The seeds' agreement (mean and
per pair Spearman of their influence) and each seed's scale (root mean square) go to the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import __version__, ensembles, metrics
from pipeline.data import Dataset
from pipeline.errors import ConfigError, DataError
from pipeline.io.files import read_json
from pipeline.io.layout import RunLayout
from pipeline.io.tables import SIGN_CONVENTION, target_array, target_field, write_table
from pipeline.results import AggregateResult, SeedPair
from pipeline.stages import queries
from pipeline.stages.context import RunContext

COLUMNS = ["sample_id", "influence", "input_grad_norm", "train_loss"]


def scored_methods(layout: RunLayout, trajectory_key: str) -> dict[str, str]:
    """method -> scores key, for every method scored from the current trajectory in this output.dir."""
    methods = {}
    for arguments in sorted((layout.root / "scores").glob("method=*/_arguments.json")):
        stored = read_json(arguments)
        if stored.get("arguments", {}).get("trajectory_key") == trajectory_key:
            methods[arguments.parent.name.split("=", 1)[1]] = stored["key"]
    return methods


def read_scores(layout: RunLayout, method: str, seeds: tuple[int, ...], n_train: int) -> pa.Table:
    """Every part of `method` for `seeds` (without input gradients), checked complete: each sample_id
    0..n_train-1 exactly once per seed, nothing lost or doubled."""
    tables = []
    for seed in seeds:
        parts = layout.score_parts(method, seed)
        if not parts:
            raise DataError(f"{layout.scores_dir(method, seed)}: no score parts; rerun with score in stages")
        table = pa.concat_tables([_read_part(part) for part in sorted(parts)])
        table = table.add_column(0, "seed", pa.array(np.full(table.num_rows, seed), pa.int64()))
        ids = np.sort(table["sample_id"].to_numpy())
        if ids.size != n_train or not np.array_equal(ids, np.arange(n_train)):
            raise DataError(
                f"{layout.scores_dir(method, seed)}: holds {ids.size} rows ({np.unique(ids).size} distinct sample_ids) "
                f"for {n_train} training samples; rerun with score in stages to repair it"
            )
        tables.append(table)
    return pa.concat_tables(tables)


def _read_part(path: Path) -> pa.Table:
    """COLUMNS of one part; input_grad_norm as nulls when the part has none (influence.input_grad=false)."""
    names = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in COLUMNS if c in names])
    if "input_grad_norm" not in names:
        nulls = pa.nulls(table.num_rows, pa.float64())
        table = table.add_column(COLUMNS.index("input_grad_norm"), "input_grad_norm", nulls)
    return table


def run(context: RunContext) -> AggregateResult:
    """ranking.parquet over every method scored from this trajectory, each over the seeds it has."""
    layout, settings, dataset = context.layout, context.settings, context.dataset
    methods = scored_methods(layout, context.trajectory_key)
    if settings.influence.method not in methods:
        raise ConfigError(
            f"stages: aggregate needs {settings.influence.method} scores in {layout.root}; add score to stages"
        )
    rankings = []
    agreement: dict[str, float | None] = {}
    pairs: dict[str, tuple[SeedPair, ...]] = {}
    scales: dict[str, dict[str, float]] = {}
    rule = settings.aggregate.ensemble
    for method in methods:
        seeds = tuple(sorted(int(p.name.split("=", 1)[1]) for p in layout.method_dir(method).glob("seed=*")))
        if method == settings.influence.method and not set(settings.train.seeds) <= set(seeds):
            missing = sorted(set(settings.train.seeds) - set(seeds))
            raise ConfigError(f"stages: aggregate needs {method} scores of seed {missing[0]}; add score to stages")
        scores = read_scores(layout, method, seeds, dataset.n_train).sort_by(
            [("seed", "ascending"), ("sample_id", "ascending")]
        )
        per_seed = scores["influence"].to_numpy().reshape(len(seeds), -1)
        rankings.append(rank(scores, method, ensembles.combine(per_seed, rule)))
        agreement[method] = metrics.mean_pairwise_spearman(per_seed)
        pairs[method] = tuple(SeedPair.from_json(p) for p in ensembles.pairwise_spearman(per_seed, list(seeds)))
        scales[method] = {str(seed): float(v) for seed, v in zip(seeds, ensembles.scale(per_seed))}
    ranking = with_targets(pa.concat_tables(rankings), dataset)
    metadata = {
        "sign_convention": SIGN_CONVENTION,
        "package_version": __version__,
        "trajectory_key": context.trajectory_key,
    }
    write_table(ranking.replace_schema_metadata(metadata), layout.ranking)
    return AggregateResult(
        rows=ranking.num_rows,
        methods=tuple(methods),
        ensemble=rule,
        seed_agreement=agreement,
        seed_agreement_pairs=pairs,
        seed_scale=scales,
        query_top=queries.write_query_top(context) if settings.influence.queries != "mean" else None,
    )


def rank(scores: pa.Table, method: str, ensemble: np.ndarray) -> pa.Table:
    """One method's per-seed rows (sorted by seed, then sample_id) grouped by sample_id and ranked by
    `ensemble` [N] (the seeds combined, indexed by sample_id), most harmful (largest) first."""
    grouped = scores.group_by(["sample_id"]).aggregate(
        [
            ("influence", "mean"),
            ("influence", "stddev", pc.VarianceOptions(ddof=0)),
            ("seed", "count"),
            ("input_grad_norm", "mean"),
            ("train_loss", "mean"),
        ]
    )
    grouped = grouped.rename_columns(
        ["sample_id", "influence_mean", "influence_std", "n_seeds", "input_grad_norm_mean", "train_loss_mean"]
    )
    grouped = grouped.append_column(
        "influence_ensemble", pa.array(ensemble[grouped["sample_id"].to_numpy()], pa.float64())
    )
    grouped = grouped.sort_by([("influence_ensemble", "descending"), ("sample_id", "ascending")])
    grouped = grouped.add_column(0, "method", pa.array([method] * grouped.num_rows, pa.string()))
    return grouped.append_column("rank", pa.array(np.arange(1, grouped.num_rows + 1), pa.int64()))


def with_targets(ranking: pa.Table, dataset: Dataset) -> pa.Table:
    """The ranking with each sample's label (classification) or target (regression), after sample_id."""
    field = target_field(dataset.y_train, dataset.task)
    values = target_array(dataset.y_train, dataset.task).take(ranking["sample_id"].combine_chunks())
    return ranking.add_column(ranking.schema.get_field_index("sample_id") + 1, field, values)
