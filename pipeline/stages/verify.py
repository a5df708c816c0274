"""Stage `verify`: ground truth by real retraining, one Ray task per retraining (DESIGN.md section 5).

- gradcheck: central differences of the retrained validation objective in eps_i (h) and along a random
  unit direction u of x_i restricted to the sample's nonzero features (x_i + h u); compared with
  influence_i and input_grad_i . u.
  (trajectory only: the other methods approximate a different quantity).
- leave-one-out: retrain with eps_i = 0 on the same schedule; compare -influence_i with the change in E.
Writes verify/gradcheck.parquet and verify/loo.parquet; returns the summary figures for the manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from pipeline import cluster, metrics
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError
from pipeline.io.layout import RunLayout
from pipeline.io.tables import input_grad_matrix, write_table

# A perturbation of one retraining: (sample_id, new eps_i or None, x direction scaled by h or None).
Perturbation = tuple[int, float | None, np.ndarray | None]


def fd_step(settings: Settings) -> float:
    """verify.fd_step, or by precision: 1e-4 in float64, 1e-2 in float32 (rounding dominates below)."""
    if settings.verify.fd_step is not None:
        return settings.verify.fd_step
    return 1e-4 if settings.train.dtype == "float64" else 1e-2


def run(settings: Settings, dataset_ref: Any, dataset: Dataset, options: dict[str, Any]) -> dict[str, Any]:
    layout, method = RunLayout(settings.output_dir), settings.influence.method
    h = fd_step(settings)
    plans, gradcheck_rows, loo_rows, summary = [], [], [], {}
    for seed in settings.train.seeds:
        if not layout.score_summary(method, seed).exists():
            raise ConfigError(f"stages: verify needs the {method} scores of seed {seed} in {layout.root}; add score to stages")
        scores = pads.dataset(layout.scores_dir(method, seed), format="parquet").to_table().sort_by("sample_id")
        grad_ids, directions, loo_ids = _choose(settings, dataset, seed)
        if method != "trajectory":  # only the exact method is a derivative of this retraining
            grad_ids, directions = [], []
        plans.append((seed, scores, grad_ids, directions, loo_ids))

    calls = []
    for seed, _, grad_ids, directions, loo_ids in plans:
        perturbations: list[Perturbation | None] = [None]
        for i, u in zip(grad_ids, directions):
            perturbations += [(i, 1 + h, None), (i, 1 - h, None), (i, None, h * u), (i, None, -h * u)]
        perturbations += [(i, 0.0, None) for i in loo_ids]
        calls += [(settings, dataset_ref, seed, p) for p in perturbations]
    objectives = iter(cluster.run_tasks(retrained_objective, calls, options, desc="verify (retrainings)"))

    for seed, scores, grad_ids, directions, loo_ids in plans:
        influence = scores["influence"].to_numpy()
        input_grad = input_grad_matrix(scores).astype(np.float64)
        base = next(objectives)
        for i, u in zip(grad_ids, directions):
            e_plus, e_minus, x_plus, x_minus = (next(objectives) for _ in range(4))
            gradcheck_rows.append((seed, i, "eps", influence[i], metrics.central_difference(e_plus, e_minus, h)))
            gradcheck_rows.append((seed, i, "x", float(input_grad[i] @ u), metrics.central_difference(x_plus, x_minus, h)))
        for i in loo_ids:
            loo_rows.append((seed, i, -influence[i], next(objectives) - base))
        summary[str(seed)] = {"objective": base}

    gradcheck = _gradcheck_table(gradcheck_rows)
    loo = _loo_table(loo_rows)
    write_table(gradcheck, layout.verify_dir / "gradcheck.parquet")
    write_table(loo, layout.verify_dir / "loo.parquet")
    return {"fd_step": h, "gradcheck": _gradcheck_summary(gradcheck), "loo": _loo_summary(loo), "seeds": summary}


def _choose(settings: Settings, dataset: Dataset, seed: int) -> tuple[list[int], list[np.ndarray], list[int]]:
    """Samples for gradcheck (with unit directions on their nonzero features) and for leave-one-out."""
    v = settings.verify
    rng = np.random.default_rng([v.seed, seed])
    n_grad, n_loo = min(v.n_gradcheck, dataset.n_train), min(v.n_loo, dataset.n_train)
    grad_ids = sorted(rng.choice(dataset.n_train, n_grad, replace=False).tolist())
    loo_ids = sorted(rng.choice(dataset.n_train, n_loo, replace=False).tolist())
    directions = []
    for i in grad_ids:
        support = dataset.x_train[i] != 0
        u = rng.normal(size=dataset.n_features) * (support if support.any() else 1.0)
        directions.append(u / np.linalg.norm(u))
    return grad_ids, directions, loo_ids


def retrained_objective(settings: Settings, dataset: Dataset, seed: int, perturbation: Perturbation | None) -> float:
    """Ray task body: retrain with one sample's weight or features changed; returns the validation objective."""
    x = dataset.x_train.astype(settings.train.dtype)
    eps = np.ones(dataset.n_train)
    if perturbation is not None:
        i, new_eps, dx = perturbation
        if new_eps is not None:
            eps[i] = new_eps
        if dx is not None:
            x[i] += dx
    return objective_after_training(settings, dataset, seed, eps, x)


def objective_after_training(settings: Settings, dataset: Dataset, seed: int, eps: np.ndarray, x: np.ndarray | None = None) -> float:
    """Ray task body: retrain seed `seed` from its stored initial state on its stored schedule with sample
    weights eps [N] (0 removes a sample) and features x [N, d] (default: the dataset's); returns E."""
    import tensorflow as tf

    from pipeline.io.tables import read_schedule
    from pipeline.kernels.training import make_batches, train
    from pipeline.stages.recipes import recipe_for
    from pipeline.stages.score import StoredStates

    layout = RunLayout(settings.output_dir)
    schedule = read_schedule(layout.schedule(seed))
    recipe = recipe_for(settings, dataset, seed)
    initial = StoredStates(layout, seed, [0], recipe)[0]
    x = dataset.x_train if x is None else x
    batches = make_batches(x, dataset.y_train, schedule, settings.train.dtype, eps)
    final = {}
    train(recipe, initial, batches, [0, schedule.n_steps], final.__setitem__)
    value, _ = recipe.evaluate(final[schedule.n_steps], tf.constant(dataset.x_val, recipe.dtype), tf.constant(dataset.y_val), settings.influence.objective)
    return float(value)


def _gradcheck_table(rows: list[tuple]) -> pa.Table:
    seed, sample_id, kind, predicted, measured = (list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])
    return pa.table(
        {
            "seed": pa.array(seed, pa.int64()),
            "sample_id": pa.array(sample_id, pa.int64()),
            "kind": pa.array(kind, pa.string()),
            "predicted": pa.array(predicted, pa.float64()),
            "finite_difference": pa.array(measured, pa.float64()),
            "relative_error": pa.array(metrics.relative_errors(np.array(predicted), np.array(measured)), pa.float64()),
        }
    )


def _loo_table(rows: list[tuple]) -> pa.Table:
    seed, sample_id, predicted, actual = (list(c) for c in zip(*rows)) if rows else ([], [], [], [])
    return pa.table(
        {
            "seed": pa.array(seed, pa.int64()),
            "sample_id": pa.array(sample_id, pa.int64()),
            "predicted_change": pa.array(predicted, pa.float64()),
            "actual_change": pa.array(actual, pa.float64()),
        }
    )


def _gradcheck_summary(table: pa.Table) -> dict[str, Any]:
    out = {}
    for kind in ("eps", "x"):
        errors = np.array([e for k, e in zip(table["kind"].to_pylist(), table["relative_error"].to_numpy()) if k == kind])
        if errors.size:
            out[kind] = {"n": int(errors.size), "median_relative_error": float(np.median(errors)), "max_relative_error": float(errors.max())}
    return out


def _loo_summary(table: pa.Table) -> dict[str, Any]:
    predicted, actual = table["predicted_change"].to_numpy(), table["actual_change"].to_numpy()
    return {"n": int(predicted.size), **metrics.correlations(predicted, actual)}
