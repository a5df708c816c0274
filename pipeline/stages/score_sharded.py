"""Stage `score` for the sharded methods (called by stages.score.run) (lookahead, tracin, loss, saliency).

The training set is cut into shards of `influence.shard_size` samples; a pool of Ray actors (each loads
TensorFlow, the model and the seed's checkpoints once) scores one shard per call and writes it to
scores/method=<m>/seed=<s>/part-<shard>.parquet under a temporary name, renamed when complete. A shard
whose part exists is skipped, so a rerun resumes; an actor that dies is restarted and its call retried
(`cluster.max_retries`). _summary.json is written when every shard of a seed is there.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray
from ray.util import ActorPool
from tqdm import tqdm

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import DivergenceError
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout

# Test hook: an actor exits abruptly (as if its machine died) the first time it starts this shard number.
KILL_AT_SHARD_ENV = "PIPELINE_KILL_AT_SHARD"


def shards(n_train: int, shard_size: int) -> list[tuple[int, int, int]]:
    """(shard, first sample_id, end sample_id) covering range(n_train) once."""
    return [(i, start, min(start + shard_size, n_train)) for i, start in enumerate(range(0, n_train, shard_size))]


def run(settings: Settings, dataset_ref: Any, n_train: int, options: dict[str, Any]) -> dict[str, Any]:
    """Score every missing shard of every seed; returns {seed: summary}."""
    layout, method = RunLayout(settings.output_dir), settings.influence.method
    todo = [
        (seed, *shard)
        for seed in settings.train.seeds
        if not layout.score_summary(method, seed).exists()
        for shard in shards(n_train, settings.influence.shard_size)
        if not layout.score_part(method, seed, shard[0]).exists()
    ]
    if todo:
        _score_shards(settings, dataset_ref, todo, options)
    for seed in settings.train.seeds:
        if not layout.score_summary(method, seed).exists():
            parts = len(list(layout.scores_dir(method, seed).glob("part-*.parquet")))
            write_json(layout.score_summary(method, seed), {"seed": seed, "n_samples": n_train, "parts": parts})
    return {str(s): read_json(layout.score_summary(method, s)) for s in settings.train.seeds}


def _score_shards(settings: Settings, dataset_ref: Any, todo: list[tuple[int, int, int, int]], options: dict[str, Any]) -> None:
    c = settings.cluster
    free_cpus = ray.available_resources().get("CPU", 1.0)
    n_actors = max(1, min(len(todo), int(free_cpus // c.cpus_per_task)))
    env = dict(options["runtime_env"]["env_vars"])
    if KILL_AT_SHARD_ENV in os.environ:
        env[KILL_AT_SHARD_ENV] = os.environ[KILL_AT_SHARD_ENV]
    actor_class = ray.remote(ShardScorer).options(
        num_cpus=options["num_cpus"],
        num_gpus=options["num_gpus"],
        max_restarts=c.max_retries,
        max_task_retries=c.max_retries,
        runtime_env={"env_vars": env},
    )
    actors = [actor_class.remote(settings) for _ in range(n_actors)]
    pool = ActorPool(actors)
    total = sum(stop - start for _, _, start, stop in todo)
    desc = f"score {settings.influence.method} ({n_actors} workers, {len(todo)} shards)"
    try:
        with tqdm(total=total, desc=desc, unit="sample") as bar:
            for done in pool.map_unordered(lambda actor, job: actor.score.remote(dataset_ref, *job), todo):
                bar.update(done["rows"])
    finally:
        for actor in actors:
            ray.kill(actor)


class ShardScorer:
    """Ray actor body: scores shards of any seed of one run; per seed, states are loaded once.

    The dataset comes with each call (a shared object-store reference, read without copying) rather than
    to the constructor, so that a restarted actor never depends on constructor arguments.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.layout = RunLayout(settings.output_dir)
        self.prepared: dict[int, Any] = {}

    def _prepare(self, data: Dataset, seed: int) -> Any:
        """(recipe, score(x, y) -> (influence, input_grad), final state) for one seed."""
        import tensorflow as tf

        from pipeline.io.tables import read_schedule
        from pipeline.kernels.per_sample import SampleScorer
        from pipeline.stages.recipes import recipe_for
        from pipeline.stages.score import StoredStates

        s = self.settings
        recipe = recipe_for(s, data, seed)
        trained = read_json(self.layout.train_summary(seed))
        steps = trained["checkpoint_steps"]
        states = StoredStates(self.layout, seed, steps, recipe)
        final = states[steps[-1]]
        scorer = SampleScorer(recipe, s.influence.objective)
        x_val, y_val = tf.constant(data.x_val, recipe.dtype), tf.constant(data.y_val)
        method = s.influence.method
        if method == "lookahead":
            lr = float(read_schedule(self.layout.schedule(seed)).lr[-1])

            def score(x, y):
                return scorer.lookahead(final, x, y, x_val, y_val, lr=lr, first_step=steps[-1], steps=s.influence.steps)
        elif method == "tracin":
            lr = read_schedule(self.layout.schedule(seed)).lr
            checkpoints = scorer.checkpoints(states, steps, lr, data.n_train, x_val, y_val)

            def score(x, y):
                return scorer.tracin(checkpoints, x, y)
        elif method == "loss":

            def score(x, y):
                return scorer.loss(final, x, y)
        else:

            def score(x, y):
                return scorer.saliency(final, x, y)

        return recipe, score, final

    def score(self, dataset: Dataset, seed: int, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Score samples start..stop-1 of `seed` and write their part file; returns {"rows", "seconds"}."""
        import tensorflow as tf

        from pipeline.io.tables import scores_table, write_table
        from pipeline.kernels.training import per_sample_losses
        from pipeline.stages.score import part_metadata

        self._maybe_die(seed, shard)
        began = time.perf_counter()
        if seed not in self.prepared:
            self.prepared[seed] = self._prepare(dataset, seed)
        recipe, score, final = self.prepared[seed]
        s, data = self.settings, dataset
        x, y = data.x_train[start:stop], data.y_train[start:stop]
        chunk = s.influence.batch_size
        results = [score(tf.constant(x[i : i + chunk], recipe.dtype), tf.constant(y[i : i + chunk])) for i in range(0, x.shape[0], chunk)]
        influence = np.concatenate([r[0].numpy() for r in results]).astype(np.float64)
        input_grad = np.concatenate([r[1].numpy() for r in results])
        if not (np.all(np.isfinite(influence)) and np.all(np.isfinite(input_grad))):
            raise DivergenceError(f"{s.influence.method} scores of seed {seed} are NaN/inf in samples {start}..{stop - 1}")
        table = scores_table(np.arange(start, stop), y, influence, input_grad, per_sample_losses(recipe, final, x, y), part_metadata(s, seed))
        write_table(table, self.layout.score_part(s.influence.method, seed, shard))
        return {"rows": stop - start, "seconds": time.perf_counter() - began}

    def _maybe_die(self, seed: int, shard: int) -> None:
        if os.environ.get(KILL_AT_SHARD_ENV) != str(shard):
            return
        marker = self.layout.root / f".killed-seed={seed}-shard={shard}"
        if not marker.exists():
            marker.write_text("")
            os._exit(1)
