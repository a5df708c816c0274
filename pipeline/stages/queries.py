"""Per-query attribution, run by stage `score` when influence.queries is per_sample, per_class or groups:
for every query q (one validation sample, or the mean over one class or one group of dataset.g_val) and
training sample i, dE_q/d eps_i.

The queries are cut into batches of influence.query_batch; one Ray task per (seed, query batch) runs one
reverse sweep carrying the batch's queries (kernels.trajectory.ReverseSweep.run_queries) and writes the
batch's part atomically under queries/method=trajectory/seed=<s>/ (io.queries). A rerun recomputes only
the batches whose part is missing or bad (bad ones are quarantined). One more task writes the first seed's
predictions of the queries' validation rows, which the report shows (`predict`). Stage aggregate then streams the
parts into query_top.parquet (`write_query_top`).

Driver side; the task bodies are runtime.queries (sweep), runtime.feature_queries (features methods, NumPy) and
runtime.predict.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline import __version__, cluster, runtime
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError, DataError
from pipeline.io import arguments
from pipeline.io.files import write_json
from pipeline.io.fingerprint import fingerprint
from pipeline.io.layout import RunLayout
from pipeline.io.parts import split
from pipeline.io.predictions import check_predictions, predictions_path
from pipeline.io.queries import (
    QUERY_SIGN_CONVENTION,
    Batch,
    batches,
    parts_to_compute,
    query_arguments,
    top_k,
    write_top,
)
from pipeline.methods import REGISTRY
from pipeline.results import QuerySeed, QueryTop, ScoreQueries
from pipeline.runtime.jobs import query_labels, query_weights
from pipeline.stages import score_trak
from pipeline.stages.context import RunContext


def query_ids(settings: Settings, dataset: Dataset) -> np.ndarray:
    """[Q] int64: validation sample ids (per_sample), classes or groups with a validation sample
    (per_class, groups), influence.query_ids or all of them. ConfigError for an id the validation set
    does not have."""
    i = settings.influence
    if i.queries in ("per_class", "groups"):
        labels, what = query_labels(i.queries, dataset)
        present = np.unique(labels)
        ids = present if i.query_ids is None else np.asarray(i.query_ids)
        absent = np.setdiff1d(ids, present)
        if absent.size:
            shown = present.tolist() if present.size <= 20 else f"{present.size} of them, {present[0]}..{present[-1]}"
            raise ConfigError(
                f"influence.query_ids: {what} {absent[0]} has no validation sample ({what}es present: {shown})"
            )
    else:
        ids = np.arange(dataset.n_val) if i.query_ids is None else np.asarray(i.query_ids)
        bad = ids[(ids < 0) | (ids >= dataset.n_val)]
        if bad.size:
            raise ConfigError(
                f"influence.query_ids: {int(bad[0])} is not a validation sample id (0..{dataset.n_val - 1})"
            )
    return ids.astype(np.int64)


def claim(settings: Settings, dataset: Dataset, layout: RunLayout, trajectory_key: str) -> str | None:
    """Record (or check) the queries' arguments; returns their key, None with influence.queries=mean.
    With groups, the key holds a fingerprint of g_val (new groups are new queries). A conflict is
    refused as for scores; output.overwrite replaces the method's query parts and query_top.parquet."""
    if settings.influence.queries == "mean":
        return None
    method = settings.influence.method
    groups = (
        fingerprint({"g_val": dataset.g_val})
        if settings.influence.queries == "groups" and dataset.g_val is not None
        else None
    )
    recorded = query_arguments(settings, trajectory_key, groups)
    what = f"{method} {settings.influence.queries} queries"
    arguments.claim(
        layout.root,
        layout.query_arguments(method),
        recorded,
        what,
        settings.output.overwrite,
        [layout.queries_method_dir(method), layout.query_top],
    )
    return arguments.key_of(recorded)


def run(context: RunContext) -> ScoreQueries:
    """Compute every seed's missing or bad query batches; returns the queries, their parts, the wall seconds of all
    the batch tasks (in parallel over the workers) and each seed's summary (also written to its _summary.json)."""
    settings, layout, dataset = context.settings, context.layout, context.dataset
    method, n_train = settings.influence.method, dataset.n_train
    plan = batches(query_ids(settings, dataset), settings.influence.query_batch)
    n_queries = int(sum(ids.size for _, ids in plan))
    todo = [
        (seed, batch)
        for seed in settings.train.seeds
        for batch in parts_to_compute(layout, method, seed, plan, n_train, context.require_queries_key())
    ]
    began = time.perf_counter()
    if REGISTRY[method].features:
        shards = split(n_train, settings.influence.shard_size)
        if todo:
            score_trak.prepare(context, shards, per_sample=True)
        keys = (
            context.require_queries_key(),
            arguments.features_key(settings, context.trajectory_key),
            context.score_key,
        )
        calls: list[tuple[Any, ...]] = [
            (settings, context.dataset_ref, seed, number, ids, shards, *keys) for seed, (number, ids) in todo
        ]
        options = {**context.task_options, "num_gpus": 0}  # NumPy only
        done = cluster.run_tasks(runtime.score_features_query_batch, calls, options, desc="queries (seed, batch)")
    else:
        calls = [
            (settings, context.dataset_ref, seed, number, ids, context.require_queries_key())
            for seed, (number, ids) in todo
        ]
        done = cluster.run_tasks(runtime.score_query_batch, calls, context.task_options, desc="queries (seed, batch)")
    wall_seconds = time.perf_counter() - began
    predict(context, plan)
    summaries = {}
    for seed in settings.train.seeds:
        missing = parts_to_compute(layout, method, seed, plan, n_train, context.require_queries_key(), repair=False)
        if missing:
            raise DataError(
                f"{layout.queries_dir(method, seed)}: query parts {[b[0] for b in missing]} still missing after scoring"
            )
        computed = [d for d in done if d["seed"] == seed]
        summary = QuerySeed(
            seed=seed,
            queries=settings.influence.queries,
            n_queries=n_queries,
            parts=len(plan),
            parts_computed=len(computed),
            seconds=round(sum(d["seconds"] for d in computed), 4),
            # per worker: the queries of this run's batches over the summed seconds of their sweeps
            queries_per_second=round(sum(d["n_queries"] for d in computed) / sum(d["seconds"] for d in computed), 4)
            if computed
            else None,
            replayed=any(d["replayed"] for d in computed) if computed else None,
        )
        write_json(layout.query_summary(method, seed), summary.to_json())
        summaries[str(seed)] = summary
    return ScoreQueries(settings.influence.queries, n_queries, len(plan), round(wall_seconds, 4), summaries)


def predict(context: RunContext, plan: list[Batch]) -> None:
    """The first seed's trained model on every validation row a query uses, written for the report (io.predictions,
    one task, runtime.predict) when missing, bad or of other queries."""
    settings, layout, dataset = context.settings, context.layout, context.dataset
    seed, key = settings.train.seeds[0], context.require_queries_key()
    assert key is not None  # queries are claimed (stages.queries.claim) before they run
    rows = np.unique(query_weights(settings.influence.queries, dataset, np.concatenate([ids for _, ids in plan]))[0])
    path = predictions_path(layout, settings.influence.method, seed)
    problem = check_predictions(path, rows, key)
    if problem is None:
        return
    if problem != "missing":
        print(f"[queries] {path}: {problem}; recomputing")
    cluster.run_tasks(
        runtime.predict_queries,
        [(settings, context.dataset_ref, seed, rows, key)],
        context.task_options,
        desc="queries (predictions)",
    )


def write_query_top(context: RunContext) -> QueryTop:
    """query_top.parquet from the query parts of every seed of this run, one query batch at a time
    (io.queries.top_k); influence is the mean over seeds. Returns its rows and k."""
    settings, layout, dataset = context.settings, context.layout, context.dataset
    method, n_train, k = settings.influence.method, dataset.n_train, settings.influence.query_top_k
    plan = batches(query_ids(settings, dataset), settings.influence.query_batch)
    for seed in settings.train.seeds:
        if parts_to_compute(layout, method, seed, plan, n_train, context.require_queries_key(), repair=False):
            raise ConfigError(
                f"stages: aggregate needs the {settings.influence.queries} query parts of seed {seed}; "
                "add score to stages"
            )
    parts_by_seed = [[layout.query_part(method, seed, number) for number, _ in plan] for seed in settings.train.seeds]
    metadata = {
        "sign_convention": QUERY_SIGN_CONVENTION,
        "package_version": __version__,
        "queries": settings.influence.queries,
        "method": method,
        "seeds": ",".join(map(str, settings.train.seeds)),
        "artifact_key": context.require_queries_key(),
    }
    rows = write_top(top_k(parts_by_seed, n_train, k), layout.query_top, metadata)
    return QueryTop(rows, min(k, n_train))
