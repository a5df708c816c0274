"""Agreement figures between predicted and measured effects (NumPy/SciPy, no TensorFlow)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def central_difference(plus: Any, minus: Any, step: float) -> Any:
    """(f(a + h) - f(a - h)) / 2h, of floats or elementwise of arrays."""
    return (plus - minus) / (2 * step)


def relative_errors(predicted: np.ndarray, measured: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """|p - m| / max(|p|, |m|, floor) elementwise: 0 = equal, 1 = unrelated, never divides by ~0."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    return np.abs(predicted - measured) / np.maximum(np.maximum(np.abs(predicted), np.abs(measured)), floor)


def correlations(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman and Kendall correlation (NaN when fewer than 3 points or a constant input)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if predicted.size < 3 or np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "kendall": float("nan")}
    return {
        "pearson": float(stats.pearsonr(predicted, measured).statistic),
        "spearman": float(stats.spearmanr(predicted, measured).statistic),
        "kendall": float(stats.kendalltau(predicted, measured).statistic),
    }


def mean_pairwise_spearman(rows: np.ndarray) -> float | None:
    """Mean Spearman correlation over all pairs of rows of [n_runs, n_samples]; None with fewer than 2 rows."""
    if rows.shape[0] < 2:
        return None
    pairs = [
        correlations(rows[a], rows[b])["spearman"] for a in range(rows.shape[0]) for b in range(a + 1, rows.shape[0])
    ]
    return float(np.mean(pairs))


def found_fraction(scores: np.ndarray, is_target: np.ndarray, inspected: float) -> float:
    """Share of the targets (e.g. flipped labels) among the top `inspected` fraction of samples by score."""
    n_top = int(round(inspected * scores.size))
    top = np.argsort(-scores, kind="stable")[:n_top]
    return float(is_target[top].sum() / max(is_target.sum(), 1))


def roc_auc(scores: np.ndarray, is_target: np.ndarray) -> float:
    """Probability that a random target scores above a random non-target (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(is_target.sum()), int((~is_target).sum())
    return float((ranks[is_target].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
