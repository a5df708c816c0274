"""Schedules, checkpoints, score tables, atomic writes and the run manifest (pure NumPy/Arrow, no TF or Ray)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import OptimizerSettings, OutputSettings, Settings
from pipeline.errors import DataError
from pipeline.io import tables
from pipeline.io.checkpoints import StoredStates, load_state, retrain_hint, save_state
from pipeline.io.files import atomic_path, read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.manifest import Manifest
from pipeline.io.tables import (
    SCHEDULE_SCHEMA,
    SIGN_CONVENTION,
    input_grads,
    read_parts,
    read_schedule,
    scores_table,
    write_schedule,
    write_table,
)
from pipeline.kernels.schedule import Schedule, checkpoint_steps, make_schedule
from pipeline.results import StageResult


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------- schedule


def test_schedule_shapes_and_last_batch():
    s = make_schedule(n_train=10, batch_size=4, epochs=3, shuffle=True, seed=0, lr=0.25)
    assert s.n_steps == 9
    assert s.index.shape == (9, 4) and s.index.dtype == np.int64
    assert s.size.dtype == np.int32 and s.size.tolist() == [4, 4, 2] * 3
    assert s.lr.dtype == np.float64 and s.lr.tolist() == [0.25] * 9
    # unused slots hold -1
    for t in range(9):
        assert (s.index[t, s.size[t] :] == -1).all()
        assert (s.index[t, : s.size[t]] >= 0).all()


@pytest.mark.parametrize("n,b", [(10, 4), (12, 4), (7, 1), (5, 5), (33, 8)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_schedule_every_sample_once_per_epoch(n, b, shuffle):
    epochs = 3
    s = make_schedule(n, b, epochs, shuffle, seed=7, lr=0.1)
    per_epoch = math.ceil(n / b)
    assert s.n_steps == epochs * per_epoch
    for e in range(epochs):
        ids = np.concatenate([s.batch(t) for t in range(e * per_epoch, (e + 1) * per_epoch)])
        assert sorted(ids.tolist()) == list(range(n))
        sizes = s.size[e * per_epoch : (e + 1) * per_epoch].tolist()
        assert sizes == [b] * (n // b) + ([n % b] if n % b else [])
        if not shuffle:
            assert ids.tolist() == list(range(n))


def test_schedule_shuffle_uses_documented_permutation():
    s = make_schedule(20, 6, 2, True, seed=3, lr=0.1)
    for e in range(2):
        ids = np.concatenate([s.batch(t) for t in range(e * 4, (e + 1) * 4)])
        assert np.array_equal(ids, np.random.default_rng([3, e]).permutation(20))


def test_schedule_seeds():
    a = make_schedule(50, 8, 2, True, seed=0, lr=0.1)
    again = make_schedule(50, 8, 2, True, seed=0, lr=0.1)
    b = make_schedule(50, 8, 2, True, seed=1, lr=0.1)
    assert np.array_equal(a.index, again.index) and np.array_equal(a.size, again.size)
    assert not np.array_equal(a.index, b.index)
    # epochs of one seed differ too
    assert not np.array_equal(a.index[:7], a.index[7:])
    # without shuffling the seed does not matter
    assert np.array_equal(make_schedule(50, 8, 2, False, 0, 0.1).index, make_schedule(50, 8, 2, False, 5, 0.1).index)


@pytest.mark.parametrize(
    "n_steps,expected",
    [
        (0, [0]),
        (1, [0, 1]),
        (4, [0, 2, 4]),
        (10, [0, 4, 8, 10]),
        (16, [0, 4, 8, 12, 16]),
        (17, [0, 5, 10, 15, 17]),
        (100, list(range(0, 101, 10))),
    ],
)
def test_checkpoint_steps_default_spacing(n_steps, expected):
    assert checkpoint_steps(n_steps, None) == expected


@pytest.mark.parametrize("n_steps", [2, 3, 9, 45, 99, 1000, 1001])
def test_checkpoint_steps_default_properties(n_steps):
    steps = checkpoint_steps(n_steps, None)
    k = math.ceil(math.sqrt(n_steps))
    assert steps[0] == 0 and steps[-1] == n_steps
    gaps = np.diff(steps)
    assert (gaps[:-1] == k).all() and 0 < gaps[-1] <= k


@pytest.mark.parametrize(
    "n_steps,every,expected",
    [(10, 3, [0, 3, 6, 9, 10]), (10, 5, [0, 5, 10]), (10, 1, list(range(11))), (10, 20, [0, 10]), (10, 10, [0, 10])],
)
def test_checkpoint_steps_explicit(n_steps, every, expected):
    assert checkpoint_steps(n_steps, every) == expected


@pytest.mark.parametrize("n,b,epochs,shuffle", [(10, 4, 3, True), (12, 4, 2, False), (33, 8, 2, True), (5, 5, 1, True)])
def test_schedule_parquet_round_trip(tmp_path, n, b, epochs, shuffle):
    s = make_schedule(n, b, epochs, shuffle, seed=11, lr=0.03)
    path = tmp_path / "trajectory" / "seed=11" / "schedule.parquet"
    write_schedule(path, s)
    back = read_schedule(path)
    assert back.index.dtype == s.index.dtype and np.array_equal(back.index, s.index)
    assert back.size.dtype == s.size.dtype and np.array_equal(back.size, s.size)
    assert back.lr.dtype == s.lr.dtype and np.array_equal(back.lr, s.lr)
    assert _leftovers(path.parent) == []

    table = pq.read_table(path)
    assert table.schema.equals(SCHEDULE_SCHEMA)
    assert [(f.name, f.type) for f in table.schema] == [
        ("step", pa.int64()),
        ("sample_id", pa.int64()),
        ("lr", pa.float64()),
    ]
    assert table.num_rows == epochs * n
    step = table["step"].to_numpy()
    sample = table["sample_id"].to_numpy()
    expected_step = np.concatenate([[t] * int(s.size[t]) for t in range(s.n_steps)])
    expected_sample = np.concatenate([s.batch(t) for t in range(s.n_steps)])
    assert np.array_equal(step, expected_step) and np.array_equal(sample, expected_sample)
    assert (table["lr"].to_numpy() == 0.03).all()


def test_schedule_round_trip_keeps_varying_learning_rates(tmp_path):
    base = make_schedule(9, 2, 2, True, seed=0, lr=0.1)
    s = Schedule(index=base.index, size=base.size, lr=np.linspace(0.5, 0.01, base.n_steps))
    write_schedule(tmp_path / "s.parquet", s)
    back = read_schedule(tmp_path / "s.parquet")
    assert np.array_equal(back.lr, s.lr) and np.array_equal(back.index, s.index) and np.array_equal(back.size, s.size)


def test_schedule_rows_round_trip_in_memory():
    s = make_schedule(13, 5, 2, True, seed=2, lr=0.2)
    step, sample, lr = s.to_rows()
    assert step.dtype == np.int64 and sample.dtype == np.int64 and lr.dtype == np.float64
    assert step.shape == sample.shape == lr.shape == (26,)
    back = Schedule.from_rows(step, sample, lr)
    assert np.array_equal(back.index, s.index) and np.array_equal(back.size, s.size) and np.array_equal(back.lr, s.lr)


# ----------------------------------------------------------------------------------------- checkpoints

FIX = "rerun with train in stages to retrain seed 0"
# (key, shape, variable path): keys by position, as TrainingRecipe.state_layout() gives them
LAYOUT = [
    ("trainable/0000", (4, 3), "mlp/dense/kernel"),
    ("trainable/0001", (3,), "mlp/dense/bias"),
    ("non_trainable/0000", (3,), "mlp/batch_normalization/moving_mean"),
    ("non_trainable/0001", (), "seed_generator/state"),
    ("optimizer/m/0000", (4, 3), "mlp/dense/kernel"),
    ("optimizer/m/0001", (3,), "mlp/dense/bias"),
]


def _state(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(4, 3)).astype(np.float32),
        rng.normal(size=3).astype(np.float64),
        rng.normal(size=3).astype(np.float32),
        np.array(17 + seed, dtype=np.int64),
        rng.normal(size=(4, 3)).astype(np.float32),
        rng.normal(size=3).astype(np.float32),
    ]


def _assert_one_line_data_error(info, path: Path) -> str:
    message = str(info.value)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    assert message.startswith(f"{path}: ") and message.endswith(f"; {FIX}")
    assert "\n" not in message
    return message


def test_state_round_trip(tmp_path):
    arrays = _state()
    path = tmp_path / "checkpoints" / "step=0.npz"
    save_state(path, LAYOUT, arrays)
    assert _leftovers(path.parent) == []
    with np.load(path) as archive:
        assert list(archive.files) == [key for key, _, _ in LAYOUT]  # positional keys, in state order
    back = load_state(path, LAYOUT, FIX)
    assert isinstance(back, list) and len(back) == len(arrays)
    for got, want in zip(back, arrays):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


def test_state_loaded_in_layout_order(tmp_path):
    """The file's order does not matter: arrays come back in the order of the layout asked for."""
    arrays = _state()
    path = tmp_path / "s.npz"
    save_state(path, LAYOUT[::-1], arrays[::-1])
    back = load_state(path, LAYOUT, FIX)
    for got, want in zip(back, arrays):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_state_keys_do_not_depend_on_variable_paths(tmp_path):
    """A model built again gets other Keras names; the checkpoint still loads (keys are positions)."""
    path = tmp_path / "s.npz"
    save_state(path, LAYOUT, _state())
    renamed = [(key, shape, variable.replace("mlp", "mlp_7")) for key, shape, variable in LAYOUT]
    assert all(np.array_equal(a, b) for a, b in zip(load_state(path, renamed, FIX), _state()))


@pytest.mark.parametrize(
    "layout,first_mismatch",
    [
        (LAYOUT[:-1], "optimizer/m/0001"),
        (LAYOUT + [("optimizer/v/0000", (4, 3), "mlp/dense/kernel")], "optimizer/v/0000"),
        (LAYOUT[:-1] + [("optimizer/v/0001", (3,), "mlp/dense/bias")], "optimizer/v/0001"),
    ],
    ids=["fewer", "more", "renamed"],
)
def test_load_state_with_other_keys_raises(tmp_path, layout, first_mismatch):
    path = tmp_path / "step=5.npz"
    save_state(path, LAYOUT, _state())
    with pytest.raises(DataError) as info:
        load_state(path, layout, FIX)
    message = _assert_one_line_data_error(info, path)
    assert "state does not match the model" in message
    assert f"{len(LAYOUT)} arrays, the model has {len(layout)}" in message
    assert f"first mismatch {first_mismatch}" in message


def test_load_state_with_other_shape_names_key_and_variable(tmp_path):
    path = tmp_path / "step=5.npz"
    save_state(path, LAYOUT, _state())
    layout = list(LAYOUT)
    layout[1] = ("trainable/0001", (5,), "mlp/dense/bias")
    with pytest.raises(DataError) as info:
        load_state(path, layout, FIX)
    message = _assert_one_line_data_error(info, path)
    assert "trainable/0001 has shape (3,)" in message
    assert "the model's mlp/dense/bias has (5,)" in message


def test_load_state_with_other_scalar_shape(tmp_path):
    path = tmp_path / "s.npz"
    save_state(path, LAYOUT, _state())
    layout = list(LAYOUT)
    layout[3] = ("non_trainable/0001", (2,), "seed_generator/state")
    with pytest.raises(
        DataError, match=r"non_trainable/0001 has shape \(\) but the model's seed_generator/state has \(2,\)"
    ):
        load_state(path, layout, FIX)


def test_load_state_missing_file(tmp_path):
    path = tmp_path / "checkpoints" / "step=3.npz"
    with pytest.raises(DataError) as info:
        load_state(path, LAYOUT, FIX)
    assert "checkpoint missing" in _assert_one_line_data_error(info, path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_load_state_truncated_file(tmp_path, keep):
    path = tmp_path / "step=3.npz"
    save_state(path, LAYOUT, _state())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError) as info:
        load_state(path, LAYOUT, FIX)
    assert "checkpoint unreadable" in _assert_one_line_data_error(info, path)


def test_load_state_corrupted_bytes(tmp_path):
    path = tmp_path / "step=3.npz"
    arrays = _state()
    save_state(path, LAYOUT, arrays)
    data = bytearray(path.read_bytes())
    at = data.find(arrays[0].tobytes())
    assert at > 0
    data[at + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_state(path, LAYOUT, FIX)
    assert "checkpoint unreadable" in _assert_one_line_data_error(info, path)


def test_load_state_not_an_archive(tmp_path):
    path = tmp_path / "step=3.npz"
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npy").rename(path)
    with pytest.raises(DataError) as info:
        load_state(path, LAYOUT, FIX)
    assert "checkpoint unreadable" in _assert_one_line_data_error(info, path)


def test_save_state_rejects_duplicate_keys_and_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="disagree"):
        save_state(tmp_path / "d.npz", [("a", (1,), "x"), ("a", (1,), "y")], [np.zeros(1), np.ones(1)])
    with pytest.raises(ValueError, match="disagree"):
        save_state(tmp_path / "d.npz", LAYOUT, _state()[:-1])
    assert list(tmp_path.iterdir()) == []


def test_save_state_replaces_atomically(tmp_path):
    path = tmp_path / "s.npz"
    save_state(path, LAYOUT, _state(0))
    save_state(path, LAYOUT, _state(1))
    assert np.array_equal(load_state(path, LAYOUT, FIX)[0], _state(1)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_retrain_hint_names_the_seed():
    assert retrain_hint(0) == FIX
    assert "seed 7" in retrain_hint(7) and "train" in retrain_hint(7)


class FakeRecipe:
    """What StoredStates needs of a TrainingRecipe: state_layout() and unflatten(arrays)."""

    def __init__(self, layout):
        self.layout = layout
        self.layout_calls = 0

    def state_layout(self):
        self.layout_calls += 1
        return self.layout

    def unflatten(self, arrays):
        return {"trainable": arrays[:2], "non_trainable": arrays[2:4], "optimizer": arrays[4:]}


class Checkpoints:
    """checkpoint(step) -> path, recording which steps were asked for."""

    def __init__(self, folder: Path):
        self.folder, self.asked = folder, []

    def __call__(self, step: int) -> Path:
        self.asked.append(step)
        return self.folder / f"step={step}.npz"


def test_stored_states_mapping(tmp_path):
    steps = [0, 4, 8]
    for step in steps:
        save_state(tmp_path / f"step={step}.npz", LAYOUT, _state(step))
    recipe, checkpoint = FakeRecipe(LAYOUT), Checkpoints(tmp_path)
    states = StoredStates(checkpoint, steps, recipe, FIX)
    assert checkpoint.asked == [] and recipe.layout_calls == 1  # nothing read until asked
    assert len(states) == 3 and list(states) == steps and list(states.keys()) == steps
    state = states[4]
    assert set(state) == {"trainable", "non_trainable", "optimizer"}
    for got, want in zip([*state["trainable"], *state["non_trainable"], *state["optimizer"]], _state(4)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert checkpoint.asked == [4]
    assert 8 in states and 5 not in states
    assert states.get(5) is None
    with pytest.raises(KeyError):
        states[12]
    assert 12 not in checkpoint.asked and 5 not in checkpoint.asked
    assert recipe.layout_calls == 1


def test_stored_states_read_from_disk_on_each_access(tmp_path):
    save_state(tmp_path / "step=0.npz", LAYOUT, _state(0))
    states = StoredStates(Checkpoints(tmp_path), [0], FakeRecipe(LAYOUT), FIX)
    assert np.array_equal(states[0]["trainable"][0], _state(0)[0])
    save_state(tmp_path / "step=0.npz", LAYOUT, _state(1))
    assert np.array_equal(states[0]["trainable"][0], _state(1)[0])


def test_stored_states_bad_checkpoint_raises_data_error_with_fix(tmp_path):
    save_state(tmp_path / "step=0.npz", LAYOUT, _state(0))
    other = [
        (key, (2, *shape), variable) if key == "trainable/0000" else (key, shape, variable)
        for key, shape, variable in LAYOUT
    ]
    states = StoredStates(Checkpoints(tmp_path), [0, 5], FakeRecipe(other), FIX)
    with pytest.raises(DataError) as info:
        states[0]
    assert (
        "trainable/0000 has shape (4, 3) but the model's mlp/dense/kernel has (2, 4, 3)"
        in _assert_one_line_data_error(info, tmp_path / "step=0.npz")
    )
    with pytest.raises(DataError) as info:
        states[5]
    assert "checkpoint missing" in _assert_one_line_data_error(info, tmp_path / "step=5.npz")


# ---------------------------------------------------------------------------------------------- scores


@pytest.fixture
def scores():
    """Classification, one input of shape (2, 3), given in Fortran order (stored flattened in C order)."""
    rng = np.random.default_rng(4)
    n = 6
    return dict(
        sample_id=np.arange(10, 10 + n),
        targets=np.array([0, 1, 2, 0, 1, 2], dtype=np.int32),
        task="classification",
        influence=rng.normal(size=n),
        input_grad={"x": np.asfortranarray(rng.normal(size=(n, 2, 3)))},
        train_loss=rng.uniform(size=n),
        metadata={"config_hash": "abc123", "artifact_key": "0123456789abcdef"},
    )


def test_scores_table_schema(scores):
    table = scores_table(**scores)
    assert [(f.name, f.type) for f in table.schema] == [
        ("sample_id", pa.int64()),
        ("label", pa.int64()),
        ("influence", pa.float64()),
        ("input_grad", pa.list_(pa.float32(), 6)),
        ("input_grad_norm", pa.float64()),
        ("train_loss", pa.float64()),
    ]
    assert pa.types.is_fixed_size_list(table.schema.field("input_grad").type)
    meta = table.schema.metadata
    assert meta[b"sign_convention"] == SIGN_CONVENTION.encode()
    assert json.loads(meta[b"input_shapes"]) == {"x": [2, 3]}
    assert meta[b"config_hash"] == b"abc123" and meta[b"artifact_key"] == b"0123456789abcdef"
    assert table.num_rows == 6


def test_scores_table_values(scores):
    table = scores_table(**scores)
    grad = scores["input_grad"]["x"]
    assert table["sample_id"].to_pylist() == list(range(10, 16))
    assert table["label"].to_pylist() == [0, 1, 2, 0, 1, 2]
    assert np.array_equal(table["influence"].to_numpy(), scores["influence"])
    assert np.array_equal(table["train_loss"].to_numpy(), scores["train_loss"])
    # each row holds its sample's gradient flattened in C order, whatever the memory order of the input
    for i in range(6):
        assert table["input_grad"][i].as_py() == grad[i].astype(np.float32).reshape(-1, order="C").tolist()
    norms = table["input_grad_norm"].to_numpy()
    assert np.allclose(
        norms, np.linalg.norm(grad.astype(np.float32).reshape(6, -1).astype(np.float64), axis=1), rtol=1e-12, atol=0
    )
    back = input_grads(table)
    assert list(back) == ["x"]
    assert back["x"].dtype == np.float32 and back["x"].shape == (6, 2, 3)
    assert np.array_equal(back["x"], grad.astype(np.float32))


def test_input_grad_matrix_is_gone():
    assert not hasattr(tables, "input_grad_matrix")


def test_scores_table_regression_scalar_target(scores):
    targets = np.linspace(-1, 1, 6).astype(np.float32)
    table = scores_table(**{**scores, "task": "regression", "targets": targets})
    assert "label" not in table.schema.names
    assert table.schema.field("target").type == pa.float64()
    assert table.schema.names.index("target") == 1
    assert np.array_equal(table["target"].to_numpy(), targets.astype(np.float64))


def test_scores_table_regression_vector_target(scores, tmp_path):
    targets = np.arange(18, dtype=np.float32).reshape(6, 3) / 7
    table = scores_table(**{**scores, "task": "regression", "targets": targets})
    field = table.schema.field("target")
    assert (
        pa.types.is_fixed_size_list(field.type) and field.type.list_size == 3 and field.type.value_type == pa.float64()
    )
    assert np.array_equal(np.array(table["target"].to_pylist()), targets.astype(np.float64))
    write_table(table, tmp_path / "p.parquet")
    back = pq.read_table(tmp_path / "p.parquet")
    assert (
        pa.types.is_fixed_size_list(back.schema.field("target").type)
        and back.schema.field("target").type.list_size == 3
    )
    assert np.array_equal(np.array(back["target"].to_pylist()), targets.astype(np.float64))


def test_scores_table_several_inputs(scores):
    rng = np.random.default_rng(1)
    grads = {"image": rng.normal(size=(6, 2, 2, 1)), "tabular": rng.normal(size=(6, 3)), "scalar": rng.normal(size=6)}
    table = scores_table(**{**scores, "input_grad": grads})
    assert table.schema.names == [
        "sample_id",
        "label",
        "influence",
        "input_grad.image",
        "input_grad.tabular",
        "input_grad.scalar",
        "input_grad_norm",
        "train_loss",
    ]
    assert "input_grad" not in table.schema.names
    assert table.schema.field("input_grad.image").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("input_grad.tabular").type == pa.list_(pa.float32(), 3)
    assert table.schema.field("input_grad.scalar").type == pa.list_(pa.float32(), 1)
    assert json.loads(table.schema.metadata[b"input_shapes"]) == {"image": [2, 2, 1], "tabular": [3], "scalar": []}
    # the norm covers all inputs together
    flat = np.concatenate([g.astype(np.float32).reshape(6, -1) for g in grads.values()], axis=1).astype(np.float64)
    assert np.allclose(table["input_grad_norm"].to_numpy(), np.linalg.norm(flat, axis=1), rtol=1e-12, atol=0)
    back = input_grads(table)
    assert list(back) == ["image", "tabular", "scalar"]
    for name, grad in grads.items():
        assert back[name].shape == grad.shape and back[name].dtype == np.float32
        assert np.array_equal(back[name], grad.astype(np.float32)), name


def test_scores_table_parquet_round_trip(tmp_path, scores):
    table = scores_table(**scores)
    path = tmp_path / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet"
    write_table(table, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-00000.parquet"]
    back = pq.read_table(path)
    # Parquet renames the list child field ("item" -> "element"); names, types, width and metadata survive
    assert back.schema.names == table.schema.names
    grad_type = back.schema.field("input_grad").type
    assert pa.types.is_fixed_size_list(grad_type) and grad_type.list_size == 6 and grad_type.value_type == pa.float32()
    for name in ("sample_id", "label", "influence", "input_grad_norm", "train_loss"):
        assert back.schema.field(name).type == table.schema.field(name).type, name
        assert back[name].to_pylist() == table[name].to_pylist(), name
    assert back.schema.metadata == table.schema.metadata
    grad = scores["input_grad"]["x"].astype(np.float32)
    assert np.array_equal(input_grads(back)["x"], grad)
    # a slice (offset into the list column) gives the matching rows
    assert np.array_equal(input_grads(back.slice(2, 3))["x"], grad[2:5])
    # a file read on its own still says what its numbers mean
    assert pq.read_schema(path).metadata[b"sign_convention"] == SIGN_CONVENTION.encode()


def test_input_grads_of_multi_chunk_table(scores):
    table = scores_table(**scores)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 4)])
    assert chunked["input_grad"].num_chunks == 2
    assert np.array_equal(input_grads(chunked)["x"], scores["input_grad"]["x"].astype(np.float32))


def _write_parts(folder: Path, scores: dict, sizes: list[int]) -> list[Path]:
    paths, start = [], 0
    for i, size in enumerate(sizes):
        rows = slice(start, start + size)
        part = {
            **scores,
            "sample_id": scores["sample_id"][rows],
            "targets": scores["targets"][rows],
            "influence": scores["influence"][rows],
            "train_loss": scores["train_loss"][rows],
            "input_grad": {k: v[rows] for k, v in scores["input_grad"].items()},
        }
        paths.append(folder / f"part-{i:05d}.parquet")
        write_table(scores_table(**part), paths[-1])
        start += size
    return paths


def test_read_parts_in_part_order(tmp_path, scores):
    paths = _write_parts(tmp_path, scores, [2, 3, 1])
    table = read_parts(paths[::-1])  # sorted by path, whatever order they are given in
    assert table["sample_id"].to_pylist() == list(range(10, 16))
    assert table.schema.names == scores_table(**scores).schema.names
    assert np.array_equal(input_grads(table)["x"], scores["input_grad"]["x"].astype(np.float32))


def test_read_parts_columns_keep_metadata(tmp_path, scores):
    paths = _write_parts(tmp_path, scores, [4, 2])
    table = read_parts(paths, ["sample_id", "input_grad"])
    assert table.schema.names == ["sample_id", "input_grad"]
    assert json.loads(table.schema.metadata[b"input_shapes"]) == {"x": [2, 3]}
    assert np.array_equal(input_grads(table)["x"], scores["input_grad"]["x"].astype(np.float32))
    assert read_parts(paths, ["influence"])["influence"].to_pylist() == scores["influence"].tolist()


def test_read_parts_of_no_parts_is_an_error():
    with pytest.raises(ValueError, match="no parts"):
        read_parts([])


# --------------------------------------------------------------------------------------- atomic writes


def test_write_table_replaces_atomically(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(pa.table({"a": [1, 2]}), path)
    write_table(pa.table({"a": [3]}), path)
    assert pq.read_table(path)["a"].to_pylist() == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_failure_inside_atomic_path_leaves_no_file(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failure_inside_atomic_path_keeps_previous_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{broken")
        raise RuntimeError("boom")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_failing_write_table_leaves_no_target(tmp_path, monkeypatch):
    import pipeline.io.tables as tables

    def broken_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tables.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []


def test_write_json_round_trip(tmp_path):
    path = tmp_path / "a" / "b.json"
    write_json(path, {"z": 1, "a": [1, 2], "p": Path("/x")})
    assert read_json(path) == {"z": 1, "a": [1, 2], "p": "/x"}
    assert path.read_text().endswith("\n")
    assert _leftovers(path.parent) == []


# ------------------------------------------------------------------------------------------- manifest


def _settings(root: Path, lr: float = 0.1, overwrite: bool = False, **changes) -> Settings:
    return Settings(
        optimizer=OptimizerSettings(lr=lr), output=OutputSettings(dir=str(root), overwrite=overwrite), **changes
    )


RESULTS = (
    "trajectory/seed=0/schedule.parquet",
    "scores/method=trajectory/seed=0/part-00000.parquet",
    "verify/loo.parquet",
    "ranking.parquet",
)


def _populate(root: Path) -> None:
    for rel in RESULTS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")


def test_manifest_fresh_dir(tmp_path):
    root = tmp_path / "run"
    settings = _settings(root)
    layout = RunLayout(root)
    manifest = Manifest.open(layout, settings, {"trajectory_key": "aaaa", "score_key": "bbbb"})
    payload = read_json(layout.manifest)
    assert layout.manifest == root / "manifest.json"
    assert payload["status"] == "running"
    assert payload["config_hash"] == settings.result_hash()
    assert payload["sign_convention"] == SIGN_CONVENTION
    assert payload["stages"] == {}
    assert payload["trajectory_key"] == "aaaa" and payload["score_key"] == "bbbb"
    assert payload["config"] == json.loads(json.dumps(settings.to_dict()))
    assert {"numpy", "pyarrow"} <= set(payload["versions"])
    assert "started_at" in payload and "finished_at" not in payload
    assert payload == json.loads(json.dumps(manifest.payload, default=str))
    assert not layout.success.exists()
    assert _leftovers(root) == []


class _Recorded(StageResult):
    """A stage result that records exactly the given keys (what a stage records is tests/test_results.py's)."""

    def __init__(self, record: dict):
        self.record = record

    def to_json(self) -> dict:
        return self.record


def test_manifest_reopen_same_config_keeps_stage_records(tmp_path):
    root = tmp_path / "run"
    layout = RunLayout(root)
    first = Manifest.open(layout, _settings(root), {})
    first.record_stage("train", 1.23456, _Recorded({"seeds": {"0": {"n_steps": 3}}}))
    first.record_data({"n_train": 10})
    assert read_json(layout.manifest)["data"] == {"n_train": 10}
    first.finish("succeeded")
    _populate(root)
    # cluster, output.overwrite and stages are not result settings
    again = Manifest.open(
        layout, dataclasses.replace(_settings(root, overwrite=True), stages=("train", "score", "verify")), {"k": 1}
    )
    payload = read_json(layout.manifest)
    assert payload["status"] == "running" and payload["k"] == 1
    assert payload["stages"] == {"train": {"seconds": 1.235, "seeds": {"0": {"n_steps": 3}}}}
    assert again.payload["stages"]["train"]["seconds"] == 1.235
    assert not layout.success.exists()
    for rel in RESULTS:
        assert (root / rel).exists(), rel


def test_manifest_reopen_with_other_config_starts_over_without_refusing(tmp_path):
    """Whether results may be reused is io.arguments' decision; the manifest just describes the new run."""
    root = tmp_path / "run"
    layout = RunLayout(root)
    old = Manifest.open(layout, _settings(root, lr=0.1), {})
    old.record_stage("train", 2.0, _Recorded({}))
    old.finish("succeeded")
    _populate(root)
    new_settings = _settings(root, lr=0.05)
    Manifest.open(layout, new_settings, {})
    payload = read_json(layout.manifest)
    assert payload["config_hash"] == new_settings.result_hash() != _settings(root).result_hash()
    assert payload["config"]["optimizer"]["lr"] == 0.05
    assert payload["status"] == "running" and payload["stages"] == {}
    assert "finished_at" not in payload
    assert not layout.success.exists()
    for rel in RESULTS:  # the manifest deletes nothing
        assert (root / rel).exists(), rel


@pytest.mark.parametrize("content", ["{broken", ""])
def test_manifest_unreadable_previous_starts_fresh(tmp_path, content):
    root = tmp_path / "run"
    layout = RunLayout(root)
    root.mkdir()
    layout.manifest.write_text(content)
    Manifest.open(layout, _settings(root), {})
    payload = read_json(layout.manifest)
    assert payload["status"] == "running" and payload["stages"] == {}


@pytest.mark.parametrize("status", ["succeeded", "failed", "interrupted"])
def test_manifest_finish(tmp_path, status):
    root = tmp_path / "run"
    layout = RunLayout(root)
    manifest = Manifest.open(layout, _settings(root), {})
    error = None if status == "succeeded" else f"{status}: DataError: x_train: no samples"
    manifest.finish(status, error)
    payload = read_json(layout.manifest)
    assert payload["status"] == status and "finished_at" in payload
    if status == "succeeded":
        assert layout.success.exists() and layout.success.read_text() == ""
        assert "error" not in payload
    else:
        assert not layout.success.exists()
        assert payload["error"] == error


def test_manifest_resume_after_success_removes_marker_until_finished(tmp_path):
    root = tmp_path / "run"
    layout = RunLayout(root)
    Manifest.open(layout, _settings(root), {}).finish("succeeded")
    assert layout.success.exists()
    manifest = Manifest.open(layout, _settings(root), {})
    assert not layout.success.exists()
    assert read_json(layout.manifest)["status"] == "running"
    manifest.finish("interrupted", "KeyboardInterrupt")
    assert not layout.success.exists()
    Manifest.open(layout, _settings(root), {}).finish("succeeded")
    assert layout.success.exists()


def test_layout_paths(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.schedule(3) == tmp_path / "trajectory" / "seed=3" / "schedule.parquet"
    assert layout.checkpoint(3, 40) == tmp_path / "trajectory" / "seed=3" / "checkpoints" / "step=40.npz"
    assert layout.trajectory_arguments == tmp_path / "trajectory" / "_arguments.json"
    assert layout.score_arguments("tracin") == tmp_path / "scores" / "method=tracin" / "_arguments.json"
    assert (
        layout.score_part("trajectory", 1, 2)
        == tmp_path / "scores" / "method=trajectory" / "seed=1" / "part-00002.parquet"
    )
    assert layout.derived_dirs == (
        tmp_path / "scores",
        tmp_path / "features",
        tmp_path / "queries",
        tmp_path / "verify",
        tmp_path / "report",
    )
    assert layout.result_files == (tmp_path / "ranking.parquet", tmp_path / "query_top.parquet")


def test_layout_score_parts_skip_quarantined_and_temporary_files(tmp_path):
    layout = RunLayout(tmp_path)
    folder = layout.scores_dir("loss", 0)
    folder.mkdir(parents=True)
    for name in (
        "part-00001.parquet",
        "part-00000.parquet",
        "part-00002.parquet.corrupt",
        ".part-00003.parquet.1a2b3c4d.tmp",
        "_summary.json",
    ):
        (folder / name).write_text("x")
    assert layout.score_parts("loss", 0) == [folder / "part-00000.parquet", folder / "part-00001.parquet"]
    assert layout.score_parts("loss", 1) == []
