"""Dataset (the nest of named inputs, targets per task), make_dataset's checks and the label warnings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.config import DataSettings
from pipeline.data import SINGLE_INPUT, Dataset, describe, load_dataset, make_dataset
from pipeline.errors import DataError

LOGGER = "pipeline.data"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith(LOGGER)]


def _npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _load_npz(path, **kw) -> Dataset:
    return load_dataset(DataSettings(source="npz", path=str(path), **kw))


# ------------------------------------------------------------------------------------------ properties


def test_single_input_is_named_x():
    assert SINGLE_INPUT == "x"


def test_classification_dataset_properties():
    ds = make_dataset(
        "toy",
        "classification",
        {"x": np.ones((5, 2, 3))},
        np.array([0, 1, 2, 1, 0]),
        {"x": np.zeros((2, 2, 3))},
        np.array([2, 0]),
    )
    assert ds.name == "toy" and ds.task == "classification"
    assert ds.input_names == ("x",) and ds.input_shapes == {"x": (2, 3)}
    assert ds.n_train == 5 and ds.n_val == 2
    assert ds.num_classes == 3 and ds.output_dim is None
    assert (
        ds.x_train["x"].dtype == np.float64 and ds.y_train.dtype == np.int64 and ds.y_val.dtype == np.int64
    )  # float64 kept
    assert ds.summary() == {
        "name": "toy",
        "task": "classification",
        "n_train": 5,
        "n_val": 2,
        "inputs": {"x": [2, 3]},
        "num_classes": 3,
        "output_dim": None,
    }
    assert not any(hasattr(ds, old) for old in ("n_features", "input_shape", "is_image"))


def test_regression_dataset_properties_with_several_inputs():
    x_train = {"a": np.ones((4, 2)), "b": np.ones((4, 3, 3), np.float16)}
    x_val = {"a": np.ones((1, 2)), "b": np.ones((1, 3, 3))}
    ds = make_dataset("reg", "regression", x_train, np.ones((4, 2), np.float32), x_val, np.ones((1, 2)))
    assert ds.input_names == ("a", "b") and ds.input_shapes == {"a": (2,), "b": (3, 3)}
    # Each input's precision follows its training array: float64 stays float64 (so float64 runs see the data
    # exactly), anything else becomes float32; validation follows training.
    assert ds.x_train["a"].dtype == ds.x_val["a"].dtype == np.float64
    assert ds.x_train["b"].dtype == ds.x_val["b"].dtype == np.float32
    assert ds.y_train.dtype == np.float64 and ds.y_train.shape == (4, 2)
    assert ds.output_dim == 2 and ds.num_classes is None
    assert ds.summary() == {
        "name": "reg",
        "task": "regression",
        "n_train": 4,
        "n_val": 1,
        "inputs": {"a": [2], "b": [3, 3]},
        "num_classes": None,
        "output_dim": 2,
    }


def test_regression_output_dim_of_a_target_vector():
    ds = make_dataset(
        "r", "regression", {"x": np.ones((3, 1))}, np.array([0.5, 1.5, 2.5]), {"x": np.ones((1, 1))}, np.array([1.0])
    )
    assert ds.output_dim == 1 and ds.y_train.shape == (3,)


def test_num_classes_counts_the_highest_label_of_either_split():
    ds = make_dataset(
        "c", "classification", {"x": np.ones((4, 1))}, np.array([0, 1, 3, 3]), {"x": np.ones((1, 1))}, np.array([1])
    )
    assert ds.num_classes == 4


def test_bool_features_and_labels_are_accepted():
    ds = make_dataset(
        "b",
        "classification",
        {"x": np.array([[True], [False], [True]])},
        np.array([True, False, True]),
        {"x": np.ones((1, 1), bool)},
        np.array([False]),
    )
    assert ds.x_train["x"].dtype == np.float32 and ds.x_train["x"][:, 0].tolist() == [1.0, 0.0, 1.0]
    assert ds.y_train.tolist() == [1, 0, 1] and ds.num_classes == 2


def test_describe_one_line():
    cls = make_dataset(
        "toy",
        "classification",
        {"x": np.ones((5, 8, 8, 1))},
        np.array([0, 1, 2, 1, 0]),
        {"x": np.ones((2, 8, 8, 1))},
        np.array([2, 0]),
    )
    assert describe(cls) == "toy: 5 training / 2 validation samples; inputs x 8x8x1; 3 classes (labels 0..2)"
    reg = make_dataset(
        "reg",
        "regression",
        {"a": np.ones((4, 2)), "b": np.ones((4, 3, 3))},
        np.ones((4, 2)),
        {"a": np.ones((1, 2)), "b": np.ones((1, 3, 3))},
        np.ones((1, 2)),
    )
    assert describe(reg) == "reg: 4 training / 1 validation samples; inputs a 2, b 3x3; float targets of width 2"


# ----------------------------------------------------------------------------------------------- checks


def test_no_inputs():
    with pytest.raises(DataError, match=r"^x_train: no inputs"):
        make_dataset("e", "classification", {}, np.array([0, 1]), {}, np.array([0, 1]))


def test_named_input_missing_on_either_side():
    with pytest.raises(DataError, match=r"^x_val\.b: missing \(x_train\.b is present\)$"):
        make_dataset(
            "m",
            "classification",
            {"a": np.ones((2, 2)), "b": np.ones((2, 2))},
            np.array([0, 1]),
            {"a": np.ones((2, 2))},
            np.array([0, 1]),
        )
    with pytest.raises(DataError, match=r"^x_train\.c: missing \(x_val\.c is present\)$"):
        make_dataset(
            "m",
            "classification",
            {"a": np.ones((2, 2))},
            np.array([0, 1]),
            {"a": np.ones((2, 2)), "c": np.ones((2, 2))},
            np.array([0, 1]),
        )


def test_where_ends_every_message():
    with pytest.raises(
        DataError, match=r"^x_train: needs a sample axis and at least one feature axis, got shape \(3,\) in data\.npz$"
    ):
        make_dataset(
            "w",
            "classification",
            {"x": np.ones(3)},
            np.array([0, 1, 0]),
            {"x": np.ones((1, 1))},
            np.array([0]),
            where=" in data.npz",
        )


def test_scalar_targets():
    with pytest.raises(DataError, match=r"^y_train: needs one target per sample, got a scalar"):
        make_dataset("s", "regression", {"x": np.ones((1, 1))}, np.array(1.0), {"x": np.ones((1, 1))}, np.array([1.0]))


def test_object_features_are_refused():
    x = np.empty((2, 1), dtype=object)
    x[:, 0] = [1.0, 2.0]
    with pytest.raises(DataError, match=r"^x_train: features must be numeric, got dtype object"):
        make_dataset("o", "classification", {"x": x}, np.array([0, 1]), {"x": np.ones((1, 1))}, np.array([0]))


def test_regression_targets_without_columns_are_empty(tmp_path):
    path = _npz(
        tmp_path / "y0.npz",
        x_train=np.ones((4, 2)),
        y_train=np.zeros((4, 0)),
        x_val=np.ones((2, 2)),
        y_val=np.zeros((2, 0)),
    )
    with pytest.raises(DataError, match=r"^y_train: empty"):
        load_dataset(DataSettings(source="npz", path=path), task="regression")


def test_validation_inputs_follow_the_training_order(tmp_path):
    a, b = np.arange(8.0).reshape(4, 2), -np.arange(8.0).reshape(4, 2)
    arrays = {
        "x_train.a": a,
        "x_train.b": b,
        "y_train": np.array([0, 1, 0, 1]),
        "x_val.b": b[:2],
        "x_val.a": a[:2],
        "y_val": np.array([0, 1]),
    }
    ds = _load_npz(_npz(tmp_path / "order.npz", **arrays))
    assert list(ds.x_val) == list(ds.x_train) == ["a", "b"]


# ---------------------------------------------------------------------------------------------- warnings


def test_missing_label_in_range_logs_a_warning(tmp_path, caplog):
    # labels 0..10, no training sample with label 3: 11 classes inferred, one of them empty
    y_train = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 10])
    path = _npz(
        tmp_path / "gap.npz", x_train=np.ones((11, 2)), y_train=y_train, x_val=np.ones((2, 2)), y_val=np.array([0, 10])
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = _load_npz(path)
    assert ds.num_classes == 11
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "11 classes" in warnings[0] and "0..10" in warnings[0]
    assert "no training sample has label 3" in warnings[0] and "gap.npz" in warnings[0]


def test_several_missing_labels_are_named(tmp_path, caplog):
    path = _npz(
        tmp_path / "gaps.npz",
        x_train=np.ones((4, 2)),
        y_train=np.array([0, 3, 6, 6]),
        x_val=np.ones((1, 2)),
        y_val=np.array([6]),
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _load_npz(path)
    (warning,) = _warnings(caplog)
    assert "7 classes" in warning and "label 1, 2, 4, 5" in warning


def test_single_class_training_set_logs_a_warning(tmp_path, caplog):
    path = _npz(
        tmp_path / "one.npz",
        x_train=np.ones((4, 2)),
        y_train=np.zeros(4, int),
        x_val=np.ones((2, 2)),
        y_val=np.zeros(2, int),
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = _load_npz(path)
    assert ds.num_classes == 1
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "single class (0)" in warnings[0] and "one.npz" in warnings[0]


def test_complete_labels_log_no_warning(tmp_path, caplog):
    path = _npz(
        tmp_path / "ok.npz",
        x_train=np.ones((6, 2)),
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_val=np.ones((2, 2)),
        y_val=np.array([2, 0]),
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _load_npz(path)
        load_dataset(DataSettings(source="synthetic", n_samples=60))
    assert _warnings(caplog) == []


def test_regression_targets_log_no_class_warning(tmp_path, caplog):
    # targets that would be a one-class set (and a gap) under classification
    path = _npz(
        tmp_path / "reg.npz",
        x_train=np.ones((4, 2)),
        y_train=np.array([5.0, 5.0, 5.0, 5.0]),
        x_val=np.ones((1, 2)),
        y_val=np.array([5.0]),
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = load_dataset(DataSettings(source="npz", path=path), task="regression")
    assert ds.num_classes is None and _warnings(caplog) == []
