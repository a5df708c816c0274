"""Validation groups (influence.queries=groups): npz array g_val and parquet data.group_column, aligned
with the validation rows they name; bad group ids are one-line DataErrors naming the array or column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataSettings
from pipeline.data import load_dataset
from pipeline.errors import DataError

RNG = np.random.default_rng(0)
X_TRAIN, Y_TRAIN = RNG.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
X_VAL, Y_VAL = RNG.normal(size=(12, 4)).astype(np.float32), np.arange(12) % 3
G_VAL = np.array([5, 5, 7, 7, 7, 9, 9, 9, 9, 5, 7, 9])


def npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return DataSettings(source="npz", path=str(path))


def test_npz_g_val_follows_the_validation_rows(tmp_path):
    ds = load_dataset(npz(tmp_path, x_train=X_TRAIN, y_train=Y_TRAIN, x_val=X_VAL, y_val=Y_VAL, g_val=G_VAL))
    assert ds.g_val.dtype == np.int64 and ds.g_val.tolist() == G_VAL.tolist()
    np.testing.assert_array_equal(ds.x_val["x"], X_VAL)


def test_npz_g_val_with_validation_from_test(tmp_path):
    ds = load_dataset(npz(tmp_path, x_train=X_TRAIN, y_train=Y_TRAIN, x_test=X_VAL, y_test=Y_VAL, g_val=G_VAL))
    assert ds.g_val.tolist() == G_VAL.tolist() and ds.n_val == 12


def test_no_groups_without_g_val(tmp_path):
    assert load_dataset(npz(tmp_path, x_train=X_TRAIN, y_train=Y_TRAIN, x_val=X_VAL, y_val=Y_VAL)).g_val is None
    assert load_dataset(DataSettings()).g_val is None


@pytest.mark.parametrize(
    "g_val, message",
    [
        (G_VAL[:-1], r"^g_val: needs one group id per validation sample \(12\), got shape \(11,\) in "),
        (G_VAL.astype(float) + 0.5, r"^g_val: group ids must be integers, got dtype float64 in "),
        (G_VAL.reshape(3, 4), r"^g_val: needs one group id per validation sample \(12\), got shape \(3, 4\)"),
    ],
)
def test_bad_g_val_is_refused(tmp_path, g_val, message):
    with pytest.raises(DataError, match=message):
        load_dataset(npz(tmp_path, x_train=X_TRAIN, y_train=Y_TRAIN, x_val=X_VAL, y_val=Y_VAL, g_val=g_val))


def test_g_val_with_a_split_validation_set_is_refused(tmp_path):
    settings = npz(tmp_path, x_train=X_TRAIN, y_train=Y_TRAIN, g_val=G_VAL)
    with pytest.raises(DataError, match="g_val needs its validation arrays"):
        load_dataset(DataSettings(**{**settings.__dict__, "val_from": "split"}))


def frame(groups):
    return pd.DataFrame(
        {"a": RNG.normal(size=20), "b": RNG.normal(size=20), "label": np.arange(20) % 2, "group": groups}
    )


def test_parquet_group_column_with_a_split_column(tmp_path):
    df = frame(np.arange(20) // 4)
    df["split"] = ["train", "train", "val", "val"] * 5
    df.to_parquet(tmp_path / "d.parquet")
    ds = load_dataset(
        DataSettings(source="parquet", path=str(tmp_path / "d.parquet"), split_column="split", group_column="group")
    )
    is_val = np.array([False, False, True, True] * 5)
    assert ds.g_val.tolist() == (np.arange(20) // 4)[is_val].tolist()
    assert ds.input_shapes == {"x": (2,)}  # the group column is not a feature
    np.testing.assert_array_equal(ds.x_val["x"][:, 0], df["a"].to_numpy()[is_val].astype(np.float32))


def test_parquet_group_column_follows_the_held_out_rows(tmp_path):
    df = frame(np.arange(20))  # group id = row: the held-out rows' ids must come with them
    df["a"] = np.arange(20, dtype=float)
    df.to_parquet(tmp_path / "d.parquet")
    ds = load_dataset(
        DataSettings(source="parquet", path=str(tmp_path / "d.parquet"), group_column="group", feature_columns=("a",))
    )
    assert ds.g_val.tolist() == ds.x_val["x"][:, 0].astype(int).tolist()


@pytest.mark.parametrize(
    "groups, column, message",
    [
        (np.arange(20), "team", r"^data\.group_column='team': no such column in "),
        (np.arange(20) / 2, "group", r"^data\.group_column='group': group ids must be integers, got double in "),
        ([1.0] * 19 + [None], "group", r"^data\.group_column='group': 1 null values in "),
    ],
)
def test_bad_group_column_is_refused(tmp_path, groups, column, message):
    frame(groups).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=message):
        load_dataset(DataSettings(source="parquet", path=str(tmp_path / "d.parquet"), group_column=column))
