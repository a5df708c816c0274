"""Data sources (digits, synthetic, npz, parquet) and the checks that turn bad inputs into DataError."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataSettings
from pipeline.data import Dataset, load_dataset
from pipeline.errors import DataError


def _assert_canonical(ds: Dataset) -> None:
    assert ds.x_train.dtype == np.float32 and ds.x_val.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_val.dtype == np.int64
    assert ds.x_train.ndim == 2 and ds.x_val.ndim == 2
    assert ds.y_train.shape == (ds.x_train.shape[0],) and ds.y_val.shape == (ds.x_val.shape[0],)
    assert ds.x_train.flags.c_contiguous and ds.x_val.flags.c_contiguous


# --------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataSettings(source="digits"))


def test_digits_shapes_and_ranges(digits):
    _assert_canonical(digits)
    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 64)
    assert digits.x_val.shape == (360, 64)
    assert digits.n_train == 1437 and digits.n_features == 64
    assert digits.input_shape == (8, 8, 1) and digits.is_image
    assert digits.num_classes == 10
    assert float(digits.x_train.min()) == 0.0 and float(digits.x_train.max()) == 1.0
    assert float(digits.x_val.min()) == 0.0 and float(digits.x_val.max()) <= 1.0
    assert set(np.unique(digits.y_train)) == set(range(10)) and set(np.unique(digits.y_val)) == set(range(10))
    assert digits.summary() == {"name": "digits", "n_train": 1437, "n_val": 360, "n_features": 64, "input_shape": [8, 8, 1], "num_classes": 10}


def test_digits_pixels_are_sixteenths(digits):
    # sklearn digits are integers 0..16, scaled by 1/16
    assert np.array_equal(digits.x_train * 16, np.round(digits.x_train * 16))


def test_digits_split_is_stratified(digits):
    # 1797 digits, 174..183 per class: a stratified 20 % hold-out has 35..37 of each
    counts = np.bincount(digits.y_val, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_sample_ids_are_stable(digits):
    again = load_dataset(DataSettings(source="digits"))
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert np.array_equal(getattr(again, name), getattr(digits, name)), name


def test_digits_split_seed_changes_the_split(digits):
    other = load_dataset(DataSettings(source="digits", split_seed=1))
    assert other.x_train.shape == digits.x_train.shape
    assert not np.array_equal(other.y_train, digits.y_train)


def test_digits_max_train_keeps_first_rows(digits):
    small = load_dataset(DataSettings(source="digits", max_train=100))
    assert small.n_train == 100
    assert np.array_equal(small.x_train, digits.x_train[:100])
    assert np.array_equal(small.y_train, digits.y_train[:100])
    assert np.array_equal(small.x_val, digits.x_val)
    assert np.array_equal(small.y_val, digits.y_val)


def test_digits_val_fraction():
    ds = load_dataset(DataSettings(source="digits", val_fraction=0.5))
    assert ds.n_train == 898 and ds.x_val.shape[0] == 899


# ------------------------------------------------------------------------------------------ synthetic


@pytest.mark.parametrize(
    "n_samples,n_features,n_classes,n_informative",
    [(50, 5, 2, 2), (101, 3, 4, 3), (200, 20, 3, 10), (300, 30, 6, 8)],
)
def test_synthetic_shapes(n_samples, n_features, n_classes, n_informative):
    ds = load_dataset(
        DataSettings(source="synthetic", n_samples=n_samples, n_features=n_features, n_classes=n_classes, n_informative=n_informative)
    )
    _assert_canonical(ds)
    n_val = math.ceil(0.2 * n_samples)
    assert ds.x_train.shape == (n_samples - n_val, n_features)
    assert ds.x_val.shape == (n_val, n_features)
    assert ds.input_shape == (n_features,) and not ds.is_image
    assert ds.num_classes == n_classes
    assert ds.name == "synthetic"


def test_synthetic_is_deterministic():
    a = load_dataset(DataSettings(source="synthetic", n_samples=100))
    b = load_dataset(DataSettings(source="synthetic", n_samples=100))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val)


def test_synthetic_n_informative_above_n_features():
    with pytest.raises(DataError, match=r"data\.n_informative=10.*data\.n_features=5"):
        load_dataset(DataSettings(source="synthetic", n_features=5, n_informative=10))


def test_synthetic_too_few_informative_features_for_classes_is_data_error():
    with pytest.raises(DataError, match=r"data\.n_informative"):
        load_dataset(DataSettings(source="synthetic", n_classes=10, n_informative=3))


# ------------------------------------------------------------------------------------------------ npz


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _load(path, **kw) -> Dataset:
    source = "parquet" if str(path).endswith(".parquet") else "npz"
    return load_dataset(DataSettings(source=source, path=str(path), **kw))


def test_npz_with_validation_arrays_loads_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(12, 5)).astype(np.float32)
    y_train = np.array([0, 1, 2] * 4, dtype=np.int32)
    x_val = rng.normal(size=(4, 5)).astype(np.float32)
    y_val = np.array([2, 1, 0, 1], dtype=np.int64)
    path = _npz(tmp_path / "small.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    ds = _load(path)
    _assert_canonical(ds)
    assert ds.name == "small"
    assert np.array_equal(ds.x_train, x_train) and np.array_equal(ds.x_val, x_val)
    assert np.array_equal(ds.y_train, y_train) and np.array_equal(ds.y_val, y_val)
    assert ds.input_shape == (5,) and ds.num_classes == 3


def test_npz_float64_features_are_not_rescaled(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(6, 4) * 10
    path = _npz(tmp_path / "f.npz", x_train=x, y_train=np.array([0, 1] * 3), x_val=x[:2], y_val=np.array([0, 1]))
    ds = _load(path)
    assert np.array_equal(ds.x_train, x.astype(np.float32))


def test_npz_max_train(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    path = _npz(tmp_path / "m.npz", x_train=x, y_train=np.arange(10) % 2, x_val=x[:2], y_val=np.array([0, 1]))
    ds = _load(path, max_train=3)
    assert np.array_equal(ds.x_train, x[:3]) and np.array_equal(ds.y_train, [0, 1, 0])


@pytest.fixture
def mnist_like(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8),
        "y_train": np.tile(np.arange(10, dtype=np.uint8), 4),
        "x_test": rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8),
        "y_test": np.arange(10, dtype=np.uint8),
    }
    arrays["x_train"][0, 0, 0] = 255
    arrays["x_train"][0, 0, 1] = 0
    return _npz(tmp_path / "mnist.npz", **arrays), arrays


def test_npz_keras_mnist_validation_from_test(mnist_like):
    path, a = mnist_like
    ds = _load(path, val_from="test")
    _assert_canonical(ds)
    assert ds.name == "mnist"
    assert ds.input_shape == (28, 28, 1) and ds.is_image
    assert ds.x_train.shape == (40, 784) and ds.x_val.shape == (10, 784)
    assert np.array_equal(ds.x_train, a["x_train"].reshape(40, 784).astype(np.float32) / np.float32(255))
    assert np.array_equal(ds.x_val, a["x_test"].reshape(10, 784).astype(np.float32) / np.float32(255))
    assert ds.x_train[0, 0] == 1.0 and ds.x_train[0, 1] == 0.0
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert np.array_equal(ds.y_train, a["y_train"]) and np.array_equal(ds.y_val, a["y_test"])
    assert ds.num_classes == 10


def test_npz_keras_mnist_validation_from_split(mnist_like):
    path, a = mnist_like
    ds = _load(path, val_from="split", val_fraction=0.25)
    _assert_canonical(ds)
    assert ds.input_shape == (28, 28, 1)
    assert ds.x_train.shape == (30, 784) and ds.x_val.shape == (10, 784)
    # held out from train, test arrays unused
    original = {r.tobytes() for r in a["x_train"].reshape(40, 784).astype(np.float32) / np.float32(255)}
    test = {r.tobytes() for r in a["x_test"].reshape(10, 784).astype(np.float32) / np.float32(255)}
    got_train = {r.tobytes() for r in ds.x_train}
    got_val = {r.tobytes() for r in ds.x_val}
    assert got_train | got_val == original and not got_train & got_val
    assert not got_val & test


def test_npz_split_is_stratified(mnist_like):
    path, _ = mnist_like
    ds = _load(path, val_from="split", val_fraction=0.25)
    # 4 samples of each of 10 classes, 10 held out: one of each class
    assert sorted(ds.y_val.tolist()) == list(range(10))


# -------------------------------------------------------------------------------------------- parquet


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1])


def test_parquet_fixed_size_list_features(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    y = np.arange(20) % 2
    path = tmp_path / "vectors.parquet"
    pq.write_table(pa.table({"features": _fixed_list(x), "label": pa.array(y, pa.int64())}), path)
    ds = _load(path)
    _assert_canonical(ds)
    assert ds.name == "vectors"
    assert ds.x_train.shape == (16, 6) and ds.x_val.shape == (4, 6)
    assert ds.input_shape == (6,) and ds.num_classes == 2
    # every row kept with its label, none twice
    rows = {(r.tobytes(), int(l)) for r, l in zip(x, y)}
    got = [(r.tobytes(), int(l)) for r, l in zip(np.vstack([ds.x_train, ds.x_val]), np.concatenate([ds.y_train, ds.y_val]))]
    assert set(got) == rows and len(got) == 20


def test_parquet_fixed_size_list_with_split_column_is_exact(tmp_path):
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    split = ["train", "val", "train", "train", "val"]
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"features": _fixed_list(x), "label": [0, 1, 1, 0, 0], "split": split}), path)
    ds = _load(path, split_column="split")
    assert np.array_equal(ds.x_train, x[[0, 2, 3]]) and np.array_equal(ds.y_train, [0, 1, 0])
    assert np.array_equal(ds.x_val, x[[1, 4]]) and np.array_equal(ds.y_val, [1, 0])


@pytest.fixture
def columns_table(tmp_path):
    table = pa.table(
        {
            "a": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
            "b": pa.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], pa.float64()),
            "note": ["x", "y", "z", "u", "v", "w"],
            "label": pa.array([0, 1, 0, 1, 2, 2], pa.int32()),
            "c": pa.array([-1, -2, -3, -4, -5, -6], pa.float32()),
            "part": ["train", "train", "val", "train", "train", "val"],
        }
    )
    path = tmp_path / "cols.parquet"
    pq.write_table(table, path)
    return path


def test_parquet_numeric_columns_split_column(columns_table):
    ds = _load(columns_table, split_column="part")
    _assert_canonical(ds)
    # every numeric column except the label, in file order; string columns skipped
    expected = np.array([[1, 0.5, -1], [2, 1.5, -2], [3, 2.5, -3], [4, 3.5, -4], [5, 4.5, -5], [6, 5.5, -6]], np.float32)
    train, val = [0, 1, 3, 4], [2, 5]
    assert np.array_equal(ds.x_train, expected[train]) and np.array_equal(ds.y_train, [0, 1, 1, 2])
    assert np.array_equal(ds.x_val, expected[val]) and np.array_equal(ds.y_val, [0, 2])
    assert ds.input_shape == (3,) and ds.num_classes == 3


def test_parquet_feature_columns_selection(columns_table):
    ds = _load(columns_table, split_column="part", feature_columns=("c", "a"))
    assert np.array_equal(ds.x_train, np.array([[-1, 1], [-2, 2], [-4, 4], [-5, 5]], np.float32))
    assert np.array_equal(ds.x_val, np.array([[-3, 3], [-6, 6]], np.float32))
    assert ds.input_shape == (2,)


def test_parquet_other_label_column(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"f": [1.0, 2.0, 3.0, 4.0], "target": [1, 0, 1, 0], "split": ["train", "train", "train", "val"]}), path)
    ds = _load(path, label_column="target", split_column="split")
    assert np.array_equal(ds.x_train[:, 0], [1, 2, 3]) and np.array_equal(ds.y_train, [1, 0, 1])


# ------------------------------------------------------------------------------------------ bad inputs

X4 = np.arange(12, dtype=np.float32).reshape(4, 3)
Y4 = np.array([0, 1, 0, 1])
X2 = np.ones((2, 3), np.float32)
Y2 = np.array([1, 0])


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match=r"data\.path=.*nope\.npz: file not found"):
        _load(missing)
    with pytest.raises(DataError, match=r"data\.path=.*nope\.parquet: file not found"):
        _load(tmp_path / "nope.parquet")


def test_npz_not_an_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    with pytest.raises(DataError, match=r"data\.path=.*junk\.npz: not a readable \.npz"):
        _load(path)


def test_npz_missing_y_train(tmp_path):
    path = _npz(tmp_path / "k.npz", x_train=X4, x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"k\.npz: missing array 'y_train'"):
        _load(path)


def test_npz_without_validation_arrays(tmp_path):
    path = _npz(tmp_path / "noval.npz", x_train=X4, y_train=Y4)
    with pytest.raises(DataError, match=r"noval\.npz: needs x_val/y_val or x_test/y_test.*data\.val_from=split"):
        _load(path, val_from="test")
    # half of a validation pair does not count either
    path = _npz(tmp_path / "half.npz", x_train=X4, y_train=Y4, x_val=X2)
    with pytest.raises(DataError, match=r"half\.npz: needs x_val/y_val"):
        _load(path)


def test_nan_in_x_train(tmp_path):
    x = X4.copy()
    x[2, 1] = np.nan
    path = _npz(tmp_path / "nan.npz", x_train=x, y_train=Y4, x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^x_train: NaN or inf.*row 2"):
        _load(path)


def test_inf_in_x_val(tmp_path):
    xv = X2.copy()
    xv[1, 0] = -np.inf
    path = _npz(tmp_path / "inf.npz", x_train=X4, y_train=Y4, x_val=xv, y_val=Y2)
    with pytest.raises(DataError, match=r"^x_val: NaN or inf.*row 1"):
        _load(path)


def test_negative_labels(tmp_path):
    path = _npz(tmp_path / "neg.npz", x_train=X4, y_train=np.array([0, -1, 0, 1]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^y_train: labels must be non-negative integers"):
        _load(path)
    path = _npz(tmp_path / "negval.npz", x_train=X4, y_train=Y4, x_val=X2, y_val=np.array([0, -2]))
    with pytest.raises(DataError, match=r"^y_val: labels must be non-negative integers"):
        _load(path)


def test_non_integer_labels(tmp_path):
    path = _npz(tmp_path / "frac.npz", x_train=X4, y_train=np.array([0.0, 1.5, 0.0, 1.0]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^y_train: labels must be non-negative integers"):
        _load(path)
    path = _npz(tmp_path / "nanlabel.npz", x_train=X4, y_train=Y4.astype(float), x_val=X2, y_val=np.array([0.0, np.nan]))
    with pytest.raises(DataError, match=r"^y_val: labels must be non-negative integers"):
        _load(path)


def test_integral_float_labels_are_accepted(tmp_path):
    path = _npz(tmp_path / "fl.npz", x_train=X4, y_train=Y4.astype(np.float64), x_val=X2, y_val=Y2.astype(np.float32))
    ds = _load(path)
    assert ds.y_train.dtype == np.int64 and np.array_equal(ds.y_train, Y4)


def test_y_val_label_above_train_labels(tmp_path):
    path = _npz(tmp_path / "unseen.npz", x_train=X4, y_train=Y4, x_val=X2, y_val=np.array([3, 0]))
    with pytest.raises(DataError, match=r"^y_val: label 3 never occurs in y_train"):
        _load(path)


def test_y_val_label_missing_from_train_inside_range(tmp_path):
    path = _npz(tmp_path / "gap.npz", x_train=X4, y_train=np.array([0, 2, 0, 2]), x_val=X2, y_val=np.array([1, 0]))
    with pytest.raises(DataError, match=r"y_val: label 1 never occurs in y_train"):
        _load(path)


def test_feature_mismatch_between_train_and_val(tmp_path):
    path = _npz(tmp_path / "feat.npz", x_train=X4, y_train=Y4, x_val=np.ones((2, 4), np.float32), y_val=Y2)
    with pytest.raises(DataError, match=r"data\.path=.*feat\.npz: x_train sample shape \(3,\) differs from validation \(4,\)"):
        _load(path)


def test_image_shape_mismatch_between_train_and_test_arrays(tmp_path):
    path = _npz(tmp_path / "img.npz", x_train=np.zeros((4, 2, 3)), y_train=Y4, x_test=np.zeros((2, 3, 2)), y_test=Y2)
    with pytest.raises(DataError, match=r"img\.npz: x_train sample shape \(2, 3\) differs"):
        _load(path)


def test_row_count_mismatch(tmp_path):
    path = _npz(tmp_path / "rows.npz", x_train=X4, y_train=np.array([0, 1, 0]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"rows\.npz: x_train has 4 rows but y_train has 3"):
        _load(path)
    path = _npz(tmp_path / "rowsval.npz", x_train=X4, y_train=Y4, x_val=X2, y_val=np.array([0, 1, 1]))
    with pytest.raises(DataError, match=r"^x_val has 2 rows but y_val has 3"):
        _load(path)


def test_row_count_mismatch_with_split(tmp_path):
    path = _npz(tmp_path / "rows.npz", x_train=X4, y_train=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"x_train has 4 rows but y_train has 3"):
        _load(path, val_from="split")


def test_column_vector_labels_are_flattened_or_rejected(tmp_path):
    path = _npz(tmp_path / "col.npz", x_train=X4, y_train=Y4.reshape(4, 1), x_val=X2, y_val=Y2)
    try:
        ds = _load(path)
    except DataError as exc:
        assert "y_train" in str(exc)
    else:
        assert ds.y_train.shape == (4,)


def _write(tmp_path, filename, **columns):
    path = tmp_path / filename
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_missing_label_column(tmp_path):
    path = _write(tmp_path, "nolabel.parquet", f=[1.0, 2.0, 3.0, 4.0], target=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"data\.label_column='label': no such column in .*nolabel\.parquet \(has f, target\)"):
        _load(path)


def test_parquet_label_nulls(tmp_path):
    path = _write(tmp_path, "nulls.parquet", f=[1.0, 2.0, 3.0, 4.0, 5.0], label=pa.array([0, None, 1, 0, None], pa.int64()))
    with pytest.raises(DataError, match=r"data\.label_column='label': 2 missing labels in .*nulls\.parquet"):
        _load(path)


def test_parquet_feature_nulls(tmp_path):
    path = _write(tmp_path, "fnull.parquet", f=pa.array([1.0, None, 3.0, 4.0]), label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"column 'f' in .*fnull\.parquet: 1 missing values"):
        _load(path)


def test_parquet_non_numeric_feature_column(tmp_path):
    path = _write(tmp_path, "str.parquet", f=[1.0, 2.0, 3.0, 4.0], name=["a", "b", "c", "d"], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"column 'name' in .*str\.parquet: type string is not numeric"):
        _load(path, feature_columns=("f", "name"))


def test_parquet_unknown_feature_column(tmp_path):
    path = _write(tmp_path, "fc.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"data\.feature_columns: no column 'g' in .*fc\.parquet"):
        _load(path, feature_columns=("f", "g"))


def test_parquet_no_numeric_features(tmp_path):
    path = _write(tmp_path, "nofeat.parquet", name=["a", "b", "c", "d"], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"nofeat\.parquet: no numeric feature columns besides 'label'"):
        _load(path)


def test_parquet_split_column_bad_value(tmp_path):
    path = _write(tmp_path, "split.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1], split=["train", "val", "test", "train"])
    with pytest.raises(DataError, match=re.escape("data.split_column='split': values must be 'train' or 'val', found 'test'")):
        _load(path, split_column="split")


def test_parquet_missing_split_column(tmp_path):
    path = _write(tmp_path, "nosplit.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"data\.split_column='part': no such column in .*nosplit\.parquet"):
        _load(path, split_column="part")


def test_parquet_split_column_without_val_rows(tmp_path):
    path = _write(tmp_path, "allTrain.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1], split=["train"] * 4)
    with pytest.raises(DataError, match=r"^x_val: no samples"):
        _load(path, split_column="split")


def test_parquet_not_parquet(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(DataError, match=r"data\.path=.*junk\.parquet: not a readable Parquet file"):
        _load(path)


def test_parquet_string_labels_are_data_error(tmp_path):
    path = _write(tmp_path, "strlabel.parquet", f=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], label=["x", "y", "x", "y", "x", "y"])
    with pytest.raises(DataError, match=r"label"):
        _load(path)
