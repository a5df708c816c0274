"""The minibatch schedule of one training run (pure NumPy).

Step t uses the samples index[t, :size[t]] with learning rate lr[t]. Epochs are consecutive; with
shuffling, epoch e of seed s uses the permutation of numpy.random.default_rng([s, e]); the last batch of
an epoch may be smaller (as in `model.fit`). Unused slots of `index` hold -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Learning-rate schedules by name (kernels/lr_schedules builds them as Keras objects):
# name -> (required parameters, optional parameters with their defaults). Pure, so settings can be checked
# against it without importing Keras.
LR_SCHEDULES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": ((), {}),
    "cosine": ((), {"alpha": 0.0}),
    "warmup_cosine": (("warmup_steps",), {"alpha": 0.0, "initial_learning_rate": 0.0}),
    "piecewise": (("boundaries", "values"), {}),
    "exponential": (("decay_steps", "decay_rate"), {"staircase": False}),
    "one_cycle": ((), {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}),
}


@dataclass(frozen=True)
class Schedule:
    index: np.ndarray  # [T, B_max] int64 sample ids, -1 padded
    size: np.ndarray  # [T] int32 batch sizes
    lr: np.ndarray  # [T] float64 learning rates

    @property
    def n_steps(self) -> int:
        return int(self.size.shape[0])

    def batch(self, step: int) -> np.ndarray:
        return self.index[step, : self.size[step]]

    def to_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Long form, one row per (step, sample_id): (step, sample_id, lr), all 1-D."""
        steps = np.repeat(np.arange(self.n_steps, dtype=np.int64), self.size)
        return steps, self.index[self.index >= 0].astype(np.int64), np.repeat(self.lr, self.size)

    @classmethod
    def from_rows(cls, step: np.ndarray, sample_id: np.ndarray, lr: np.ndarray) -> Schedule:
        """Inverse of to_rows; rows must be ordered by step, in batch order within a step."""
        n_steps = int(step.max()) + 1 if step.size else 0
        size = np.bincount(step, minlength=n_steps).astype(np.int32)
        index = np.full((n_steps, int(size.max(initial=0))), -1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(size)[:-1]])
        position = np.arange(step.size) - np.repeat(starts, size)
        index[step, position] = sample_id
        step_lr = np.zeros(n_steps, dtype=np.float64)
        step_lr[step] = lr
        return cls(index=index, size=size, lr=step_lr)


def make_schedule(
    n_train: int, batch_size: int, epochs: int, shuffle: bool, seed: int, lr: float | np.ndarray
) -> Schedule:
    """Batches of `batch_size` over `epochs` passes of range(n_train), as `model.fit(shuffle=...)` makes them.

    lr: one learning rate for every step, or [n_steps] per-step learning rates (lr_schedules.learning_rates)."""
    per_epoch = math.ceil(n_train / batch_size)
    index = np.full((epochs * per_epoch, batch_size), -1, dtype=np.int64)
    size = np.zeros(epochs * per_epoch, dtype=np.int32)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n_train) if shuffle else np.arange(n_train)
        for b in range(per_epoch):
            batch = order[b * batch_size : (b + 1) * batch_size]
            index[epoch * per_epoch + b, : batch.size] = batch
            size[epoch * per_epoch + b] = batch.size
    step_lr = np.full(size.shape, lr, dtype=np.float64) if np.ndim(lr) == 0 else np.array(lr, dtype=np.float64)
    if step_lr.shape != size.shape:
        raise ValueError(f"lr: {step_lr.shape} learning rates for a schedule of {size.shape[0]} steps")
    return Schedule(index=index, size=size, lr=step_lr)


def checkpoint_steps(n_steps: int, every: int | None) -> list[int]:
    """Steps whose state is stored: 0, k, 2k, ..., and n_steps; k defaults to ceil(sqrt(n_steps))."""
    k = every if every is not None else max(1, math.ceil(math.sqrt(n_steps)))
    return sorted(set(range(0, n_steps, k)) | {n_steps})
