"""The stage registry: every name `stages=[...]` accepts, in the order the stages always run, with whether it
runs Ray tasks, its driver, the typed result the driver returns (pipeline.results) and how its console lines read.

A stage's driver is `pipeline.stages.<name>.run(context) -> result`, named here by its dotted path and imported
only when the stage runs, so this module imports no stage (config validation reads it on the driver).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeline.results import AggregateResult, ReportResult, ScoreResult, StageResult, TrainResult, VerifyResult

R = TypeVar("R", bound=StageResult)


@dataclass(frozen=True)
class Stage(Generic[R]):
    name: str
    ray: bool  # True: submits Ray tasks (the model and the user's losses are checked in a worker before the run)
    driver: str  # "package.module:function", called with the run's context (stages.context.RunContext)
    result: type[R]  # what the driver returns; the manifest records its to_json()
    lines: Callable[[R], list[str]]  # its console lines, from that result
    description: str

    def run(self, context: Any) -> R:
        """Import the driver and run it; returns its result (TypeError if the driver returns another type)."""
        module, _, function = self.driver.partition(":")
        result = getattr(importlib.import_module(module), function)(context)
        if not isinstance(result, self.result):
            raise TypeError(f"{self.driver} returned {type(result).__name__}, not {self.result.__name__}")
        return result


def _train(result: TrainResult) -> list[str]:
    lines = []
    for seed, s in result.seeds.items():
        accuracy = f", val_accuracy={s.val_accuracy:.3f}" if s.val_accuracy is not None else ""
        lines.append(f"[train] seed={seed}: {s.n_steps} steps in {s.seconds:.1f}s, val_loss={s.val_loss:.4g}{accuracy}")
    return lines


def _score(result: ScoreResult) -> list[str]:
    lines = []
    for seed, s in result.seeds.items():
        if s.sweep is not None:
            sweep = s.sweep
            timing = (
                f" in {s.seconds:.1f}s ({sweep.seconds_over_training:.2f}x training), E={sweep.objective_value:.5g}"
            )
        else:
            timing = f" in {s.seconds:.1f} worker-seconds" if s.seconds is not None else ""
        kept = s.sweep is not None and s.sweep.replayed is False and s.seconds is not None
        replay = ", states kept from training (no replay)" if kept else ""
        work = f"{result.method} on {s.n_samples} samples in {s.parts} parts"
        lines.append(f"[score] seed={seed}: {work}{timing}{replay}")
    for seed, q in (result.queries.seeds if result.queries is not None else {}).items():
        rate = f", {q.queries_per_second:.3g} queries/s per worker" if q.queries_per_second else ""
        done = f"{q.parts_computed} computed in {q.seconds:.1f}s{rate}"
        lines.append(f"[queries] seed={seed}: {q.n_queries} {q.queries} queries in {q.parts} parts ({done})")
    return lines


def _verify(result: VerifyResult) -> list[str]:
    lines = []
    for kind, g in result.gradcheck.items():
        errors = f"median relative error {g.median_relative_error:.2e}, max {g.max_relative_error:.2e}"
        lines.append(f"[verify] gradcheck {kind}: {errors} (n={g.n}, h={result.fd_step:g})")
    if result.loo is not None:
        loo = result.loo
        correlations = f"pearson {loo.pearson:.4f}, spearman {loo.spearman:.4f}, kendall {loo.kendall:.4f}"
        lines.append(f"[verify] leave-one-out (n={loo.n}): {correlations}")
    if result.queries is not None:
        q, eps = result.queries, result.queries.gradcheck.get("eps")
        grad = f"gradcheck median relative error {eps.median_relative_error:.2e} (n={eps.n}), " if eps else ""
        agreement = (
            f"leave-one-out pearson {q.loo.pearson:.4f}, sign agreement {q.loo.sign_agreement:.3f} (n={q.loo.n})"
            if q.loo is not None
            else ""
        )
        lines.append(f"[verify] {q.queries} queries {list(q.query_ids)}: {grad}{agreement}")
    if result.smoothness is not None:
        smooth = result.smoothness
        kinds = {**({"single": smooth.single} if smooth.single is not None else {}), **smooth.groups}
        ranges = ", ".join(f"{kind} up to s={ladder.linear_up_to}" for kind, ladder in kinds.items())
        growth = f"initial perturbation grew {smooth.perturbation_growth:.3g}x"
        lines.append(f"[verify] smoothness: {smooth.verdict} (linear {ranges}; {growth})")
        if smooth.float64_replay is not None:
            r = smooth.float64_replay
            replay = f"median relative error {r.median_relative_error:.2e}, spearman {r.spearman:.4f}"
            lines.append(f"[verify] float32 vs a float64 replay (n={r.n}): {replay}")
    return lines


def _aggregate(result: AggregateResult) -> list[str]:
    agreement = ", ".join(f"{m}: {'one seed' if v is None else f'{v:.3f}'}" for m, v in result.seed_agreement.items())
    lines = [f"[aggregate] {result.rows} ranked rows; seed agreement (Spearman) {agreement}"]
    if result.query_top is not None:
        top = result.query_top
        lines.append(f"[aggregate] query_top.parquet: {top.rows} rows (top {top.k} harmful and helpful per query)")
    return lines


def _report(result: ReportResult) -> list[str]:
    return [f"[report] {result.path}"]


STAGES: dict[str, Stage[Any]] = {
    s.name: s
    for s in (  # in the order they run, whatever the order of `stages=[...]`
        Stage(
            "train",
            True,
            "pipeline.stages.train:run",
            TrainResult,
            _train,
            "train every seed of train.seeds and record its run",
        ),
        Stage(
            "score",
            True,
            "pipeline.stages.score:run",
            ScoreResult,
            _score,
            "score every training sample by influence.method",
        ),
        Stage(
            "verify",
            True,
            "pipeline.stages.verify:run",
            VerifyResult,
            _verify,
            "ground truth: finite differences, leave-one-out, smoothness",
        ),
        Stage(
            "aggregate",
            False,
            "pipeline.stages.aggregate:run",
            AggregateResult,
            _aggregate,
            "ranking.parquet over seeds and methods",
        ),
        Stage("report", False, "pipeline.stages.report:run", ReportResult, _report, "report/index.html"),
    )
}


def in_order(names: Iterable[str]) -> list[Stage[Any]]:
    """The stages named, in the order they run."""
    chosen = set(names)
    return [stage for name, stage in STAGES.items() if name in chosen]
