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
(`run_queries`) are one matrix product per query batch.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from pipeline import cluster
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError, DataError
from pipeline.io import arguments
from pipeline.io import features as store
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.parts import Shard
from pipeline.kernels import trak_scores
from pipeline.stages.context import RunContext

FEATURE_SETTINGS = ("objective", "proj_dim", "proj_seed", "checkpoints", "feature_dtype")  # influence.* the features depend on


def features_key(settings: Settings, trajectory_key: str) -> str:
    """Key of the features: the trajectory and the settings of FEATURE_SETTINGS (not damping: the kernel is
    reduced again for another damping, the features are reused)."""
    influence = settings.to_dict()["influence"]
    return arguments.key_of({"trajectory_key": trajectory_key, "method": settings.influence.method, **{k: influence[k] for k in FEATURE_SETTINGS}})


def chosen_steps(stored: list[int], count: int | None) -> list[int]:
    """The checkpoints featurized: `count` of the stored steps after step 0, evenly spaced, ending at the last."""
    after_start = [s for s in stored if s > 0]
    count = count or 1
    if count > len(after_start):
        raise ConfigError(
            f"influence.checkpoints={count}: the run stores only {len(after_start)} checkpoints after step 0 "
            "(store more with a smaller train.checkpoint_every)"
        )
    positions = np.round(np.linspace(len(after_start) - 1, 0, count, endpoint=False)[::-1] if count > 1 else [len(after_start) - 1])
    return [after_start[int(p)] for p in positions]


def run(context: RunContext, todo: list[tuple[int, Shard]], shards: list[Shard]) -> dict[str, Any]:
    """Features, kernels and the score parts in `todo`; returns {"computed_shards", "checkpoints", "wall_seconds"}.
    Each seed's score summary gets `seconds` and `cpu_seconds`: the worker (and process) seconds of its features,
    validation and score jobs."""
    began = time.perf_counter()
    settings, layout, method = context.settings, context.layout, context.settings.influence.method
    jobs = [("score", seed, number, start, stop) for seed, (number, start, stop) in todo]
    with worker_pool(context, len(settings.train.seeds) * len(shards)) as pool:  # one start-up for both phases
        prepared = prepare(context, shards, per_sample=False, pool=pool)
        done = prepared.pop("jobs") + list(zip(jobs, _run_jobs(pool, context.dataset_ref, jobs, f"score {method}")))
    for seed in sorted({seed for seed, _ in todo}):
        path = layout.score_summary(method, seed)
        mine = [result for job, result in done if job[1] == seed]
        seconds = {name: round(sum(r[name] for r in mine), 4) for name in ("seconds", "cpu_seconds")}  # worker seconds
        write_json(path, {**(read_json(path) if path.exists() else {}), **seconds})
    return {**prepared, "wall_seconds": round(time.perf_counter() - began, 3)}


def prepare(context: RunContext, shards: list[Shard], per_sample: bool, pool: cluster.ActorPool | None = None) -> dict[str, Any]:
    """Compute the missing or bad features of every seed (per_sample: also one validation row per sample),
    then reduce and invert each seed's kernel. Returns {"computed_shards", "checkpoints", "jobs": [(job, its result)]}."""
    settings, layout = context.settings, context.layout
    method, key = settings.influence.method, features_key(settings, context.trajectory_key)
    jobs: list[tuple] = []
    steps = {}
    for seed in settings.train.seeds:
        steps[seed] = chosen_steps(read_json(layout.train_summary(seed))["checkpoint_steps"], settings.influence.checkpoints)
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
    return {"computed_shards": computed, "checkpoints": {str(s): v for s, v in steps.items()}, "jobs": list(zip(jobs, results))}


def _reduce(context: RunContext, seed: int, shards: list[Shard], key: str) -> None:
    """kernel.npz of one seed: the inverse of sum over shards of Phi^T Phi (+ damping) per checkpoint, and the
    weights inverse @ phi_E. Kept under the score key (it depends on the damping)."""
    folder = store.features_dir(context.layout.root, context.settings.influence.method, seed)
    if store.read_npz(folder / "kernel.npz", context.score_key) is not None:
        return
    gram = sum(store.read_shard(folder, number).gram for number, _, _ in shards)
    validation = store.read_npz(folder / "validation.npz", key)
    if validation is None:
        raise DataError(f"{folder / 'validation.npz'}: missing after the features jobs; rerun to recompute it")
    damping = context.settings.influence.damping
    inverse = np.stack([trak_scores.kernel_inverse(g, damping) for g in gram])
    weights = np.einsum("ckl,cl->ck", inverse, validation["objective"])
    store.write_npz(folder / "kernel.npz", context.score_key, inverse=inverse, weights=weights)


def worker_pool(context: RunContext, n_jobs: int) -> cluster.ActorPool:
    """A pool of TrakWorker actors (one per free CPU, at most n_jobs) with the run's task resources."""
    settings, options = context.settings, context.task_options
    actor = ray.remote(TrakWorker).options(num_cpus=options["num_cpus"], num_gpus=options["num_gpus"], runtime_env=options["runtime_env"])
    arguments = (settings, context.score_key, features_key(settings, context.trajectory_key))
    return cluster.ActorPool(actor, arguments, cluster.pool_size(settings.cluster, max(1, n_jobs)), settings.cluster.max_retries)


def _run_jobs(pool: cluster.ActorPool, dataset_ref: Any, jobs: list[tuple], desc: str) -> list[dict[str, Any]]:
    """Run (kind, seed, ...) jobs on the pool (lost actors are replaced, their jobs resubmitted); results in job order."""
    if not jobs:
        return []
    return pool.run(jobs, lambda worker, job: getattr(worker, job[0]).remote(dataset_ref, *job[1:]), f"{desc} ({pool.n_actors} workers, {len(jobs)} jobs)")


class TrakWorker:
    """Ray actor body: features, validation features and score parts of any seed of one run. One model and
    scorer serve every seed (their functions take the state as an argument, so they are traced once); per
    seed, its states at the chosen checkpoints are loaded once."""

    def __init__(self, settings: Settings, score_key: str, key: str):
        self.settings, self.score_key, self.key = settings, score_key, key
        self.layout = RunLayout(settings.output_dir)
        self.scorer: Any = None  # kernels.trak.TrakScorer, built on first use
        self.seeds: dict[int, Any] = {}
        self.directions: dict[tuple[int, int], Any] = {}  # (seed, checkpoint) -> lifted direction

    def _seed(self, dataset: Dataset, seed: int) -> Any:
        """(recipe, scorer, states at the chosen checkpoints, final state) of `seed`."""
        from pipeline.io.checkpoints import StoredStates, retrain_hint
        from pipeline.kernels.trak import Projection, TrakScorer
        from pipeline.stages.recipes import recipe_for

        s = self.settings
        if self.scorer is None:
            recipe = recipe_for(s, dataset, seed)
            shapes = [tuple(v.shape) for v in recipe.model.trainable_variables]
            self.scorer = TrakScorer(recipe, Projection(shapes, s.influence.proj_dim, s.influence.proj_seed))
        if seed not in self.seeds:
            recipe = self.scorer.recipe
            stored = read_json(self.layout.train_summary(seed))["checkpoint_steps"]
            states = StoredStates(lambda step: self.layout.checkpoint(seed, step), stored, recipe, retrain_hint(seed))
            steps = chosen_steps(stored, s.influence.checkpoints)
            self.seeds[seed] = ([states[t] for t in steps], states[stored[-1]])
        return (self.scorer.recipe, self.scorer, *self.seeds[seed])

    def _direction(self, seed: int, checkpoint: int, weights: np.ndarray) -> Any:
        """P G^-1 phi_E of (seed, checkpoint), lifted once per worker: an actor serves one score key, so the
        weights of a (seed, checkpoint) never change during its life (lifting generates the projection again)."""
        if (seed, checkpoint) not in self.directions:
            self.directions[seed, checkpoint] = self.scorer.projection.lift(weights, self.scorer.recipe.dtype)
        return self.directions[seed, checkpoint]

    def _batches(self, dataset: Dataset, start: int, stop: int, recipe: Any, x: dict[str, np.ndarray] | None = None, y: np.ndarray | None = None):
        from pipeline.kernels.training import as_inputs, as_targets

        x = dataset.x_train if x is None else x
        y = dataset.y_train if y is None else y
        chunk = self.settings.influence.batch_size
        for i in range(start, stop, chunk):
            j = min(i + chunk, stop)
            yield as_inputs([a[i:j] for a in x.values()], recipe.dtype), as_targets(y[i:j], recipe.task, recipe.dtype)

    def features(self, dataset: Dataset, seed: int, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Write the features of samples start..stop-1 of `seed` at every chosen checkpoint."""
        began, began_cpu = time.perf_counter(), time.process_time()
        recipe, scorer, states, _ = self._seed(dataset, seed)
        phis, slopes = [], []
        for state in states:
            parts = [scorer.features(state, x, y) for x, y in self._batches(dataset, start, stop, recipe)]
            phis.append(np.concatenate([p.phi.numpy() for p in parts]))
            slopes.append(np.concatenate([p.slope.numpy() for p in parts]))
        phi, slope = np.stack(phis), np.stack(slopes)
        if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(slope))):
            raise DataError(f"trak features of seed {seed} are NaN/inf in samples {start}..{stop - 1}")
        gram = np.einsum("cnk,cnl->ckl", phi.astype(np.float64), phi.astype(np.float64))
        folder = store.features_dir(self.layout.root, self.settings.influence.method, seed)
        store.write_shard(folder, shard, start, stop, phi.astype(self.settings.influence.feature_dtype), slope, gram, self.key)
        return {"rows": stop - start, "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - began_cpu}

    def validation(self, dataset: Dataset, seed: int, per_sample: bool) -> dict[str, Any]:
        """validation.npz of `seed`: phi_E per chosen checkpoint, and per validation sample if `per_sample`."""
        from pipeline.kernels.training import as_inputs, as_targets

        began, began_cpu = time.perf_counter(), time.process_time()
        recipe, scorer, states, _ = self._seed(dataset, seed)
        x_val, y_val = as_inputs(list(dataset.x_val.values()), recipe.dtype), as_targets(dataset.y_val, recipe.task, recipe.dtype)
        arrays = {"objective": np.stack([scorer.objective_feature(state, x_val, y_val).numpy().astype(np.float64) for state in states])}
        if per_sample:
            rows = [
                np.concatenate([scorer.objective_features(state, x, y).numpy() for x, y in self._batches(dataset, 0, dataset.n_val, recipe, dataset.x_val, dataset.y_val)])
                for state in states
            ]
            arrays["per_sample"] = np.stack(rows).astype(np.float32)
        folder = store.features_dir(self.layout.root, self.settings.influence.method, seed)
        store.write_npz(folder / "validation.npz", self.key, **arrays)
        return {"seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - began_cpu}

    def score(self, dataset: Dataset, seed: int, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Write the score part of samples start..stop-1 of `seed` (influence, self_influence, input_grad, train_loss)."""
        from pipeline.io.parts import part_metadata
        from pipeline.io.tables import scores_table, write_table
        from pipeline.kernels.training import per_sample_losses

        began, began_cpu = time.perf_counter(), time.process_time()
        recipe, scorer, states, final = self._seed(dataset, seed)
        folder = store.features_dir(self.layout.root, self.settings.influence.method, seed)
        kernel = store.read_npz(folder / "kernel.npz", self.score_key)
        if kernel is None:
            raise DataError(f"{folder / 'kernel.npz'}: missing or of other settings; rerun to recompute it")
        shard_features = store.read_shard(folder, shard)
        n_checkpoints = len(states)
        influence = np.zeros(stop - start)
        self_influence = np.zeros(stop - start)
        grads: list[list[np.ndarray]] = []
        for c, state in enumerate(states):
            phi, slope = np.asarray(shard_features.phi[c], np.float64), shard_features.slope[c]
            influence += -slope * (phi @ kernel["weights"][c]) / n_checkpoints
            self_influence += trak_scores.self_influence(phi, slope, kernel["inverse"][c]) / n_checkpoints
            direction = self._direction(seed, c, kernel["weights"][c])
            results = [scorer.directional(state, direction, x, y) for x, y in self._batches(dataset, start, stop, recipe)]
            grads.append([np.concatenate([r[1][k].numpy() for r in results]) for k in range(len(dataset.input_names))])
        input_grad = {name: sum(g[k] for g in grads) / n_checkpoints for k, name in enumerate(dataset.input_names)}
        x = [a[start:stop] for a in dataset.x_train.values()]
        y = dataset.y_train[start:stop]
        if not (np.all(np.isfinite(influence)) and all(np.all(np.isfinite(g)) for g in input_grad.values())):
            raise DataError(f"trak scores of seed {seed} are NaN/inf in samples {start}..{stop - 1}")
        train_loss = per_sample_losses(recipe, final, x, y)
        table = scores_table(
            np.arange(start, stop), y, dataset.task, influence, input_grad, train_loss, part_metadata(self.settings, seed, self.score_key),
            extra={"self_influence": self_influence},
        )
        write_table(table, self.layout.score_part(self.settings.influence.method, seed, shard))
        return {"rows": stop - start, "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - began_cpu}
