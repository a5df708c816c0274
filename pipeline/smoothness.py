"""Does the run's derivative predict finite changes? The verdict of the smoothness diagnostics (NumPy only).

For a sample (or a group G of samples) with scores `influence`, the linear prediction of moving its weight
from 1 to 1 - s is  dE_pred(s) = -s * sum_{i in G} influence_i,  and retraining measures dE(s). On a ladder
of s from 1e-4 to 1 (1 = removal) the relative deviation |dE - dE_pred| / max(|dE|, |dE_pred|) says up to
which s the derivative is a good model of the training run:

- `smooth`: single samples are predicted at removal (s = 1);
- `groups-only`: single samples are not, groups are (each sample's effect is swamped by the kinks and
  chaos of training, but effects of many samples add up);
- `non-smooth`: neither; the scores are exact derivatives but do not say what removal does in this run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_DEVIATION = 0.5  # a prediction within 50% of the measured change counts as predictive
VERDICTS = ("smooth", "groups-only", "non-smooth")


def relative_deviation(actual: np.ndarray, predicted: np.ndarray, floor: float) -> np.ndarray:
    """|actual - predicted| / max(|actual|, |predicted|); NaN where both are below `floor` (rounding level)."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    scale = np.maximum(np.abs(actual), np.abs(predicted))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > floor, np.abs(actual - predicted) / scale, np.nan)


def ladder_summary(steps: Sequence[float], deviations: np.ndarray) -> dict[str, Any]:
    """deviations [n_units, len(steps)] -> the median per step and the largest step up to which every
    median (from the smallest step on) stays within MAX_DEVIATION (None: not even the smallest)."""
    medians = [None if np.all(np.isnan(column)) else float(np.nanmedian(column)) for column in deviations.T]
    linear_up_to = None
    for s, median in zip(steps, medians):
        if median is None:  # below rounding: says nothing either way
            continue
        if median > MAX_DEVIATION:
            break
        linear_up_to = float(s)
    return {"steps": [float(s) for s in steps], "median_deviation": medians, "linear_up_to": linear_up_to}


def verdict(single: dict[str, Any], groups: dict[str, dict[str, Any]]) -> str:
    """smooth | groups-only | non-smooth from the ladder summaries of single samples and of groups."""
    if single["linear_up_to"] == 1.0:
        return "smooth"
    if groups and all(g["linear_up_to"] == 1.0 for g in groups.values()):
        return "groups-only"
    return "non-smooth"


def explanation(result: dict[str, Any], settings: dict[str, Any]) -> str:
    """The verdict in words: what the scores predict in this run and what would change it."""
    kind = result["verdict"]
    growth = result.get("perturbation_growth")
    chaos = (
        f" A relative change of {result['initial_perturbation']:.0e} in the initial weights grew {growth:.3g}x by "
        "the end of training."
        if growth
        else ""
    )
    if kind == "smooth":
        return (
            "The derivative predicts what removing a single training sample does to validation error in "
            f"this run (within {MAX_DEVIATION:.0%} at removal), and groups add up." + chaos
        )
    hints = []
    train, model, optimizer = settings.get("train", {}), settings.get("model", {}), settings.get("optimizer", {})
    hints.append(f"a smaller optimizer.lr (now {optimizer.get('lr')})")
    if model.get("activation") in ("relu", None) or model.get("name") in ("custom", "saved", "cnn"):
        hints.append("smooth activations (tanh) instead of ReLU kinks")
    if train.get("dtype") != "float64":
        hints.append("train.dtype=float64")
    hints.append(
        "averaging scores over seeds (train.seeds=[0,1,...]), which estimates the expected effect over retrainings"
    )
    if kind == "groups-only":
        head = (
            "The scores are exact derivatives, but a single sample's removal is not predicted "
            "(its effect is below the kinks and chaos of this training); removing groups of samples is."
        )
    else:
        head = (
            "The scores are exact derivatives of this training run, but they predict neither single "
            "removals nor group removals here; use them to rank, not to forecast changes."
        )
    return f"{head}{chaos} What would change that: {'; '.join(hints)}."
