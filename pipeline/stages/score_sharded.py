"""Stage `score` for the sharded methods (called by stages.score.run): every method in the registry
that is not exact (lookahead, tracin, loss, saliency, sensitivity).

The training set is cut into shards of `influence.shard_size` samples; a pool of Ray actors (each loads
TensorFlow, the model and the seed's checkpoints once) scores one shard per call and writes it to
scores/method=<m>/seed=<s>/part-<shard>.parquet under a temporary name, renamed when complete. Which
shards to compute is decided by stages.score (validated resume). A shard whose actor, worker or node is lost is
resubmitted to another actor, up to `cluster.max_retries` times (cluster.run_on_actors); a part is only ever
complete or absent, so every sample ends in exactly one part.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from pipeline import cluster
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError, DivergenceError
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.methods import REGISTRY
from pipeline.stages.context import RunContext
from pipeline.io.parts import Shard

# Test hook: an actor exits abruptly (as if its machine died) the first time it starts this shard number.
KILL_AT_SHARD_ENV = "PIPELINE_KILL_AT_SHARD"


def score_shards(context: RunContext, todo: list[tuple[int, Shard]]) -> None:
    """Score the (seed, shard) pairs in `todo` on a pool of actors; each writes its part atomically. The pool size
    and the worker seconds of each seed's shards go to the seeds' score summaries (`actors`, `seconds`)."""
    settings, options = context.settings, context.task_options
    method = settings.influence.method
    env = dict(options["runtime_env"]["env_vars"])
    if KILL_AT_SHARD_ENV in os.environ:
        env[KILL_AT_SHARD_ENV] = os.environ[KILL_AT_SHARD_ENV]
    scorer = ray.remote(ShardScorer).options(
        num_cpus=options["num_cpus"], num_gpus=options["num_gpus"], runtime_env={"env_vars": env}
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


@dataclass
class SeedRun:
    """What a sharded kernel needs of one trained seed (see methods.Method.kernel)."""

    settings: Settings
    recipe: Any
    scorer: Any  # kernels.per_sample.SampleScorer
    states: Any  # io.checkpoints.StoredStates
    steps: list[int]
    final: Any  # TrainState after the last step
    schedule: Any  # kernels.schedule.Schedule
    x_val: tuple[Any, ...]
    y_val: Any
    n_train: int
    output_weights: tuple[float, ...]


class ShardScorer:
    """Ray actor body: scores shards of any seed of one run; per seed, states are loaded once.

    The dataset comes with each call (a shared object-store reference, read without copying) rather than
    to the constructor, so that a restarted actor never depends on constructor arguments.
    """

    def __init__(self, settings: Settings, key: str):
        self.settings = settings
        self.key = key  # the scores key every part is written under
        self.layout = RunLayout(settings.output_dir)
        self.prepared: dict[int, Any] = {}

    def _prepare(self, data: Dataset, seed: int) -> tuple[SeedRun, Any]:
        """(the seed's SeedRun, score(x, y) -> (influence, input_grad)) from the registry's kernel."""
        from pipeline.io.checkpoints import StoredStates, retrain_hint
        from pipeline.io.tables import read_schedule
        from pipeline.kernels.per_sample import SampleScorer
        from pipeline.kernels.training import as_inputs, as_targets
        from pipeline.stages.recipes import output_width, recipe_for

        s = self.settings
        recipe = recipe_for(s, data, seed)
        steps = read_json(self.layout.train_summary(seed))["checkpoint_steps"]
        states = StoredStates(lambda step: self.layout.checkpoint(seed, step), steps, recipe, retrain_hint(seed))
        width = output_width(data)
        weights = s.influence.output_weights or (1.0,) * width
        if len(weights) != width:
            raise ConfigError(f"influence.output_weights has {len(weights)} values; the model has {width} outputs")
        run = SeedRun(
            settings=s,
            recipe=recipe,
            scorer=SampleScorer(recipe),
            states=states,
            steps=steps,
            final=states[steps[-1]],
            schedule=read_schedule(self.layout.schedule(seed)),
            x_val=as_inputs(list(data.x_val.values()), recipe.dtype),
            y_val=as_targets(data.y_val, recipe.task, recipe.dtype),
            n_train=data.n_train,
            output_weights=tuple(weights),
        )
        return run, REGISTRY[s.influence.method].kernel(run)

    def score(self, dataset: Dataset, seed: int, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Score samples start..stop-1 of `seed` and write their part file; returns {"rows", "seconds"}."""
        from pipeline.io.tables import scores_table, write_table
        from pipeline.kernels.training import as_inputs, as_targets, per_sample_losses
        from pipeline.io.parts import part_metadata

        self._maybe_die(seed, shard)
        began, began_cpu = time.perf_counter(), time.process_time()
        if seed not in self.prepared:
            self.prepared[seed] = self._prepare(dataset, seed)
        run, score = self.prepared[seed]
        s, recipe = self.settings, run.recipe
        x = [a[start:stop] for a in dataset.x_train.values()]
        y = dataset.y_train[start:stop]
        chunk = s.influence.batch_size
        results = [
            score(as_inputs([a[i : i + chunk] for a in x], recipe.dtype), as_targets(y[i : i + chunk], recipe.task, recipe.dtype))
            for i in range(0, stop - start, chunk)
        ]
        influence = np.concatenate([r[0].numpy() for r in results]).astype(np.float64)
        input_grad = {name: np.concatenate([r[1][k].numpy() for r in results]) for k, name in enumerate(dataset.input_names)}
        if not (np.all(np.isfinite(influence)) and all(np.all(np.isfinite(g)) for g in input_grad.values())):
            raise DivergenceError(f"{s.influence.method} scores of seed {seed} are NaN/inf in samples {start}..{stop - 1}")
        train_loss = per_sample_losses(recipe, run.final, x, y)
        table = scores_table(np.arange(start, stop), y, dataset.task, influence, input_grad, train_loss, part_metadata(s, seed, self.key))
        write_table(table, self.layout.score_part(s.influence.method, seed, shard))
        return {"rows": stop - start, "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - began_cpu}

    def _maybe_die(self, seed: int, shard: int) -> None:
        if os.environ.get(KILL_AT_SHARD_ENV) != str(shard):
            return
        marker = self.layout.root / f".killed-seed={seed}-shard={shard}"
        if not marker.exists():
            marker.write_text("")
            os._exit(1)
