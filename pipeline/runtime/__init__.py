"""The worker side: every Ray task body and actor class of a run, and what they share (runtime.seed.SeedRun).

Runs in Ray workers. The modules import TensorFlow and the kernels at their top, except two that the driver
imports too and that stay NumPy-only: this package's __init__ (the handles below) and runtime.jobs (what the
driver hands to a worker); runtime.feature_queries is NumPy-only as well, so its tasks never load TensorFlow.

    recipes          Settings -> task, model, functional optimizer, Recipe, schedule; check_run (start-up task)
    seed             SeedRun: one trained seed as a worker loads it (recipe, checkpoints, schedule, batches)
    train            train_seed: one seed trained and recorded (task)
    sweep            score_seed: the exact reverse sweep of one seed, trajectory or truncated (task)
    shard_scorer     ShardScorer: the sharded methods, one shard per call (actor)
    trak_worker      TrakWorker: features, validation features and score parts of trak (actor)
    queries          score_query_batch: one reverse sweep carrying a batch of queries (task)
    feature_queries  score_features_query_batch: a batch of queries from stored trak features (task, NumPy)
    predict          predict_queries: a seed's trained model on the queries' validation rows, for the report (task)
    verify           the verify stage's retrainings (tasks)

How the driver names them without importing TensorFlow: pipeline.stages refers to the handles defined here
(`runtime.score_seed`, `runtime.ShardScorer`, ...), never to the runtime modules. A handle is a function (task)
or a class (actor) with the body's name that imports the body's module in the worker running it and calls it:
the one place where a runtime module is imported lazily. Handles are pickled by reference (this TF-free module
and their name), so Ray ships a name, not code, and process titles stay those of the bodies
(ray::score_seed, ray::ShardScorer.score). Tests and scripts that run a body in-process import its module.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def _task(module: str, name: str) -> Callable[..., Any]:
    """A Ray task body: calls pipeline.runtime.<module>.<name> in the process that runs it."""

    def body(*args: Any) -> Any:
        return getattr(import_module(f"{__name__}.{module}"), name)(*args)

    body.__name__ = body.__qualname__ = name
    body.__doc__ = f"Ray task: {__name__}.{module}.{name}, imported by the worker that runs it."
    return body


def _actor(module: str, name: str, *methods: str) -> type:
    """A Ray actor class: builds pipeline.runtime.<module>.<name>(*args) in the actor's process (as `self.body`)
    and forwards `methods` to it."""

    def __init__(self: Any, *args: Any) -> None:
        self.body = getattr(import_module(f"{__name__}.{module}"), name)(*args)

    def forward(method: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any) -> Any:
            return getattr(self.body, method)(*args)

        call.__name__, call.__qualname__ = method, f"{name}.{method}"
        return call

    doc = f"Ray actor: {__name__}.{module}.{name}, built in the actor's process; methods {', '.join(methods)}."
    namespace = {"__init__": __init__, "__module__": __name__, "__qualname__": name, "__doc__": doc}
    return type(name, (), {**namespace, **{method: forward(method) for method in methods}})


check_run = _task("recipes", "check_run")
train_seed = _task("train", "train_seed")
score_seed = _task("sweep", "score_seed")
score_query_batch = _task("queries", "score_query_batch")
score_features_query_batch = _task("feature_queries", "score_features_query_batch")
predict_queries = _task("predict", "predict_queries")
retrained_objective = _task("verify", "retrained_objective")
retrained_objectives = _task("verify", "retrained_objectives")
objective_after_training = _task("verify", "objective_after_training")
perturbation_growth = _task("verify", "perturbation_growth")
float64_influence = _task("verify", "float64_influence")
ShardScorer = _actor("shard_scorer", "ShardScorer", "score")
TrakWorker = _actor("trak_worker", "TrakWorker", "features", "validation", "score")
