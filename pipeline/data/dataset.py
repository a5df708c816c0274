"""Load a dataset from the configured source and check it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits, make_classification
from sklearn.model_selection import train_test_split

from pipeline.config import DataSettings
from pipeline.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Train and validation arrays. x_*: [n, d] float32, flat; y_*: [n] int64 class ids in [0, num_classes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_val": int(self.x_val.shape[0]),
            "n_features": self.n_features,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


def load_dataset(settings: DataSettings) -> Dataset:
    """Load and check the configured source; raises DataError naming the file, key or column at fault."""
    loaders = {"digits": _digits, "synthetic": _synthetic, "npz": _npz, "parquet": _parquet}
    name, x_train, y_train, x_val, y_val, input_shape = loaders[settings.source](settings)
    if settings.max_train is not None:
        x_train, y_train = x_train[: settings.max_train], y_train[: settings.max_train]
    return _checked(name, x_train, y_train, x_val, y_val, input_shape)


def _split(x: np.ndarray, y: np.ndarray, s: DataSettings) -> tuple[np.ndarray, ...]:
    """Stratified hold-out of `val_fraction` rows (falls back to a plain split when a class is too small)."""
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.size and counts.min() >= 2 else None
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=s.val_fraction, random_state=s.split_seed, stratify=stratify)
    return x_tr, y_tr, x_va, y_va


def _digits(s: DataSettings):
    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    return ("digits", *_split(x, bunch.target, s), (8, 8, 1))


def _synthetic(s: DataSettings):
    if s.n_informative > s.n_features:
        raise DataError(f"data.n_informative={s.n_informative}: must not exceed data.n_features={s.n_features}")
    try:
        x, y = make_classification(
            n_samples=s.n_samples,
            n_features=s.n_features,
            n_informative=s.n_informative,
            n_redundant=0,
            n_classes=s.n_classes,
            random_state=s.split_seed,
        )
    except ValueError as exc:
        raise DataError(f"data.n_informative={s.n_informative}, data.n_classes={s.n_classes}: not a valid synthetic set ({exc})") from None
    return ("synthetic", *_split(x.astype(np.float32), y, s), (s.n_features,))


def _existing(path: str | None, setting: str = "data.path") -> Path:
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise DataError(f"{setting}={path}: file not found")
    return p


def _npz(s: DataSettings):
    path = _existing(s.path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile/ValueError: not an npz
        raise DataError(f"data.path={path}: not a readable .npz file ({exc})") from None
    with archive:
        keys = set(archive.files)
        for key in ("x_train", "y_train"):
            if key not in keys:
                raise DataError(f"data.path={path}: missing array {key!r} (has {', '.join(sorted(keys))})")
        x_train, y_train = archive["x_train"], archive["y_train"]
        if x_train.shape[0] != y_train.shape[0]:
            raise DataError(f"data.path={path}: x_train has {x_train.shape[0]} rows but y_train has {y_train.shape[0]}")
        if {"x_val", "y_val"} <= keys:
            x_val, y_val = archive["x_val"], archive["y_val"]
        elif s.val_from == "test" and {"x_test", "y_test"} <= keys:
            x_val, y_val = archive["x_test"], archive["y_test"]
        elif s.val_from == "split":
            x_train, y_train, x_val, y_val = _split(x_train, y_train, s)
        else:
            raise DataError(f"data.path={path}: needs x_val/y_val or x_test/y_test (or set data.val_from=split)")
    if x_train.ndim < 2:
        raise DataError(f"data.path={path}: x_train must have a sample axis and features, got shape {x_train.shape}")
    if x_train.shape[1:] != x_val.shape[1:]:
        raise DataError(f"data.path={path}: x_train sample shape {x_train.shape[1:]} differs from validation {x_val.shape[1:]}")
    sample_shape = tuple(int(n) for n in x_train.shape[1:])
    input_shape = (*sample_shape, 1) if len(sample_shape) == 2 else sample_shape
    scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    flat = lambda a: a.reshape(a.shape[0], -1).astype(np.float32) / np.float32(scale)  # noqa: E731
    return (path.stem, flat(x_train), y_train, flat(x_val), y_val, input_shape)


def _parquet(s: DataSettings):
    path = _existing(s.path)
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"data.path={path}: not a readable Parquet file ({exc})") from None
    names = table.column_names
    if s.label_column not in names:
        raise DataError(f"data.label_column={s.label_column!r}: no such column in {path} (has {', '.join(names)})")
    if s.split_column is not None and s.split_column not in names:
        raise DataError(f"data.split_column={s.split_column!r}: no such column in {path}")
    if s.feature_columns is not None:
        columns = list(s.feature_columns)
        for c in columns:
            if c not in names:
                raise DataError(f"data.feature_columns: no column {c!r} in {path}")
    else:
        skip = {s.label_column, s.split_column}
        columns = [
            c for c in names
            if c not in skip and (pa.types.is_integer(table[c].type) or pa.types.is_floating(table[c].type) or pa.types.is_fixed_size_list(table[c].type))
        ]
    if not columns:
        raise DataError(f"data.path={path}: no numeric feature columns besides {s.label_column!r}")
    x = np.concatenate([_column_matrix(table, c, path) for c in columns], axis=1)
    labels = table[s.label_column]
    if not (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)):
        raise DataError(f"data.label_column={s.label_column!r}: type {labels.type} in {path}; labels must be integer class ids")
    if labels.null_count:
        raise DataError(f"data.label_column={s.label_column!r}: {labels.null_count} missing labels in {path}")
    y = labels.to_numpy()
    if s.split_column is None:
        return (path.stem, *_split(x, y, s), (x.shape[1],))
    split = np.asarray(table[s.split_column].to_pylist(), dtype=object)
    bad = sorted({str(v) for v in split} - {"train", "val"})
    if bad:
        raise DataError(f"data.split_column={s.split_column!r}: values must be 'train' or 'val', found {bad[0]!r}")
    is_train = split == "train"
    return (path.stem, x[is_train], y[is_train], x[~is_train], y[~is_train], (x.shape[1],))


def _column_matrix(table: pa.Table, column: str, path: Path) -> np.ndarray:
    col = table[column]
    if col.null_count:
        raise DataError(f"column {column!r} in {path}: {col.null_count} missing values")
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DataError(f"column {column!r} in {path}: type {col.type} is not numeric")
    return col.to_numpy().astype(np.float32).reshape(-1, 1)


def _checked(name, x_train, y_train, x_val, y_val, input_shape) -> Dataset:
    """Validate shapes, finiteness and labels; return the Dataset with canonical dtypes."""
    y_train, y_val = (np.squeeze(y, axis=1) if y.ndim == 2 and y.shape[1] == 1 else y for y in (y_train, y_val))
    for key, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        if y.ndim != 1:
            raise DataError(f"y_{key}: labels must be one class id per sample, got shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"x_{key} has {x.shape[0]} rows but y_{key} has {y.shape[0]}")
        if x.shape[0] == 0:
            raise DataError(f"x_{key}: no samples")
        if not np.all(np.isfinite(x)):
            row = int(np.argwhere(~np.isfinite(x))[0, 0])
            raise DataError(f"x_{key}: NaN or inf in features (first at row {row})")
        y_float = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y_float)) or not np.all(y_float == np.round(y_float)) or y_float.min() < 0:
            raise DataError(f"y_{key}: labels must be non-negative integers (class ids)")
    if x_train.shape[1] != x_val.shape[1]:
        raise DataError(f"x_train has {x_train.shape[1]} features but x_val has {x_val.shape[1]}")
    y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    unseen = np.setdiff1d(y_val, y_train)
    if unseen.size:
        raise DataError(f"y_val: label {int(unseen[0])} never occurs in y_train")
    if int(np.prod(input_shape)) != x_train.shape[1]:
        raise DataError(f"input shape {input_shape} does not hold {x_train.shape[1]} features")
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=y_train,
        x_val=np.ascontiguousarray(x_val, dtype=np.float32),
        y_val=y_val,
        input_shape=tuple(int(n) for n in input_shape),
        num_classes=num_classes,
    )
