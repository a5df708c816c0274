"""Agreement figures of the evaluation (NumPy/SciPy, no TensorFlow).

Conventions: `influence` is dE/d eps_i (positive = harmful: removing the sample lowers E); a subset is a
0/1 mask of the kept samples; measured values are validation objectives E after retraining.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from pipeline import metrics


def kept_masks(rng: np.random.Generator, n: int, drop: float, count: int) -> np.ndarray:
    """[count, n] 0/1 masks, each removing round(drop * n) samples (at least one) chosen at random."""
    n_drop = max(1, int(round(drop * n)))
    masks = np.ones((count, n))
    for row in masks:
        row[rng.choice(n, n_drop, replace=False)] = 0.0
    return masks


def removal_mask(n: int, removed: np.ndarray) -> np.ndarray:
    """[n] 0/1 mask keeping everything but `removed`."""
    mask = np.ones(n)
    mask[removed] = 0.0
    return mask


def top(scores: np.ndarray, count: int) -> np.ndarray:
    """Ids of the `count` highest scores (ties broken by id)."""
    return np.argsort(-scores, kind="stable")[:count]


def lds(masks: np.ndarray, scores: np.ndarray, measured: np.ndarray) -> float:
    """Linear datamodeling score: Spearman correlation, across subsets, between the summed scores of the
    kept samples (the first-order prediction of E up to a constant) and the measured E."""
    return metrics.correlations(masks @ scores, measured)["spearman"]


def paired_lds_difference(
    masks: np.ndarray, a: np.ndarray, b: np.ndarray, measured: np.ndarray, draws: int, rng: np.random.Generator
) -> tuple[float, float]:
    """LDS(a) - LDS(b) on the same subsets (masks [S, N], scores a and b [N], measured E [S]) and its standard
    error by a paired bootstrap: `draws` resamples of the S subsets with replacement, each scored for both
    methods; se = sd of the resampled differences (resamples whose LDS is undefined, e.g. one subset drawn
    S times, left out)."""
    picks = rng.integers(0, measured.size, size=(draws, measured.size))
    target = measured[picks]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = _row_spearman((masks @ a)[picks], target) - _row_spearman((masks @ b)[picks], target)
    return lds(masks, a, measured) - lds(masks, b, measured), float(np.nanstd(boot, ddof=1))


def _row_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[rows] Spearman correlation of each row of x with the same row of y (average ranks for ties)."""
    rx, ry = (r - r.mean(axis=1, keepdims=True) for r in (rankdata(x, axis=1), rankdata(y, axis=1)))
    return (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))


def spearman_brown(r: float, factor: float) -> float:
    """Reliability of a mean over `factor` times as many seeds as the one with reliability r."""
    return factor * r / (1 + (factor - 1) * r)


def split_half_reliability(values: np.ndarray, splits: int, rng: np.random.Generator) -> float:
    """Reliability of the seed-averaged targets values.mean(axis=1), values [n_subsets, R].

    The R seeds are split at random into two halves of R // 2; the Pearson correlation across subsets
    between the two halves' means is averaged over `splits` random splits and Spearman-Brown corrected
    from R // 2 seeds to R. NaN when the targets do not vary.
    """
    n_seeds = values.shape[1]
    half = n_seeds // 2
    rs = []
    for _ in range(splits):
        order = rng.permutation(n_seeds)
        rs.append(
            metrics.correlations(values[:, order[:half]].mean(axis=1), values[:, order[half : 2 * half]].mean(axis=1))[
                "pearson"
            ]
        )
    return spearman_brown(float(np.mean(rs)), n_seeds / half)


def seeds_needed(reliability: float, n_seeds: int, target: float = 0.8) -> float:
    """R at which the Spearman-Brown prophecy puts the reliability at `target` (inf when it is <= 0)."""
    if not reliability > 0:
        return math.inf
    if reliability >= 1:
        return float(n_seeds)
    return n_seeds * (target / (1 - target)) / (reliability / (1 - reliability))


def paired_change(after: np.ndarray, before: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of after - before over seeds (the same seeds with and without a removal)."""
    diff = np.asarray(after, float) - np.asarray(before, float)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else math.nan


def flip_labels(
    rng: np.random.Generator, y: np.ndarray, num_classes: int, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(labels with round(fraction * n) of them moved to another class at random, [n] bool flipped)."""
    flipped = np.zeros(y.size, dtype=bool)
    flipped[rng.choice(y.size, int(round(fraction * y.size)), replace=False)] = True
    out = y.copy()
    out[flipped] = (out[flipped] + rng.integers(1, num_classes, int(flipped.sum()))) % num_classes
    return out, flipped
