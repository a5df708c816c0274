"""The score stage's actor for the features methods (trak): the map (features of a shard, validation features) and
the score phase (a shard's part from its features and the reduced kernel) of stages.score_trak's map-reduce.
Runs in Ray actors (imports TensorFlow)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import DataError
from pipeline.io import features as store
from pipeline.io.layout import RunLayout
from pipeline.io.parts import part_metadata
from pipeline.io.tables import scores_table, write_table
from pipeline.kernels import trak_scores
from pipeline.kernels.training import Recipe, TrainState, as_inputs, as_targets, per_sample_losses
from pipeline.kernels.trak import Projection, TrakScorer
from pipeline.runtime.jobs import chosen_steps
from pipeline.runtime.recipes import recipe_for
from pipeline.runtime.seed import SeedRun


class TrakWorker:
    """Ray actor body: features, validation features and score parts of any seed of one run. One model and
    scorer serve every seed (their functions take the state as an argument, so they are traced once); per
    seed, its states at the chosen checkpoints are loaded once."""

    def __init__(self, settings: Settings, score_key: str, key: str):
        self.settings, self.score_key, self.key = settings, score_key, key
        self.layout = RunLayout(settings.output_dir)
        self.scorer: TrakScorer | None = None  # built on first use
        self.seeds: dict[int, tuple[list[TrainState], TrainState]] = {}
        self.directions: dict[tuple[int, int], Any] = {}  # (seed, checkpoint) -> lifted direction

    def _seed(self, dataset: Dataset, seed: int) -> tuple[Recipe, TrakScorer, list[TrainState], TrainState]:
        """(recipe, scorer, states at the chosen checkpoints, final state) of `seed`."""
        s = self.settings
        if self.scorer is None:
            recipe = recipe_for(s, dataset, seed)
            shapes = [tuple(v.shape) for v in recipe.model.trainable_variables]
            self.scorer = TrakScorer(recipe, Projection(shapes, s.influence.proj_dim, s.influence.proj_seed))
        if seed not in self.seeds:
            run = SeedRun.load(s, dataset, seed, recipe=self.scorer.recipe)
            self.seeds[seed] = ([run.states[t] for t in chosen_steps(run.steps, s.influence.checkpoints)], run.final)
        return (self.scorer.recipe, self.scorer, *self.seeds[seed])

    def _direction(self, seed: int, checkpoint: int, weights: np.ndarray) -> Any:
        """P G^-1 phi_E of (seed, checkpoint), lifted once per worker: an actor serves one score key, so the
        weights of a (seed, checkpoint) never change during its life (lifting generates the projection again)."""
        assert self.scorer is not None  # _seed ran first
        if (seed, checkpoint) not in self.directions:
            self.directions[seed, checkpoint] = self.scorer.projection.lift(weights, self.scorer.recipe.dtype)
        return self.directions[seed, checkpoint]

    def _batches(
        self,
        dataset: Dataset,
        start: int,
        stop: int,
        recipe: Recipe,
        x: dict[str, np.ndarray] | None = None,
        y: np.ndarray | None = None,
    ) -> Iterator[tuple[tuple[tf.Tensor, ...], tf.Tensor]]:
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
        store.write_shard(
            folder, shard, start, stop, phi.astype(self.settings.influence.feature_dtype), slope, gram, self.key
        )
        return {
            "rows": stop - start,
            "seconds": time.perf_counter() - began,
            "cpu_seconds": time.process_time() - began_cpu,
        }

    def validation(self, dataset: Dataset, seed: int, per_sample: bool) -> dict[str, Any]:
        """validation.npz of `seed`: phi_E per chosen checkpoint, and per validation sample if `per_sample`."""
        began, began_cpu = time.perf_counter(), time.process_time()
        recipe, scorer, states, _ = self._seed(dataset, seed)
        x_val, y_val = (
            as_inputs(list(dataset.x_val.values()), recipe.dtype),
            as_targets(dataset.y_val, recipe.task, recipe.dtype),
        )
        arrays = {
            "objective": np.stack(
                [scorer.objective_feature(state, x_val, y_val).numpy().astype(np.float64) for state in states]
            )
        }
        if per_sample:
            rows = [
                np.concatenate(
                    [
                        scorer.objective_features(state, x, y).numpy()
                        for x, y in self._batches(dataset, 0, dataset.n_val, recipe, dataset.x_val, dataset.y_val)
                    ]
                )
                for state in states
            ]
            arrays["per_sample"] = np.stack(rows).astype(np.float32)
        folder = store.features_dir(self.layout.root, self.settings.influence.method, seed)
        store.write_npz(folder / "validation.npz", self.key, **arrays)
        return {"seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - began_cpu}

    def score(self, dataset: Dataset, seed: int, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Write the score part of samples start..stop-1 of `seed` (influence, self_influence, input_grad unless
        influence.input_grad=false, train_loss)."""
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
        wanted = self.settings.influence.input_grad  # false: no forward-mode pass at all (the scores are features)
        for c, state in enumerate(states):
            phi, slope = np.asarray(shard_features.phi[c], np.float64), shard_features.slope[c]
            influence += -slope * (phi @ kernel["weights"][c]) / n_checkpoints
            self_influence += trak_scores.self_influence(phi, slope, kernel["inverse"][c]) / n_checkpoints
            if not wanted:
                continue
            direction = self._direction(seed, c, kernel["weights"][c])
            results = [
                scorer.directional(state, direction, x, y) for x, y in self._batches(dataset, start, stop, recipe)
            ]
            grads.append([np.concatenate([r[1][k].numpy() for r in results]) for k in range(len(dataset.input_names))])
        input_grad = (
            {name: np.asarray(sum(g[k] for g in grads) / n_checkpoints) for k, name in enumerate(dataset.input_names)}
            if wanted
            else None
        )
        x = [a[start:stop] for a in dataset.x_train.values()]
        y = dataset.y_train[start:stop]
        if not (np.all(np.isfinite(influence)) and all(np.all(np.isfinite(g)) for g in (input_grad or {}).values())):
            raise DataError(f"trak scores of seed {seed} are NaN/inf in samples {start}..{stop - 1}")
        train_loss = per_sample_losses(recipe, final, x, y)
        table = scores_table(
            np.arange(start, stop),
            y,
            dataset.task,
            influence,
            input_grad,
            train_loss,
            part_metadata(self.settings, seed, self.score_key),
            extra={"self_influence": self_influence},
        )
        write_table(table, self.layout.score_part(self.settings.influence.method, seed, shard))
        return {
            "rows": stop - start,
            "seconds": time.perf_counter() - began,
            "cpu_seconds": time.process_time() - began_cpu,
        }
