"""Combining one method's scores over seeds (and checkpoints): the stated rule of `aggregate.ensemble`, each
seed's scale and how far the seeds agree. NumPy only.

- mean: the plain mean of the raw scores. A seed whose scores are 5x the others' dominates it.
- standardized: each seed divided by its root mean square first, then averaged. Signs keep their meaning
  (positive = harmful) and every seed counts the same.
- rank: the mean over seeds of each seed's centred ranks, scaled to [-1, 1] (1 = most harmful in that
  seed). Robust to heavy tails; only the order is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

RULES = ("mean", "standardized", "rank")
DISAGREE_BELOW = 0.3  # mean pairwise Spearman under which the report says the seeds disagree


def scale(scores: np.ndarray) -> np.ndarray:
    """[S] root mean square of each seed's scores [S, N]."""
    return np.sqrt(np.mean(np.square(np.asarray(scores, np.float64)), axis=1))


def combine(scores: np.ndarray, rule: str) -> np.ndarray:
    """[N] the seeds' scores [S, N] combined by `rule` (RULES)."""
    scores = np.asarray(scores, np.float64)
    if rule == "mean":
        return scores.mean(axis=0)
    if rule == "standardized":
        return (scores / np.maximum(scale(scores), np.finfo(np.float64).tiny)[:, None]).mean(axis=0)
    if rule == "rank":
        n = scores.shape[1]
        centred = (rankdata(scores, axis=1) - (n + 1) / 2) / max((n - 1) / 2, 1)
        return centred.mean(axis=0)
    raise ValueError(f"unknown ensemble rule {rule!r} (known: {', '.join(RULES)})")


def pairwise_spearman(scores: np.ndarray, seeds: list[int]) -> list[dict[str, Any]]:
    """Spearman correlation of every pair of seeds: [{"seeds": [a, b], "spearman": rho}, ...]."""
    scores = np.asarray(scores, np.float64)
    pairs = []
    for a in range(len(seeds)):
        for b in range(a + 1, len(seeds)):
            rho = spearmanr(scores[a], scores[b]).statistic if np.ptp(scores[a]) and np.ptp(scores[b]) else float("nan")
            pairs.append({"seeds": [int(seeds[a]), int(seeds[b])], "spearman": float(rho)})
    return pairs
