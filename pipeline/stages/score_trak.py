"""Stage `score` for the features methods (trak), called by stages.score.run: a map-reduce over the
training set on the pool of Ray actors the sharded methods use.

1. map: every (seed, shard) writes its projected features phi [C, n, k], loss slopes and its share of the
   kernel Phi^T Phi (io.features); one job per seed writes the validation features (phi_E, and one row per
   validation sample when queries are asked for).
2. reduce (driver, NumPy): per seed and checkpoint, the kernel summed over shards, plus influence.damping,
   is inverted once; weights = inverse @ phi_E go to kernel.npz.
3. score: every (seed, shard) part gets influence = -slope_i phi_E^T G^-1 phi_i and self_influence from its
   features (mean over the C checkpoints), input_grad from one forward-mode pass along P G^-1 phi_E and the
   final model's train_loss, written like every other method's part.

Features are kept in the run directory, so reruns, other dampings and queries reuse them; per-query scores
(stages.queries, runtime.feature_queries) are one matrix product per query batch.

Driver side: the map and score jobs run on runtime.trak_worker.TrakWorker actors; the reduce is NumPy, here.
"""

from __future__ import annotations

import functools
import operator
import time
from typing import Any

import numpy as np
import ray

from pipeline import cluster, runtime
from pipeline.errors import DataError
from pipeline.io import arguments
from pipeline.io import features as store
from pipeline.io.files import read_json, write_json
from pipeline.io.parts import Shard
from pipeline.kernels import trak_scores
from pipeline.results import TrakFeatures
from pipeline.runtime.jobs import chosen_steps
from pipeline.stages.context import RunContext


# influence.* the features depend on
def run(context: RunContext, todo: list[tuple[int, Shard]], shards: list[Shard]) -> TrakFeatures:
    """Features, kernels and the score parts in `todo`; returns what the map-reduce computed and its wall seconds.
    Each seed's score summary gets `seconds` and `cpu_seconds`: the worker (and process) seconds of its features,
    validation and score jobs."""
    began = time.perf_counter()
    settings, layout, method = context.settings, context.layout, context.settings.influence.method
    jobs = [("score", seed, number, start, stop) for seed, (number, start, stop) in todo]
    per_sample = settings.influence.queries != "mean"  # the queries' validation rows too, while the pool is warm
    with worker_pool(context, len(settings.train.seeds) * len(shards)) as pool:  # one start-up for both phases
        prepared = prepare(context, shards, per_sample=per_sample, pool=pool)
        done = prepared.pop("jobs") + list(zip(jobs, _run_jobs(pool, context.dataset_ref, jobs, f"score {method}")))
    for seed in sorted({seed for seed, _ in todo}):
        path = layout.score_summary(method, seed)
        mine = [result for job, result in done if job[1] == seed]
        seconds = {name: round(sum(r[name] for r in mine), 4) for name in ("seconds", "cpu_seconds")}  # worker seconds
        write_json(path, {**(read_json(path) if path.exists() else {}), **seconds})
    checkpoints = {seed: tuple(steps) for seed, steps in prepared["checkpoints"].items()}
    return TrakFeatures(prepared["computed_shards"], checkpoints, round(time.perf_counter() - began, 3))


def prepare(
    context: RunContext, shards: list[Shard], per_sample: bool, pool: cluster.ActorPool | None = None
) -> dict[str, Any]:
    """Compute the missing or bad features of every seed (per_sample: also one validation row per sample),
    then reduce and invert each seed's kernel. Returns {"computed_shards", "checkpoints", "jobs": [(job, its
    result)]}."""
    settings, layout = context.settings, context.layout
    method, key = settings.influence.method, arguments.features_key(settings, context.trajectory_key)
    jobs: list[tuple] = []
    steps = {}
    for seed in settings.train.seeds:
        steps[seed] = chosen_steps(
            read_json(layout.train_summary(seed))["checkpoint_steps"], settings.influence.checkpoints
        )
        folder = store.features_dir(layout.root, method, seed)
        shape = (len(steps[seed]), settings.influence.proj_dim)
        for number, start, stop in shards:
            problem = store.check_shard(folder, number, start, stop, key, shape)
            if problem is not None:
                if problem != "missing":
                    print(f"[score] seed={seed}: features of shard {number} {problem}; recomputing")
                jobs.append(("features", seed, number, start, stop))
        validation = store.read_npz(folder / "validation.npz", key)
        if validation is None or (per_sample and "per_sample" not in validation):
            jobs.append(("validation", seed, per_sample))
    if pool is not None or not jobs:
        results = _run_jobs(pool, context.dataset_ref, jobs, f"features {method}") if pool is not None else []
    else:
        with worker_pool(context, len(jobs)) as own:
            results = _run_jobs(own, context.dataset_ref, jobs, f"features {method}")
    for seed in settings.train.seeds:
        _reduce(context, seed, shards, key)
    computed = sum(job[0] == "features" for job in jobs)
    return {
        "computed_shards": computed,
        "checkpoints": {str(s): v for s, v in steps.items()},
        "jobs": list(zip(jobs, results)),
    }


def _reduce(context: RunContext, seed: int, shards: list[Shard], key: str) -> None:
    """kernel.npz of one seed: the inverse of sum over shards of Phi^T Phi (+ damping) per checkpoint, and the
    weights inverse @ phi_E. Kept under the score key (it depends on the damping)."""
    folder = store.features_dir(context.layout.root, context.settings.influence.method, seed)
    if store.read_npz(folder / "kernel.npz", context.score_key) is not None:
        return
    gram = functools.reduce(operator.add, [store.read_shard(folder, number).gram for number, _, _ in shards])
    validation = store.read_npz(folder / "validation.npz", key)
    if validation is None:
        raise DataError(f"{folder / 'validation.npz'}: missing after the features jobs; rerun to recompute it")
    damping = context.settings.influence.damping
    inverse = np.stack([trak_scores.kernel_inverse(g, damping) for g in gram])
    weights = np.einsum("ckl,cl->ck", inverse, validation["objective"])
    store.write_npz(folder / "kernel.npz", context.score_key, inverse=inverse, weights=weights)


def worker_pool(context: RunContext, n_jobs: int) -> cluster.ActorPool:
    """A pool of TrakWorker actors (runtime.trak_worker; one per free CPU, at most n_jobs) with the run's task
    resources."""
    settings, options = context.settings, context.task_options
    actor: Any = ray.remote(runtime.TrakWorker).options(
        num_cpus=options["num_cpus"], num_gpus=options["num_gpus"], runtime_env=options["runtime_env"]
    )
    actor_arguments = (settings, context.score_key, arguments.features_key(settings, context.trajectory_key))
    return cluster.ActorPool(
        actor, actor_arguments, cluster.pool_size(settings.cluster, max(1, n_jobs)), settings.cluster.max_retries
    )


def _run_jobs(pool: cluster.ActorPool, dataset_ref: Any, jobs: list[tuple], desc: str) -> list[dict[str, Any]]:
    """Run (kind, seed, ...) jobs on the pool (lost actors are replaced, their jobs resubmitted); results in job
    order."""
    if not jobs:
        return []
    return pool.run(
        jobs,
        lambda worker, job: getattr(worker, job[0]).remote(dataset_ref, *job[1:]),
        f"{desc} ({pool.n_actors} workers, {len(jobs)} jobs)",
    )
