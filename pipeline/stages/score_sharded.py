"""Stage `score` for the sharded methods (called by stages.score.run): every method in the registry
that is not exact (lookahead, tracin, loss, saliency, sensitivity).

The training set is cut into shards of `influence.shard_size` samples; a pool of Ray actors (runtime.shard_scorer.
ShardScorer: each loads TensorFlow, the model and the seed's checkpoints once) scores one shard per call and writes it
to scores/method=<m>/seed=<s>/part-<shard>.parquet under a temporary name, renamed when complete. Which shards to
compute is decided by stages.score (validated resume). A shard whose actor, worker or node is lost is resubmitted to
another actor, up to `cluster.max_retries` times (cluster.run_on_actors); a part is only ever complete or absent, so
every sample ends in exactly one part. Driver side.
"""

from __future__ import annotations

from typing import Any

import ray

from pipeline import cluster, runtime
from pipeline.io.files import read_json, write_json
from pipeline.io.parts import Shard
from pipeline.stages.context import RunContext


def score_shards(context: RunContext, todo: list[tuple[int, Shard]]) -> None:
    """Score the (seed, shard) pairs in `todo` on a pool of actors; each writes its part atomically. The pool size
    and the worker seconds of each seed's shards go to the seeds' score summaries (`actors`, `seconds`)."""
    settings, options = context.settings, context.task_options
    method = settings.influence.method
    scorer: Any = ray.remote(runtime.ShardScorer).options(
        num_cpus=options["num_cpus"], num_gpus=options["num_gpus"], runtime_env=options["runtime_env"]
    )
    jobs = [(seed, *shard) for seed, shard in todo]
    n_actors = cluster.pool_size(settings.cluster, len(jobs))
    done = cluster.run_on_actors(
        scorer,
        (settings, context.score_key),
        n_actors,
        jobs,
        lambda actor, job: actor.score.remote(context.dataset_ref, *job),
        settings.cluster.max_retries,
        f"score {method} ({n_actors} actor{'s' * (n_actors > 1)}, {len(jobs)} shards)",
        weight=lambda job: job[3] - job[2],
        unit="sample",
    )
    for seed in sorted({seed for seed, _ in todo}):
        path = context.layout.score_summary(method, seed)
        mine = [result for job, result in zip(jobs, done) if job[0] == seed]
        seconds = {name: round(sum(r[name] for r in mine), 4) for name in ("seconds", "cpu_seconds")}  # worker seconds
        write_json(path, {**(read_json(path) if path.exists() else {}), "actors": n_actors, **seconds})
