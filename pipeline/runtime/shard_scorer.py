"""The score stage's actor for the sharded methods (lookahead, tracin, loss, saliency, sensitivity): scores one
shard of the training set per call with the registry's kernel and writes its part. Runs in Ray actors (imports
TensorFlow); stages.score_sharded drives the pool."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import DivergenceError
from pipeline.io.layout import RunLayout
from pipeline.io.parts import part_metadata
from pipeline.io.tables import scores_table, write_table
from pipeline.kernels.training import as_inputs, as_targets, per_sample_losses
from pipeline.methods import REGISTRY, ScoreFn
from pipeline.runtime.seed import SeedRun


class ShardScorer:
    """Ray actor body: scores shards of any seed of one run; per seed, states are loaded once.

    The dataset comes with each call (a shared object-store reference, read without copying) rather than
    to the constructor, so that a restarted actor never depends on constructor arguments.
    """

    def __init__(self, settings: Settings, key: str):
        self.settings = settings
        self.key = key  # the scores key every part is written under
        self.layout = RunLayout(settings.output_dir)
        self.prepared: dict[int, tuple[SeedRun, ScoreFn]] = {}

    def _prepare(self, data: Dataset, seed: int) -> tuple[SeedRun, ScoreFn]:
        """(the seed's SeedRun, score(x, y) -> (influence, input_grad)) from the registry's kernel."""
        run = SeedRun.load(self.settings, data, seed)
        kernel = REGISTRY[self.settings.influence.method].kernel
        assert kernel is not None  # every sharded method has one (methods.REGISTRY)
        return run, kernel(run)

    def score(self, dataset: Dataset, seed: int, shard: int, start: int, stop: int) -> dict[str, Any]:
        """Score samples start..stop-1 of `seed` and write their part file; returns {"rows", "seconds",
        "cpu_seconds"}."""
        began, began_cpu = time.perf_counter(), time.process_time()
        if seed not in self.prepared:
            self.prepared[seed] = self._prepare(dataset, seed)
        run, score = self.prepared[seed]
        s, recipe = self.settings, run.recipe
        x = [a[start:stop] for a in dataset.x_train.values()]
        y = dataset.y_train[start:stop]
        chunk = s.influence.batch_size
        results = [
            score(
                as_inputs([a[i : i + chunk] for a in x], recipe.dtype),
                as_targets(y[i : i + chunk], recipe.task, recipe.dtype),
            )
            for i in range(0, stop - start, chunk)
        ]
        influence = np.concatenate([r[0].numpy() for r in results]).astype(np.float64)
        # () from a kernel that skipped them (influence.input_grad=false, methods.Method.optional_input_grad)
        input_grad = (
            {name: np.concatenate([r[1][k].numpy() for r in results]) for k, name in enumerate(dataset.input_names)}
            if len(results[0][1])
            else None
        )
        if not (np.all(np.isfinite(influence)) and all(np.all(np.isfinite(g)) for g in (input_grad or {}).values())):
            raise DivergenceError(
                f"{s.influence.method} scores of seed {seed} are NaN/inf in samples {start}..{stop - 1}"
            )
        train_loss = per_sample_losses(recipe, run.final, x, y)
        table = scores_table(
            np.arange(start, stop), y, dataset.task, influence, input_grad, train_loss, part_metadata(s, seed, self.key)
        )
        write_table(table, self.layout.score_part(s.influence.method, seed, shard))
        return {
            "rows": stop - start,
            "seconds": time.perf_counter() - began,
            "cpu_seconds": time.process_time() - began_cpu,
        }
