"""Stage `verify`: ground truth by real retraining, one Ray task per retraining (docs/design.md, "Ground truth").

- gradcheck: central differences of the retrained validation objective in eps_i (h) and, for every model
  input, along a random unit direction u of that input of x_i restricted to the sample's nonzero
  features (x_i + h u); compared with influence_i and input_grad_i . u.
  (trajectory only: the other methods approximate a different quantity).
- leave-one-out: retrain with eps_i = 0 on the same schedule; compare -influence_i with the change in E.
- smoothness (exact method, first seed): E(eps_G = 1 - s) for s on verify.ladder, for single samples and
  random groups, against the linear prediction; the growth of a tiny initial-weight perturbation; for a
  float32 run, its influence against a float64 replay of the same run; the verdict smooth | groups-only |
  non-smooth (pipeline.smoothness).
- per query (influence.queries != mean): for a few queries q (QUERIES_CHECKED, chosen at random) and training
  samples i (the random samples above plus, per query, those with the largest |influence_q,i|), the same
  gradcheck in eps_i and leave-one-out on E_q = sum_v W[q, v] objective_v (runtime.jobs.query_weights).
  A retraining returns the objective of every validation sample, so one retraining serves the mean checks
  and every chosen query: the queries add only the retrainings of their largest-|influence| samples.
Writes verify/gradcheck.parquet, verify/loo.parquet, verify/smoothness.parquet and, per query,
verify/query_gradcheck.parquet and verify/query_loo.parquet; returns the summary figures for the manifest.

Driver side; the retrainings are the tasks of runtime.verify, each given a runtime.jobs.Perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import cluster, metrics, runtime, smoothness
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError, DataError
from pipeline.io.queries import batches, parts_to_compute
from pipeline.io.tables import input_grads, read_parts, write_table
from pipeline.methods import REGISTRY
from pipeline.results import (
    ErrorSummary,
    Float64Replay,
    Ladder,
    LooSummary,
    QueryChecks,
    SmoothnessCheck,
    VerifyResult,
    VerifySeed,
)
from pipeline.runtime.jobs import Perturbation, query_weights
from pipeline.stages.context import RunContext
from pipeline.stages.queries import query_ids


def fd_step(settings: Settings) -> float:
    """verify.fd_step, or by precision: 1e-4 in float64, 1e-2 in float32 (rounding dominates below)."""
    if settings.verify.fd_step is not None:
        return settings.verify.fd_step
    return 1e-4 if settings.train.dtype == "float64" else 1e-2


def x_kind(name: str, dataset: Dataset) -> str:
    """Gradcheck kind of an input direction: "x" for a single input, "x.<name>" for each of several."""
    return "x" if len(dataset.input_names) == 1 else f"x.{name}"


@dataclass
class _SeedPlan:
    """The retrainings of one seed: gradcheck samples (with their input directions) and leave-one-out
    samples of the mean checks; with queries, the chosen queries' influence [Q', N] and the extra samples
    (largest |influence_q,i|) retrained for them only in eps."""

    seed: int
    scores: pa.Table
    grad_ids: list[int]
    directions: list[dict[str, np.ndarray]]
    loo_ids: list[int]
    query_influence: np.ndarray | None = None
    query_grad_ids: list[int] = field(default_factory=list)
    query_loo_ids: list[int] = field(default_factory=list)

    def perturbations(self, h: float) -> list[tuple[Any, Perturbation]]:
        """(key, perturbation) of every retraining: "base", ("eps", i, +-1), ("x", i, name, +-1), ("loo", i)."""
        out: list[tuple[Any, Perturbation]] = [("base", Perturbation())]
        for i, u in zip(self.grad_ids, self.directions):
            out += [(("eps", i, 1), Perturbation((i,), 1 + h)), (("eps", i, -1), Perturbation((i,), 1 - h))]
            for name, direction in u.items():
                out += [
                    (("x", i, name, 1), Perturbation((i,), dx={name: h * direction})),
                    (("x", i, name, -1), Perturbation((i,), dx={name: -h * direction})),
                ]
        for i in self.query_grad_ids:
            out += [(("eps", i, 1), Perturbation((i,), 1 + h)), (("eps", i, -1), Perturbation((i,), 1 - h))]
        out += [(("loo", i), Perturbation((i,), 0.0)) for i in (*self.loo_ids, *self.query_loo_ids)]
        return out


def run(context: RunContext) -> VerifyResult:
    settings, dataset, layout = context.settings, context.dataset, context.layout
    method = settings.influence.method
    h = fd_step(settings)
    chosen = _choose_queries(settings, dataset) if settings.influence.queries != "mean" else None
    plans = []
    for seed in settings.train.seeds:
        parts = layout.score_parts(method, seed)
        if not parts:
            raise ConfigError(
                f"stages: verify needs the {method} scores of seed {seed} in {layout.root}; add score to stages"
            )
        grad_ids, directions, loo_ids = _choose(settings, dataset, seed)
        if not REGISTRY[method].exact:  # only the exact method is a derivative of this retraining
            grad_ids, directions = [], []
        plan = _SeedPlan(seed, read_parts(parts).sort_by("sample_id"), grad_ids, directions, loo_ids)
        if chosen is not None:
            plan.query_influence = _query_influence(context, seed, chosen)
            plan.query_grad_ids = _largest(
                plan.query_influence, _per_query(settings.verify.n_gradcheck, chosen.size), exclude=grad_ids
            )
            plan.query_loo_ids = _largest(
                plan.query_influence, _per_query(settings.verify.n_loo, chosen.size), exclude=loo_ids
            )
        plans.append(plan)

    keyed = [(plan.seed, key, p) for plan in plans for key, p in plan.perturbations(h)]
    calls = [(settings, context.dataset_ref, seed, p) for seed, _, p in keyed]
    results = cluster.run_tasks(runtime.retrained_objectives, calls, context.task_options, desc="verify (retrainings)")
    retrained = {(seed, key): result for (seed, key, _), result in zip(keyed, results)}

    gradcheck_rows, loo_rows, summary = [], [], {}
    for plan in plans:
        seed = plan.seed
        mean = {key: result[0] for (s, key), result in retrained.items() if s == seed}  # E of each retraining
        influence = plan.scores["influence"].to_numpy()
        input_grad = input_grads(plan.scores)
        for i, u in zip(plan.grad_ids, plan.directions):
            gradcheck_rows.append(
                (seed, i, "eps", influence[i], metrics.central_difference(mean[("eps", i, 1)], mean[("eps", i, -1)], h))
            )
            for name, direction in u.items():
                predicted = float(np.sum(input_grad[name][i].astype(np.float64) * direction))
                gradcheck_rows.append(
                    (
                        seed,
                        i,
                        x_kind(name, dataset),
                        predicted,
                        metrics.central_difference(mean[("x", i, name, 1)], mean[("x", i, name, -1)], h),
                    )
                )
        for i in plan.loo_ids:
            loo_rows.append((seed, i, -influence[i], mean[("loo", i)] - mean["base"]))
        summary[str(seed)] = VerifySeed(mean["base"])

    gradcheck = _gradcheck_table(gradcheck_rows)
    loo = _loo_table(loo_rows)
    write_table(gradcheck, layout.verify_dir / "gradcheck.parquet")
    write_table(loo, layout.verify_dir / "loo.parquet")
    checks = _query_checks(context, chosen, plans, retrained, h) if chosen is not None else None
    smooth = None
    if settings.verify.smoothness and REGISTRY[method].exact:
        seed, scores = plans[0].seed, plans[0].scores
        smooth = _smoothness(context, seed, scores["influence"].to_numpy(), retrained[(seed, "base")][0])
    return VerifyResult(h, _gradcheck_summary(gradcheck), _loo_summary(loo), summary, checks, smooth)


QUERIES_CHECKED = 3  # queries verified per run (chosen at random among influence.query_ids)


def _choose_queries(settings: Settings, dataset: Dataset) -> np.ndarray:
    """[Q'] sorted query ids to verify: QUERIES_CHECKED of the run's queries (all if fewer), the same for every seed."""
    ids = query_ids(settings, dataset)
    rng = np.random.default_rng([settings.verify.seed, 2])
    return np.sort(rng.choice(ids, min(QUERIES_CHECKED, ids.size), replace=False))


def _per_query(budget: int, n_queries: int) -> int:
    """Largest-|influence| samples per query: about half of a verify budget (n_gradcheck, n_loo) over the
    queries, at least one unless the budget is 0 (the random half is the mean checks' samples)."""
    return 0 if budget == 0 else max(1, budget // (2 * n_queries))


def _largest(influence: np.ndarray, k: int, exclude: list[int]) -> list[int]:
    """Sorted union over queries (rows of influence [Q', N]) of the k samples with the largest |influence_q,i|,
    without those in `exclude` (already retrained for the mean checks)."""
    top = np.argsort(-np.abs(influence), axis=1, kind="stable")[:, :k]
    return sorted(set(top.ravel().tolist()) - set(exclude))


def _query_influence(context: RunContext, seed: int, chosen: np.ndarray) -> np.ndarray:
    """[Q', N] influence of the chosen queries (rows in the order of `chosen`), read from the parts holding
    them only (filter on query_id, pushed down to the parts' row groups of whole queries)."""
    settings, layout, dataset = context.settings, context.layout, context.dataset
    method, n_train = settings.influence.method, dataset.n_train
    needed = [
        (number, ids)
        for number, ids in batches(query_ids(settings, dataset), settings.influence.query_batch)
        if np.isin(ids, chosen).any()
    ]
    if parts_to_compute(layout, method, seed, needed, n_train, context.require_queries_key(), repair=False):
        raise ConfigError(
            f"stages: verify needs the {settings.influence.queries} query parts of seed {seed} in {layout.root}; "
            "add score to stages"
        )
    filters = [("query_id", "in", chosen.tolist())]
    table = pa.concat_tables(
        [
            pq.read_table(
                layout.query_part(method, seed, n), columns=["query_id", "sample_id", "influence"], filters=filters
            )
            for n, _ in needed
        ]
    )
    table = table.sort_by([("query_id", "ascending"), ("sample_id", "ascending")])
    if table.num_rows != chosen.size * n_train or not np.array_equal(
        table["sample_id"].to_numpy(), np.tile(np.arange(n_train), chosen.size)
    ):
        raise DataError(
            f"{layout.queries_dir(method, seed)}: the parts do not hold every sample once for queries {chosen.tolist()}"
        )
    return table["influence"].to_numpy().reshape(chosen.size, n_train)


def _query_checks(
    context: RunContext,
    chosen: np.ndarray,
    plans: list[_SeedPlan],
    retrained: dict[tuple[int, Any], tuple[float, np.ndarray]],
    h: float,
) -> QueryChecks:
    """Per-query gradcheck and leave-one-out from the retrainings' per-validation-sample objectives: every
    chosen query at every sample retrained in eps. Writes verify/query_gradcheck.parquet and query_loo.parquet."""
    settings, dataset = context.settings, context.dataset
    rows, weights = query_weights(settings.influence.queries, dataset, chosen)
    gradcheck_rows, loo_rows = [], []
    for plan in plans:
        objectives: dict[Any, np.ndarray] = {
            key: weights @ result[1][rows] for (s, key), result in retrained.items() if s == plan.seed
        }  # E_q [Q'] of each retraining
        influence = plan.query_influence
        assert influence is not None  # set for every plan when queries are verified
        for i in sorted({*plan.grad_ids, *plan.query_grad_ids}):
            measured = metrics.central_difference(objectives[("eps", i, 1)], objectives[("eps", i, -1)], h)
            gradcheck_rows += [
                (plan.seed, int(q), i, "eps", influence[k, i], measured[k]) for k, q in enumerate(chosen)
            ]
        base = objectives["base"]
        for i in sorted({*plan.loo_ids, *plan.query_loo_ids}):
            change = objectives[("loo", i)] - base
            loo_rows += [(plan.seed, int(q), i, -influence[k, i], change[k]) for k, q in enumerate(chosen)]
    gradcheck = _gradcheck_table(gradcheck_rows, per_query=True)
    loo = _loo_table(loo_rows, per_query=True)
    write_table(gradcheck, context.layout.verify_dir / "query_gradcheck.parquet")
    write_table(loo, context.layout.verify_dir / "query_loo.parquet")
    predicted, actual = loo["predicted_change"].to_numpy(), loo["actual_change"].to_numpy()
    agreement = float(np.mean(np.sign(predicted) == np.sign(actual))) if predicted.size else float("nan")
    return QueryChecks(
        settings.influence.queries,
        tuple(chosen.tolist()),
        _gradcheck_summary(gradcheck),
        replace(_loo_summary(loo), sign_agreement=agreement),
    )


def _smoothness(context: RunContext, seed: int, influence: np.ndarray, base: float) -> SmoothnessCheck:
    """The finite-step response on the ladder for sampled single samples and random groups, the growth of a
    tiny initial-weight perturbation, and the verdict (pipeline.smoothness); writes verify/smoothness.parquet."""
    settings, dataset = context.settings, context.dataset
    v = settings.verify
    rng = np.random.default_rng([v.seed, seed, 1])
    units: list[tuple[str, tuple[int, ...]]] = [
        ("single", (int(i),)) for i in rng.choice(dataset.n_train, min(v.n_smooth, dataset.n_train), replace=False)
    ]
    for fraction in v.group_fractions:
        size = max(1, int(round(fraction * dataset.n_train)))
        units += [
            (f"group {fraction:g}", tuple(int(i) for i in rng.choice(dataset.n_train, size, replace=False)))
            for _ in range(v.n_groups)
        ]
    calls = [(settings, context.dataset_ref, seed, Perturbation(ids, 1.0 - s)) for _, ids in units for s in v.ladder]
    scale = v.perturbation if v.perturbation is not None else (1e-6 if settings.train.dtype == "float64" else 1e-3)
    responses = iter(
        cluster.run_tasks(runtime.retrained_objective, calls, context.task_options, desc="verify (smoothness ladder)")
    )
    growth = cluster.run_tasks(
        runtime.perturbation_growth,
        [(settings, context.dataset_ref, seed, scale)],
        context.task_options,
        desc="verify (perturbation growth)",
    )[0]
    replay = None
    if settings.train.dtype == "float32":
        replay64 = cluster.run_tasks(
            runtime.float64_influence,
            [(settings, context.dataset_ref, seed)],
            context.task_options,
            desc="verify (float64 replay)",
        )[0]
        replay = _agreement(
            influence, replay64, rng.choice(dataset.n_train, min(v.n_float64, dataset.n_train), replace=False)
        )

    floor = 100 * float(np.finfo(settings.train.dtype).eps) * max(abs(base), 1.0)
    rows: list = []
    deviations: dict = {}
    for kind, ids in units:
        total = float(np.sum(influence[list(ids)]))
        actual = np.array([next(responses) - base for _ in v.ladder])
        predicted = -np.asarray(v.ladder) * total
        deviation = smoothness.relative_deviation(actual, predicted, floor)
        deviations.setdefault(kind, []).append(deviation)
        rows += [
            (seed, kind, len(ids), float(s), float(p), float(a), float(d))
            for s, p, a, d in zip(v.ladder, predicted, actual, deviation)
        ]
    ladders = {kind: smoothness.ladder_summary(v.ladder, np.array(d)) for kind, d in deviations.items()}
    single = ladders.pop("single")
    check = SmoothnessCheck(
        seed=seed,
        single=Ladder.from_json(single),
        groups={kind: Ladder.from_json(ladder) for kind, ladder in ladders.items()},
        initial_perturbation=scale,
        perturbation_growth=growth,
        rounding_floor=floor,
        float64_replay=replay,
        verdict=smoothness.verdict(single, ladders),
    )
    check = replace(check, explanation=smoothness.explanation(check.to_json(), settings.to_dict()))
    table = pa.table(
        dict(
            zip(
                ("seed", "unit", "size", "step", "predicted_change", "actual_change", "relative_deviation"),
                (list(c) for c in zip(*rows)),
            )
        )
    )
    write_table(table, context.layout.verify_dir / "smoothness.parquet")
    return check


def _agreement(float32: np.ndarray, float64: np.ndarray, ids: np.ndarray) -> Float64Replay:
    """How far the float32 run's influence is from a float64 replay of it, on the samples `ids`."""
    errors = metrics.relative_errors(float32[ids], float64[ids])
    return Float64Replay(
        int(ids.size),
        float(np.median(errors)),
        float(np.max(errors)),
        metrics.correlations(float32[ids], float64[ids])["spearman"],
    )


def _choose(
    settings: Settings, dataset: Dataset, seed: int
) -> tuple[list[int], list[dict[str, np.ndarray]], list[int]]:
    """Samples for gradcheck (with one unit direction per input, on the sample's nonzero features) and
    for leave-one-out."""
    v = settings.verify
    rng = np.random.default_rng([v.seed, seed])
    n_grad, n_loo = min(v.n_gradcheck, dataset.n_train), min(v.n_loo, dataset.n_train)
    grad_ids = sorted(rng.choice(dataset.n_train, n_grad, replace=False).tolist())
    loo_ids = sorted(rng.choice(dataset.n_train, n_loo, replace=False).tolist())
    directions = []
    for i in grad_ids:
        per_input = {}
        for name, x in dataset.x_train.items():
            support = x[i] != 0
            u = rng.normal(size=x.shape[1:]) * (support if support.any() else 1.0)
            per_input[name] = u / np.linalg.norm(u)
        directions.append(per_input)
    return grad_ids, directions, loo_ids


def _gradcheck_table(rows: list[tuple], per_query: bool = False) -> pa.Table:
    """rows: (seed, [query_id,] sample_id, kind, predicted, finite_difference); adds relative_error."""
    keys = ("seed", "query_id", "sample_id") if per_query else ("seed", "sample_id")
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(len(keys) + 3)]
    kind, predicted, measured = columns[len(keys) :]
    return pa.table(
        {
            **{key: pa.array(c, pa.int64()) for key, c in zip(keys, columns)},
            "kind": pa.array(kind, pa.string()),
            "predicted": pa.array(predicted, pa.float64()),
            "finite_difference": pa.array(measured, pa.float64()),
            "relative_error": pa.array(metrics.relative_errors(np.array(predicted), np.array(measured)), pa.float64()),
        }
    )


def _loo_table(rows: list[tuple], per_query: bool = False) -> pa.Table:
    """rows: (seed, [query_id,] sample_id, predicted_change = -influence, actual_change = E(eps_i = 0) - E)."""
    keys = ("seed", "query_id", "sample_id") if per_query else ("seed", "sample_id")
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(len(keys) + 2)]
    predicted, actual = columns[len(keys) :]
    return pa.table(
        {
            **{key: pa.array(c, pa.int64()) for key, c in zip(keys, columns)},
            "predicted_change": pa.array(predicted, pa.float64()),
            "actual_change": pa.array(actual, pa.float64()),
        }
    )


def _gradcheck_summary(table: pa.Table) -> dict[str, ErrorSummary]:
    """kind -> relative errors of its rows, kinds in table order."""
    out = {}
    kinds = table["kind"].to_pylist()
    for kind in dict.fromkeys(kinds):
        errors = np.array([e for k, e in zip(kinds, table["relative_error"].to_numpy()) if k == kind])
        if errors.size:
            out[kind] = ErrorSummary(int(errors.size), float(np.median(errors)), float(errors.max()))
    return out


def _loo_summary(table: pa.Table) -> LooSummary:
    """Pearson, Spearman and Kendall of predicted (-influence) vs actual change (NaN below 3 rows)."""
    predicted, actual = table["predicted_change"].to_numpy(), table["actual_change"].to_numpy()
    c = metrics.correlations(predicted, actual)
    return LooSummary(int(predicted.size), c["pearson"], c["spearman"], c["kendall"])
