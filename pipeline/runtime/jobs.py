"""What the driver hands to a worker, and the rules both sides apply: a verify retraining's Perturbation, which
validation rows a query averages (query_weights) and which checkpoints a features method uses (chosen_steps).

NumPy only: the driver (pipeline.stages) imports it, and so do the workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data import Dataset
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Perturbation:
    """One retraining: sample weights eps[ids] = weight (None: unchanged), and features of sample ids[0]
    moved by dx (name -> [*shape], None: unchanged)."""

    ids: tuple[int, ...] = ()
    weight: float | None = None
    dx: dict[str, np.ndarray] | None = None


def query_labels(queries: str, dataset: Dataset) -> tuple[np.ndarray, str]:
    """[V] the label that assigns each validation sample to a query (its class or group), and its name."""
    if queries == "per_class":
        if dataset.task != "classification":
            raise ConfigError(f"influence.queries=per_class: needs task=classification (got {dataset.task})")
        return dataset.y_val, "class"
    if dataset.g_val is None:
        raise ConfigError(
            "influence.queries=groups: the data has no validation groups "
            "(npz array g_val, or parquet data.group_column)"
        )
    return dataset.g_val, "group"


def query_weights(queries: str, dataset: Dataset, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows [V'], weights [Q, V']) with E_q = sum_v weights[q, v] objective(row v): one-hot
    (per_sample), or 1/|members| on the rows of the class (per_class) or group (groups). Only the rows a
    query uses are kept."""
    if queries == "per_sample":
        return ids, np.eye(ids.size)
    labels, _ = query_labels(queries, dataset)
    rows = np.flatnonzero(np.isin(labels, ids))
    member = labels[rows][None, :] == ids[:, None]
    return rows, member / member.sum(axis=1, keepdims=True)


def chosen_steps(stored: list[int], count: int | None) -> list[int]:
    """The checkpoints featurized: `count` of the stored steps after step 0, evenly spaced, ending at the last."""
    after_start = [s for s in stored if s > 0]
    count = count or 1
    if count > len(after_start):
        raise ConfigError(
            f"influence.checkpoints={count}: the run stores only {len(after_start)} checkpoints after step 0 "
            "(store more with a smaller train.checkpoint_every)"
        )
    positions = np.round(
        np.linspace(len(after_start) - 1, 0, count, endpoint=False)[::-1] if count > 1 else [len(after_start) - 1]
    )
    return [after_start[int(p)] for p in positions]
