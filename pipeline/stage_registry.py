"""The stage registry: every name `stages=[...]` accepts, in the order the stages always run, with whether it
runs Ray tasks, its driver and how its console lines read.

A stage's driver is `pipeline.stages.<name>.run(context) -> details`, named here by its dotted path and imported
only when the stage runs, so this module imports no stage (config validation reads it on the driver).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    ray: bool  # True: submits Ray tasks (the model and the user's losses are checked in a worker before the run)
    driver: str  # "package.module:function", called with the run's context (stages.context.RunContext)
    lines: Callable[[dict[str, Any]], list[str]]  # its console lines, from the details its driver returns
    description: str

    def run(self, context: Any) -> dict[str, Any]:
        """Import the driver and run it; returns the details the manifest records."""
        module, _, function = self.driver.partition(":")
        return getattr(importlib.import_module(module), function)(context)


def _train(details: dict[str, Any]) -> list[str]:
    lines = []
    for seed, s in details["seeds"].items():
        accuracy = f", val_accuracy={s['val_accuracy']:.3f}" if s.get("val_accuracy") is not None else ""
        lines.append(
            f"[train] seed={seed}: {s['n_steps']} steps in {s['seconds']:.1f}s, val_loss={s['val_loss']:.4g}{accuracy}"
        )
    return lines


def _score(details: dict[str, Any]) -> list[str]:
    lines = []
    for seed, s in details["seeds"].items():
        if "seconds_over_training" in s:
            timing = (
                f" in {s['seconds']:.1f}s ({s['seconds_over_training']:.2f}x training), E={s['objective_value']:.5g}"
            )
        else:
            timing = f" in {s['seconds']:.1f} worker-seconds" if "seconds" in s else ""
        replay = ", states kept from training (no replay)" if s.get("replayed") is False and "seconds" in s else ""
        lines.append(
            f"[score] seed={seed}: {details['method']} on {s['n_samples']} samples in {s['parts']} "
            f"parts{timing}{replay}"
        )
    for seed, s in details.get("queries", {}).get("seeds", {}).items():
        rate = f", {s['queries_per_second']:.3g} queries/s per worker" if s.get("queries_per_second") else ""
        done = f"{s['parts_computed']} computed in {s['seconds']:.1f}s{rate}"
        lines.append(f"[queries] seed={seed}: {s['n_queries']} {s['queries']} queries in {s['parts']} parts ({done})")
    return lines


def _verify(details: dict[str, Any]) -> list[str]:
    lines = []
    for kind, g in details["gradcheck"].items():
        errors = f"median relative error {g['median_relative_error']:.2e}, max {g['max_relative_error']:.2e}"
        lines.append(f"[verify] gradcheck {kind}: {errors} (n={g['n']}, h={details['fd_step']:g})")
    loo = details["loo"]
    correlations = f"pearson {loo['pearson']:.4f}, spearman {loo['spearman']:.4f}, kendall {loo['kendall']:.4f}"
    lines.append(f"[verify] leave-one-out (n={loo['n']}): {correlations}")
    if "queries" in details:
        q, g = details["queries"], details["queries"]["gradcheck"].get("eps")
        grad = f"gradcheck median relative error {g['median_relative_error']:.2e} (n={g['n']}), " if g else ""
        agreement = (
            f"leave-one-out pearson {q['loo']['pearson']:.4f}, sign agreement {q['loo']['sign_agreement']:.3f} "
            f"(n={q['loo']['n']})"
        )
        lines.append(f"[verify] {q['queries']} queries {q['query_ids']}: {grad}{agreement}")
    if "smoothness" in details:
        smooth = details["smoothness"]
        kinds = {"single": smooth["single"], **smooth["groups"]}
        ranges = ", ".join(f"{kind} up to s={ladder['linear_up_to']}" for kind, ladder in kinds.items())
        growth = f"initial perturbation grew {smooth['perturbation_growth']:.3g}x"
        lines.append(f"[verify] smoothness: {smooth['verdict']} (linear {ranges}; {growth})")
        if smooth.get("float64_replay"):
            r = smooth["float64_replay"]
            replay = f"median relative error {r['median_relative_error']:.2e}, spearman {r['spearman']:.4f}"
            lines.append(f"[verify] float32 vs a float64 replay (n={r['n']}): {replay}")
    return lines


def _aggregate(details: dict[str, Any]) -> list[str]:
    agreement = ", ".join(
        f"{m}: {'one seed' if v is None else f'{v:.3f}'}" for m, v in details["seed_agreement"].items()
    )
    lines = [f"[aggregate] {details['rows']} ranked rows; seed agreement (Spearman) {agreement}"]
    if "query_top" in details:
        top = details["query_top"]
        lines.append(
            f"[aggregate] query_top.parquet: {top['rows']} rows (top {top['k']} harmful and helpful per query)"
        )
    return lines


def _report(details: dict[str, Any]) -> list[str]:
    return [f"[report] {details['path']}"]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (  # in the order they run, whatever the order of `stages=[...]`
        Stage("train", True, "pipeline.stages.train:run", _train, "train every seed of train.seeds and record its run"),
        Stage("score", True, "pipeline.stages.score:run", _score, "score every training sample by influence.method"),
        Stage(
            "verify",
            True,
            "pipeline.stages.verify:run",
            _verify,
            "ground truth: finite differences, leave-one-out, smoothness",
        ),
        Stage(
            "aggregate", False, "pipeline.stages.aggregate:run", _aggregate, "ranking.parquet over seeds and methods"
        ),
        Stage("report", False, "pipeline.stages.report:run", _report, "report/index.html"),
    )
}


def in_order(names: Iterable[str]) -> list[Stage]:
    """The stages named, in the order they run."""
    chosen = set(names)
    return [stage for name, stage in STAGES.items() if name in chosen]
