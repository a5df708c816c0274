"""The scoring-method registry: every `influence.method` declares its name, how it runs, which
`influence.*` settings change its numbers, and its kernel.

- sweeps (`trajectory`, `truncated`): one reverse sweep per seed over the recorded training run, or over
  its last `influence.horizon` steps (stages.score).
- sharded: a pool of Ray actors scores shards of the training set; `kernel(seed_run)` is called once per
  (actor, seed) and returns score(x, y) -> (influence [b], input_grad per input).
- features (`trak`): a map-reduce on the same pool (stages.score_trak): shards write projected features,
  the kernel is reduced over shards and inverted once per seed, then shards are scored.

A kernel returns () for input_grad when influence.input_grad=false (Method.optional_input_grad: the methods where
dE/d x_i is a by-product; the baselines always compute theirs).

Kernels import TensorFlow lazily, and this module imports nothing of the pipeline: config validation reads it
on the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A kernel's argument: runtime.seed.SeedRun, one trained seed as a worker loads it. Named, not imported (not even for
# type checking): config validates against this registry and the runtime imports config, so an import closes a circle.
SeedRun = Any

ScoreFn = Callable[[Any, Any], tuple[Any, Any]]


@dataclass(frozen=True)
class Method:
    name: str
    sweep: bool  # True: one reverse sweep per seed over the recorded run; False: sharded per sample
    exact: bool  # True: the exact derivative of this retraining (what the verify gradcheck checks)
    settings: tuple[str, ...]  # influence.<setting> names that change the scores (part of the artifact key)
    description: str
    kernel: Callable[[SeedRun], ScoreFn] | None = None  # sharded methods only
    features: bool = False  # True: the features map-reduce of stages.score_trak
    queries: bool = False  # True: influence.queries per_sample / per_class / groups are supported
    # what its scores are about: "validation" (a derivative of the validation objective E, or an estimate of one),
    # "training loss" (a ranking by the final model's loss) or "output" (the trained model's output w . f(x))
    measures: str = "validation"
    signed: bool = True  # False: a ranking score (larger = more suspicious), with no helpful side
    # True: estimates the effect expected over retrainings (over training's randomness), which is what retraining
    # measures; the report advises it when training is not smooth enough for the exact derivative to predict removals
    over_retrainings: bool = False
    # True: dE/d x_i is a by-product that influence.input_grad=false skips (the kernel never computes it). False for
    # the baselines whose scores are their input gradient or come with it (loss, saliency, sensitivity).
    optional_input_grad: bool = True

    @property
    def options(self) -> tuple[str, ...]:
        """The influence.* settings that apply to this method:
        the keys `influence=<name>` composes (config.register)."""
        run = (
            ("state_memory",) if self.sweep else ("shard_size", "batch_size")
        )  # kept states; shards and kernel batches
        queries = ("query_ids", "query_batch", *(() if self.features else ("query_input_grad",)), "query_top_k")
        own = tuple(s for s in self.settings if s != "objective")
        grads = ("input_grad",) if self.optional_input_grad else ()
        return ("method", "objective", *own, *grads, *run, "queries", *(queries if self.queries else ()))


def _lookahead(run: SeedRun) -> ScoreFn:
    lr, last = float(run.schedule.lr[-1]), run.steps[-1]
    steps, grads = run.settings.influence.steps, run.settings.influence.input_grad
    return lambda x, y: run.scorer.lookahead(
        run.final, x, y, run.x_val, run.y_val, lr=lr, first_step=last, steps=steps, input_grad=grads
    )


def _tracin(run: SeedRun) -> ScoreFn:
    checkpoints = run.scorer.checkpoints(run.states, run.steps, run.schedule.lr, run.n_train, run.x_val, run.y_val)
    grads = run.settings.influence.input_grad
    return lambda x, y: run.scorer.tracin(checkpoints, x, y, input_grad=grads)


def _loss(run: SeedRun) -> ScoreFn:
    return lambda x, y: run.scorer.loss(run.final, x, y)


def _saliency(run: SeedRun) -> ScoreFn:
    return lambda x, y: run.scorer.saliency(run.final, x, y)


def _sensitivity(run: SeedRun) -> ScoreFn:
    weights = run.output_weights
    return lambda x, y: run.scorer.sensitivity(run.final, x, weights)


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "trajectory",
            True,
            True,
            ("objective",),
            "exact dE/d eps_i and dE/d x_i through the recorded training run",
            queries=True,
        ),
        Method(
            "truncated",
            True,
            False,
            ("objective", "horizon"),
            "dE/d eps_i and dE/d x_i through the last influence.horizon steps only",
        ),
        Method(
            "lookahead",
            False,
            False,
            ("objective", "steps"),
            "K more optimizer steps on sample i alone, then E",
            _lookahead,
        ),
        Method("tracin", False, False, ("objective",), "sum over checkpoints of -lr grad E . grad loss_i", _tracin),
        Method(
            "loss",
            False,
            False,
            (),
            "final training loss (ranking baseline)",
            _loss,
            measures="training loss",
            signed=False,
            optional_input_grad=False,
        ),
        Method(
            "saliency",
            False,
            False,
            (),
            "|d loss_i / d x_i| of the final model (ranking baseline)",
            _saliency,
            measures="training loss",
            signed=False,
            optional_input_grad=False,
        ),
        Method(
            "sensitivity",
            False,
            False,
            ("output_weights",),
            "d (w . output) / d x_i of the trained model",
            _sensitivity,
            measures="output",
            optional_input_grad=False,
        ),
        Method(
            "trak",
            False,
            False,
            ("objective", "proj_dim", "proj_seed", "checkpoints", "damping", "feature_dtype"),
            "TRAK: -slope_i phi_E^T (Phi^T Phi + lambda I)^-1 phi_i with projected output-function gradients phi",
            features=True,
            queries=True,
            over_retrainings=True,
        ),
    )
}
