"""The Dataset every stage reads, and the checks that turn bad arrays into one-line DataErrors.

Inputs are a nest: an ordered mapping name -> array [n, *sample_shape] (float32, or float64 when given as
float64, so that float64 training sees the data exactly), one entry per model
input, in the order the model receives them (one input is named "x"). Targets follow the task:
class ids [n] int64 (classification) or floats [n] / [n, k] float64 (regression).
`sample_id` of a training sample is its row in every x_train array.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.errors import DataError

log = logging.getLogger(__name__)

SINGLE_INPUT = "x"  # the name of the input when a dataset has only one


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # classification | regression
    x_train: dict[str, np.ndarray]  # name -> [N, *shape] float32 (float64 if given so)
    y_train: np.ndarray  # [N] int64 class ids, or [N] / [N, k] float64 targets
    x_val: dict[str, np.ndarray]  # name -> [V, *shape], as x_train
    y_val: np.ndarray
    g_val: np.ndarray | None = None  # [V] int64 group id of each validation sample (influence.queries=groups)
    w_train: np.ndarray | None = None  # [N] float64 weight of each training sample (model.fit's sample_weight)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.x_train)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(int(n) for n in a.shape[1:]) for name, a in self.x_train.items()}

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.y_val.shape[0])

    @property
    def num_classes(self) -> int | None:
        """Number of classes (classification; labels are 0..num_classes-1), else None."""
        if self.task != "classification":
            return None
        return int(max(self.y_train.max(), self.y_val.max())) + 1

    @property
    def output_dim(self) -> int | None:
        """Width k of the regression targets (1 for targets of shape [n]), else None."""
        if self.task != "regression":
            return None
        return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])

    @property
    def width(self) -> int:
        """Model outputs the task needs: num_classes (classification) or output_dim (regression)."""
        width = self.num_classes if self.task == "classification" else self.output_dim
        if width is None:
            raise DataError(f"task {self.task!r}: neither classification nor regression")
        return width

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "inputs": {name: list(shape) for name, shape in self.input_shapes.items()},
            "num_classes": self.num_classes,
            "output_dim": self.output_dim,
        } | ({} if self.w_train is None else {"sample_weights": True})


def make_dataset(
    name: str,
    task: str,
    x_train: Mapping[str, np.ndarray],
    y_train: np.ndarray,
    x_val: Mapping[str, np.ndarray],
    y_val: np.ndarray,
    where: str = "",
    g_val: np.ndarray | None = None,
    w_train: np.ndarray | None = None,
) -> Dataset:
    """Check the arrays and return a Dataset with canonical dtypes; `where` (e.g. " in data.npz") ends messages."""
    if not x_train:
        raise DataError(f"x_train: no inputs{where}")
    for key in x_train:
        if key not in x_val:
            raise DataError(
                f"{_key('x_val', key, x_train)}: missing{where} ({_key('x_train', key, x_train)} is present)"
            )
    for key in x_val:
        if key not in x_train:
            raise DataError(f"{_key('x_train', key, x_val)}: missing{where} ({_key('x_val', key, x_val)} is present)")
    y_train, y_val = (_targets(task, f"y_{split}", y, where) for split, y in (("train", y_train), ("val", y_val)))
    inputs: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
    for split, xs, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        for key in x_train:  # validation inputs in the training order: the model takes them by position
            dtype = (
                np.float64 if np.asarray(x_train[key]).dtype == np.float64 else np.float32
            )  # float64 data stays exact
            inputs[split][key] = _features(_key(f"x_{split}", key, xs), xs[key], y.shape[0], dtype, where)
    for key in x_train:
        train_shape, val_shape = inputs["train"][key].shape[1:], inputs["val"][key].shape[1:]
        if train_shape != val_shape:
            raise DataError(
                f"{_key('x_val', key, x_train)}: sample shape {val_shape} differs from "
                f"{_key('x_train', key, x_train)} {train_shape}{where}"
            )
    if task == "classification":
        _check_classes(y_train, y_val, where)
    elif y_train.shape[1:] != y_val.shape[1:]:
        raise DataError(f"y_val: target shape {y_val.shape[1:]} differs from y_train {y_train.shape[1:]}{where}")
    groups = None if g_val is None else _groups(g_val, y_val.shape[0], where)
    weights = None if w_train is None else _weights(w_train, y_train.shape[0], where)
    return Dataset(name, task, inputs["train"], y_train, inputs["val"], y_val, groups, weights)


def _weights(w: np.ndarray, n_train: int, where: str) -> np.ndarray:
    """w_train as [N] float64: one finite weight >= 0 per training sample, not all 0."""
    w = _one_per_row(w, n_train, "w_train", "weight per training sample", where)
    if not (np.issubdtype(w.dtype, np.number) or w.dtype == bool):
        raise DataError(f"w_train: weights must be numbers, got dtype {w.dtype}{where}")
    w = w.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise DataError(f"w_train: weights must be finite and >= 0 (row {int(bad[0])} is {w[bad[0]]}){where}")
    if not w.any():
        raise DataError(f"w_train: every weight is 0{where}")
    return w


def _groups(g: np.ndarray, n_val: int, where: str) -> np.ndarray:
    """g_val as [V] int64: one integer group id per validation sample."""
    g = _one_per_row(g, n_val, "g_val", "group id per validation sample", where)
    if not (np.issubdtype(g.dtype, np.integer) or g.dtype == bool):
        raise DataError(f"g_val: group ids must be integers, got dtype {g.dtype}{where}")
    return g.astype(np.int64)


def _one_per_row(values: np.ndarray, n_rows: int, key: str, what: str, where: str) -> np.ndarray:
    """`values` as a 1-D array of n_rows entries, else a DataError naming `key` (`what`: "weight per sample")."""
    values = np.asarray(values)
    if values.ndim != 1 or values.shape[0] != n_rows:
        raise DataError(f"{key}: needs one {what} ({n_rows}), got shape {values.shape}{where}")
    return values


def _key(prefix: str, name: str, nest: Mapping[str, np.ndarray]) -> str:
    """How an input is named in messages: x_train for a single input called "x", else x_train.<name>."""
    return prefix if list(nest) == [SINGLE_INPUT] else f"{prefix}.{name}"


def _features(key: str, x: np.ndarray, n_rows: int, dtype: type, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{key}: features must be numeric, got dtype {x.dtype}{where}")
    if x.ndim < 2:
        raise DataError(f"{key}: needs a sample axis and at least one feature axis, got shape {x.shape}{where}")
    if x.shape[0] == 0 or x.size == 0:
        raise DataError(f"{key}: empty (shape {x.shape}){where}")
    if x.shape[0] != n_rows:
        raise DataError(f"{key} has {x.shape[0]} rows but its targets have {n_rows}{where}")
    x = np.ascontiguousarray(x, dtype=dtype)
    if not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise DataError(f"{key}: NaN or inf in features (first at row {row}){where}")
    return x


def _targets(task: str, key: str, y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise DataError(f"{key}: targets must be numeric, got dtype {y.dtype}{where}")
    if y.ndim == 0:
        raise DataError(f"{key}: needs one target per sample, got a scalar{where}")
    if y.size == 0:
        raise DataError(f"{key}: empty (shape {y.shape}){where}")
    y_float = y.astype(np.float64)
    if not np.all(np.isfinite(y_float)):
        row = int(np.argwhere(~np.isfinite(y_float.reshape(y.shape[0], -1)))[0, 0])
        raise DataError(f"{key}: NaN or inf in targets (first at row {row}){where}")
    if task == "regression":
        if y.ndim > 2:
            raise DataError(f"{key}: regression targets must have shape [n] or [n, k], got {y.shape}{where}")
        return np.ascontiguousarray(y_float)
    if y.ndim == 2 and y.shape[1] == 1:
        y_float = y_float[:, 0]
    if y_float.ndim != 1:
        raise DataError(
            f"{key}: class labels must be one class id per sample, got shape {y.shape}{where} (for float targets use "
            "task=regression)"
        )
    if not np.all(y_float == np.round(y_float)) or y_float.min() < 0:
        raise DataError(
            f"{key}: class labels must be non-negative integers{where} (for float targets use task=regression)"
        )
    return y_float.astype(np.int64)


def _check_classes(y_train: np.ndarray, y_val: np.ndarray, where: str) -> None:
    unseen = np.setdiff1d(y_val, y_train)
    if unseen.size:
        raise DataError(f"y_val: label {int(unseen[0])} never occurs in y_train{where}")
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    counts = np.bincount(y_train, minlength=num_classes)
    if np.count_nonzero(counts) == 1:
        log.warning(
            "y_train holds a single class (%d)%s: every influence score will be about 0", int(y_train[0]), where
        )
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        log.warning(
            "%d classes inferred from the labels (0..%d), but no training sample has label %s%s",
            num_classes,
            num_classes - 1,
            ", ".join(map(str, missing[:5])),
            where,
        )
