"""Per-query attribution, run by stage `score` when influence.queries is per_sample, per_class or groups:
for every query q (one validation sample, or the mean over one class or one group of dataset.g_val) and
training sample i, dE_q/d eps_i.

The queries are cut into batches of influence.query_batch; one Ray task per (seed, query batch) runs one
reverse sweep carrying the batch's queries (kernels.trajectory.ReverseSweep.run_queries) and writes the
batch's part atomically under queries/method=trajectory/seed=<s>/ (io.queries). A rerun recomputes only
the batches whose part is missing or bad (bad ones are quarantined). Stage aggregate then streams the
parts into query_top.parquet (`write_query_top`).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from pipeline import __version__, cluster
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError, DataError
from pipeline.io import arguments
from pipeline.io.files import write_json
from pipeline.io.fingerprint import fingerprint
from pipeline.io.layout import RunLayout
from pipeline.io.queries import QUERY_SIGN_CONVENTION, batches, parts_to_compute, part_metadata, query_arguments, query_table, top_k, write_query_part, write_top
from pipeline.io import features
from pipeline.io.parts import Shard, split
from pipeline.kernels import trak_scores
from pipeline.methods import REGISTRY
from pipeline.stages import score_trak
from pipeline.stages.context import RunContext


def query_ids(settings: Settings, dataset: Dataset) -> np.ndarray:
    """[Q] int64: validation sample ids (per_sample), classes or groups with a validation sample
    (per_class, groups), influence.query_ids or all of them. ConfigError for an id the validation set
    does not have."""
    i = settings.influence
    if i.queries in ("per_class", "groups"):
        labels, what = _query_labels(i.queries, dataset)
        present = np.unique(labels)
        ids = present if i.query_ids is None else np.asarray(i.query_ids)
        absent = np.setdiff1d(ids, present)
        if absent.size:
            shown = present.tolist() if present.size <= 20 else f"{present.size} of them, {present[0]}..{present[-1]}"
            raise ConfigError(f"influence.query_ids: {what} {absent[0]} has no validation sample ({what}es present: {shown})")
    else:
        ids = np.arange(dataset.n_val) if i.query_ids is None else np.asarray(i.query_ids)
        bad = ids[(ids < 0) | (ids >= dataset.n_val)]
        if bad.size:
            raise ConfigError(f"influence.query_ids: {int(bad[0])} is not a validation sample id (0..{dataset.n_val - 1})")
    return ids.astype(np.int64)


def _query_labels(queries: str, dataset: Dataset) -> tuple[np.ndarray, str]:
    """[V] the label that assigns each validation sample to a query (its class or group), and its name."""
    if queries == "per_class":
        if dataset.task != "classification":
            raise ConfigError(f"influence.queries=per_class: needs task=classification (got {dataset.task})")
        return dataset.y_val, "class"
    if dataset.g_val is None:
        raise ConfigError("influence.queries=groups: the data has no validation groups (npz array g_val, or parquet data.group_column)")
    return dataset.g_val, "group"


def query_weights(queries: str, dataset: Dataset, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows [V'], weights [Q, V']) with E_q = sum_v weights[q, v] objective(row v): one-hot
    (per_sample), or 1/|members| on the rows of the class (per_class) or group (groups). Only the rows a
    query uses are kept."""
    if queries == "per_sample":
        return ids, np.eye(ids.size)
    labels, _ = _query_labels(queries, dataset)
    rows = np.flatnonzero(np.isin(labels, ids))
    member = labels[rows][None, :] == ids[:, None]
    return rows, member / member.sum(axis=1, keepdims=True)


def claim(settings: Settings, dataset: Dataset, layout: RunLayout, trajectory_key: str) -> str | None:
    """Record (or check) the queries' arguments; returns their key, None with influence.queries=mean.
    With groups, the key holds a fingerprint of g_val (new groups are new queries). A conflict is
    refused as for scores; output.overwrite replaces the method's query parts and query_top.parquet."""
    if settings.influence.queries == "mean":
        return None
    method = settings.influence.method
    groups = fingerprint({"g_val": dataset.g_val}) if settings.influence.queries == "groups" and dataset.g_val is not None else None
    recorded = query_arguments(settings, trajectory_key, groups)
    what = f"{method} {settings.influence.queries} queries"
    arguments.claim(layout.root, layout.query_arguments(method), recorded, what, settings.output.overwrite, [layout.queries_method_dir(method), layout.query_top])
    return arguments.key_of(recorded)


def run(context: RunContext) -> dict[str, Any]:
    """Compute every seed's missing or bad query batches; returns {"queries", "n_queries", "parts",
    "wall_seconds" (of all the batch tasks, in parallel over the workers), "seeds"}."""
    settings, layout, dataset = context.settings, context.layout, context.dataset
    method, n_train = settings.influence.method, dataset.n_train
    plan = batches(query_ids(settings, dataset), settings.influence.query_batch)
    n_queries = int(sum(ids.size for _, ids in plan))
    todo = [(seed, batch) for seed in settings.train.seeds for batch in parts_to_compute(layout, method, seed, plan, n_train, context.queries_key)]
    began = time.perf_counter()
    if REGISTRY[method].features:
        shards = split(n_train, settings.influence.shard_size)
        if todo:
            score_trak.prepare(context, shards, per_sample=True)
        keys = (context.queries_key, score_trak.features_key(settings, context.trajectory_key), context.score_key)
        calls = [(settings, context.dataset_ref, seed, number, ids, shards, *keys) for seed, (number, ids) in todo]
        options = {**context.task_options, "num_gpus": 0}  # NumPy only
        done = cluster.run_tasks(score_features_query_batch, calls, options, desc="queries (seed, batch)")
    else:
        calls = [(settings, context.dataset_ref, seed, number, ids, context.queries_key) for seed, (number, ids) in todo]
        done = cluster.run_tasks(score_query_batch, calls, context.task_options, desc="queries (seed, batch)")
    wall_seconds = time.perf_counter() - began
    summaries = {}
    for seed in settings.train.seeds:
        missing = parts_to_compute(layout, method, seed, plan, n_train, context.queries_key, repair=False)
        if missing:
            raise DataError(f"{layout.queries_dir(method, seed)}: query parts {[b[0] for b in missing]} still missing after scoring")
        computed = [d for d in done if d["seed"] == seed]
        summary = {
            "seed": seed,
            "queries": settings.influence.queries,
            "n_queries": n_queries,
            "parts": len(plan),
            "parts_computed": len(computed),
            "seconds": round(sum(d["seconds"] for d in computed), 4),
            # per worker: the queries of this run's batches over the summed seconds of their sweeps
            "queries_per_second": round(sum(d["n_queries"] for d in computed) / sum(d["seconds"] for d in computed), 4) if computed else None,
            "replayed": any(d["replayed"] for d in computed) if computed else None,
        }
        write_json(layout.query_summary(method, seed), summary)
        summaries[str(seed)] = summary
    return {"queries": settings.influence.queries, "n_queries": n_queries, "parts": len(plan), "wall_seconds": round(wall_seconds, 4), "seeds": summaries}


@functools.lru_cache(maxsize=8)
def _sweep(recipe: Any) -> Any:
    """One ReverseSweep per (cached) recipe in a worker, so its compiled functions are traced once."""
    from pipeline.kernels.trajectory import ReverseSweep

    return ReverseSweep(recipe)


def score_query_batch(settings: Settings, dataset: Dataset, seed: int, number: int, ids: np.ndarray, key: str) -> dict[str, Any]:
    """Ray task body: one reverse sweep carrying the queries `ids` of batch `number`, written as its part."""
    import tensorflow as tf

    from pipeline.io.checkpoints import StoredStates, retrain_hint
    from pipeline.io.files import read_json
    from pipeline.io.tables import read_schedule
    from pipeline.kernels.training import as_inputs, as_targets, make_batches
    from pipeline.stages.recipes import kept_states, recipe_for

    layout, influence = RunLayout(settings.output_dir), settings.influence
    trained = read_json(layout.train_summary(seed))
    schedule = read_schedule(layout.schedule(seed))
    recipe = recipe_for(settings, dataset, seed)
    states = StoredStates(lambda step: layout.checkpoint(seed, step), trained["checkpoint_steps"], recipe, retrain_hint(seed))
    train_batches = make_batches(list(dataset.x_train.values()), dataset.y_train, schedule, settings.train.dtype, recipe.task)
    rows, weights = query_weights(influence.queries, dataset, ids)
    x_val = as_inputs([a[rows] for a in dataset.x_val.values()], recipe.dtype)
    y_val = as_targets(dataset.y_val[rows], recipe.task, recipe.dtype)
    every_state = kept_states(settings, layout, seed, recipe, schedule.n_steps)
    began = time.perf_counter()
    result = _sweep(recipe).run_queries(
        states, states.steps, train_batches, x_val, y_val, tf.constant(weights, recipe.dtype), input_grad=influence.query_input_grad, every_state=every_state
    )
    seconds = time.perf_counter() - began
    input_grad = dict(zip(dataset.input_names, result.input_grad))
    table = query_table(ids, result.influence, input_grad, part_metadata(settings, seed, key))
    write_query_part(table, layout.query_part(influence.method, seed, number), dataset.n_train)
    return {"seed": seed, "batch": number, "n_queries": int(ids.size), "seconds": seconds, "replayed": every_state is None or every_state.damaged is not None, "objective": result.objective.tolist()}


def score_features_query_batch(
    settings: Settings, dataset: Dataset, seed: int, number: int, ids: np.ndarray, shards: list[Shard], key: str, features_key: str, score_key: str
) -> dict[str, Any]:
    """Ray task body (NumPy only) for a features method: the queries `ids` of batch `number` as one matrix
    product per checkpoint and shard, influence[q, i] = mean over checkpoints of -slope_i t_q^T G^-1 phi_i with
    t_q = the query's weights @ the validation samples' features; written as the batch's part."""
    began = time.perf_counter()
    layout, method = RunLayout(settings.output_dir), settings.influence.method
    folder = features.features_dir(layout.root, method, seed)
    validation = features.read_npz(folder / "validation.npz", features_key)
    kernel = features.read_npz(folder / "kernel.npz", score_key)
    if validation is None or "per_sample" not in validation or kernel is None:
        raise DataError(f"{folder}: validation features or kernel missing or of other settings; rerun to recompute them")
    rows, weights = query_weights(settings.influence.queries, dataset, ids)
    n_checkpoints = kernel["inverse"].shape[0]
    influence = np.zeros((ids.size, dataset.n_train))
    for c in range(n_checkpoints):
        targets = weights @ validation["per_sample"][c, rows].astype(np.float64)
        for shard, start, stop in shards:
            part = features.read_shard(folder, shard)
            influence[:, start:stop] += trak_scores.scores(part.phi[c], part.slope[c], kernel["inverse"][c], targets) / n_checkpoints
    seconds = time.perf_counter() - began
    write_query_part(query_table(ids, influence, {}, part_metadata(settings, seed, key)), layout.query_part(method, seed, number), dataset.n_train)
    return {"seed": seed, "batch": number, "n_queries": int(ids.size), "seconds": seconds, "replayed": False}


def write_query_top(context: RunContext) -> dict[str, Any]:
    """query_top.parquet from the query parts of every seed of this run, one query batch at a time
    (io.queries.top_k); influence is the mean over seeds. Returns {"rows", "k"}."""
    settings, layout, dataset = context.settings, context.layout, context.dataset
    method, n_train, k = settings.influence.method, dataset.n_train, settings.influence.query_top_k
    plan = batches(query_ids(settings, dataset), settings.influence.query_batch)
    for seed in settings.train.seeds:
        if parts_to_compute(layout, method, seed, plan, n_train, context.queries_key, repair=False):
            raise ConfigError(f"stages: aggregate needs the {settings.influence.queries} query parts of seed {seed}; add score to stages")
    parts_by_seed = [[layout.query_part(method, seed, number) for number, _ in plan] for seed in settings.train.seeds]
    metadata = {
        "sign_convention": QUERY_SIGN_CONVENTION,
        "package_version": __version__,
        "queries": settings.influence.queries,
        "method": method,
        "seeds": ",".join(map(str, settings.train.seeds)),
        "artifact_key": context.queries_key,
    }
    rows = write_top(top_k(parts_by_seed, n_train, k), layout.query_top, metadata)
    return {"rows": rows, "k": min(k, n_train)}
