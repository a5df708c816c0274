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
from pipeline.errors import ConfigError
from pipeline.io.checkpoints import load_state, save_state
from pipeline.io.files import atomic_path, read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.manifest import Manifest
from pipeline.io.tables import (
    SCHEDULE_SCHEMA,
    SIGN_CONVENTION,
    input_grad_matrix,
    read_schedule,
    scores_table,
    write_schedule,
    write_table,
)
from pipeline.kernels.schedule import Schedule, checkpoint_steps, make_schedule


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
        assert (s.index[t, s.size[t]:] == -1).all()
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
    assert [(f.name, f.type) for f in table.schema] == [("step", pa.int64()), ("sample_id", pa.int64()), ("lr", pa.float64())]
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

STATE_NAMES = ["trainable/dense/kernel", "trainable/dense/bias", "non_trainable/bn/moving_mean", "optimizer/iterations"]


def _state():
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(4, 3)).astype(np.float32),
        rng.normal(size=3).astype(np.float64),
        rng.normal(size=3).astype(np.float32),
        np.array(17, dtype=np.int64),
    ]


def test_state_round_trip(tmp_path):
    arrays = _state()
    path = tmp_path / "checkpoints" / "step=0.npz"
    save_state(path, STATE_NAMES, arrays)
    assert _leftovers(path.parent) == []
    with np.load(path) as archive:
        assert list(archive.files) == STATE_NAMES  # file order is the state order
    back = load_state(path, STATE_NAMES)
    assert len(back) == len(arrays)
    for got, want in zip(back, arrays):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


def test_state_loaded_in_order_of_names(tmp_path):
    arrays = _state()
    path = tmp_path / "s.npz"
    save_state(path, STATE_NAMES, arrays)
    back = load_state(path, STATE_NAMES[::-1])
    for got, want in zip(back, arrays[::-1]):
        assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize(
    "names",
    [STATE_NAMES[:3], STATE_NAMES + ["trainable/extra"], STATE_NAMES[:3] + ["optimizer/other"]],
    ids=["fewer", "more", "renamed"],
)
def test_load_state_with_other_names_raises(tmp_path, names):
    path = tmp_path / "step=5.npz"
    save_state(path, STATE_NAMES, _state())
    with pytest.raises(ValueError, match=r"step=5\.npz: state does not match the model") as info:
        load_state(path, names)
    assert str(path) in str(info.value)


def test_save_state_rejects_duplicate_names(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        save_state(tmp_path / "d.npz", ["a", "a"], [np.zeros(1), np.ones(1)])
    assert not (tmp_path / "d.npz").exists()


# ---------------------------------------------------------------------------------------------- scores


@pytest.fixture
def scores():
    rng = np.random.default_rng(4)
    n, d = 6, 5
    grads = rng.normal(size=(n, d))
    return dict(
        sample_id=np.arange(10, 10 + n),
        label=np.array([0, 1, 2, 0, 1, 2]),
        influence=rng.normal(size=n),
        input_grad=grads,
        train_loss=rng.uniform(size=n),
        metadata={"config_hash": "abc123", "version": "0.1.0"},
    )


def test_scores_table_schema(scores):
    table = scores_table(**scores)
    assert [(f.name, f.type) for f in table.schema] == [
        ("sample_id", pa.int64()),
        ("label", pa.int64()),
        ("influence", pa.float64()),
        ("input_grad", pa.list_(pa.float32(), 5)),
        ("input_grad_norm", pa.float64()),
        ("train_loss", pa.float64()),
    ]
    assert pa.types.is_fixed_size_list(table.schema.field("input_grad").type)
    meta = table.schema.metadata
    assert meta[b"sign_convention"] == SIGN_CONVENTION.encode()
    assert meta[b"config_hash"] == b"abc123" and meta[b"version"] == b"0.1.0"
    assert table.num_rows == 6


def test_scores_table_values(scores):
    table = scores_table(**scores)
    assert table["sample_id"].to_pylist() == list(range(10, 16))
    assert table["label"].to_pylist() == [0, 1, 2, 0, 1, 2]
    assert np.array_equal(table["influence"].to_numpy(), scores["influence"])
    assert np.array_equal(table["train_loss"].to_numpy(), scores["train_loss"])
    norms = table["input_grad_norm"].to_numpy()
    assert np.allclose(norms, np.sqrt((scores["input_grad"] ** 2).sum(axis=1)), rtol=1e-12, atol=0)
    assert np.array_equal(norms, np.linalg.norm(scores["input_grad"], axis=1))
    matrix = input_grad_matrix(table)
    assert matrix.dtype == np.float32 and matrix.shape == (6, 5)
    assert np.array_equal(matrix, scores["input_grad"].astype(np.float32))


def test_scores_table_parquet_round_trip(tmp_path, scores):
    table = scores_table(**scores)
    path = tmp_path / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet"
    write_table(table, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-00000.parquet"]
    back = pq.read_table(path)
    # Parquet renames the list child field ("item" -> "element"); names, types, width and metadata survive
    assert back.schema.names == table.schema.names
    grad_type = back.schema.field("input_grad").type
    assert pa.types.is_fixed_size_list(grad_type) and grad_type.list_size == 5 and grad_type.value_type == pa.float32()
    for name in ("sample_id", "label", "influence", "input_grad_norm", "train_loss"):
        assert back.schema.field(name).type == table.schema.field(name).type, name
        assert back[name].to_pylist() == table[name].to_pylist(), name
    assert back.schema.metadata == table.schema.metadata
    assert np.array_equal(input_grad_matrix(back), scores["input_grad"].astype(np.float32))
    # a slice (offset into the list column) gives the matching rows
    assert np.array_equal(input_grad_matrix(back.slice(2, 3)), scores["input_grad"][2:5].astype(np.float32))
    # a file read on its own still says what its numbers mean
    assert pq.read_schema(path).metadata[b"sign_convention"] == SIGN_CONVENTION.encode()


def test_input_grad_matrix_of_multi_chunk_table(scores):
    table = scores_table(**scores)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 4)])
    assert chunked["input_grad"].num_chunks == 2
    assert np.array_equal(input_grad_matrix(chunked), scores["input_grad"].astype(np.float32))


# --------------------------------------------------------------------------------------- atomic writes


def test_write_table_replaces_atomically(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(pa.table({"a": [1, 2]}), path)
    write_table(pa.table({"a": [3]}), path)
    assert pq.read_table(path)["a"].to_pylist() == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_failure_inside_atomic_path_leaves_no_file(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failure_inside_atomic_path_keeps_previous_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
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
    return Settings(optimizer=OptimizerSettings(lr=lr), output=OutputSettings(dir=str(root), overwrite=overwrite), **changes)


def _populate(root: Path) -> None:
    for rel in ("trajectory/seed=0/schedule.parquet", "scores/method=trajectory/seed=0/part-00000.parquet", "verify/loo.parquet"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "notes.txt").write_text("keep me")
    (root / "hydra").mkdir()
    (root / "hydra" / "config.yaml").write_text("keep")


def test_manifest_fresh_dir(tmp_path):
    root = tmp_path / "run"
    settings = _settings(root)
    layout = RunLayout(root)
    manifest = Manifest.open(layout, settings)
    payload = read_json(layout.manifest)
    assert layout.manifest == root / "manifest.json"
    assert payload["status"] == "running"
    assert payload["config_hash"] == settings.result_hash()
    assert payload["sign_convention"] == SIGN_CONVENTION
    assert payload["stages"] == {}
    assert payload["config"] == json.loads(json.dumps(settings.to_dict()))
    assert payload == json.loads(json.dumps(manifest.payload, default=str))
    assert not layout.success.exists()
    assert _leftovers(root) == []


def test_manifest_reopen_same_settings_keeps_going(tmp_path):
    root = tmp_path / "run"
    layout = RunLayout(root)
    first = Manifest.open(layout, _settings(root))
    first.record_stage("train", 1.23456, {"seeds": {"0": {"n_steps": 3}}})
    first.record_data({"n_train": 10})
    _populate(root)
    # cluster, output.overwrite and stages are not result settings
    again = Manifest.open(layout, dataclasses.replace(_settings(root, overwrite=True), stages=("train", "score", "verify")))
    payload = read_json(layout.manifest)
    assert payload["status"] == "running"
    assert payload["stages"] == {"train": {"seconds": 1.235, "seeds": {"0": {"n_steps": 3}}}}
    assert again.payload["stages"]["train"]["seconds"] == 1.235
    for rel in ("trajectory/seed=0/schedule.parquet", "scores/method=trajectory/seed=0/part-00000.parquet", "verify/loo.parquet"):
        assert (root / rel).exists(), rel


def test_manifest_reopen_with_other_result_settings_is_refused(tmp_path):
    root = tmp_path / "run"
    layout = RunLayout(root)
    Manifest.open(layout, _settings(root, lr=0.1))
    _populate(root)
    before = layout.manifest.read_text()
    with pytest.raises(ConfigError, match=r"^output\.dir=") as info:
        Manifest.open(layout, _settings(root, lr=0.2))
    assert str(root) in str(info.value) and "output.overwrite=true" in str(info.value)
    assert "\n" not in str(info.value)
    assert layout.manifest.read_text() == before
    assert (root / "trajectory" / "seed=0" / "schedule.parquet").exists()


def test_manifest_overwrite_removes_only_result_dirs(tmp_path):
    root = tmp_path / "run"
    layout = RunLayout(root)
    old = Manifest.open(layout, _settings(root, lr=0.1))
    old.record_stage("train", 2.0, {})
    old.finish("succeeded")
    _populate(root)
    new_settings = _settings(root, lr=0.2, overwrite=True)
    Manifest.open(layout, new_settings)
    for folder in ("trajectory", "scores", "verify"):
        assert not (root / folder).exists(), folder
    assert (root / "notes.txt").read_text() == "keep me"
    assert (root / "hydra" / "config.yaml").exists()
    payload = read_json(layout.manifest)
    assert payload["config_hash"] == new_settings.result_hash()
    assert payload["status"] == "running" and payload["stages"] == {}
    assert payload["config"]["optimizer"]["lr"] == 0.2
    assert not layout.success.exists()


def test_manifest_finish_succeeded_and_failed(tmp_path):
    root = tmp_path / "ok"
    layout = RunLayout(root)
    manifest = Manifest.open(layout, _settings(root))
    manifest.finish("succeeded")
    assert layout.success.exists() and layout.success.read_text() == ""
    payload = read_json(layout.manifest)
    assert payload["status"] == "succeeded" and "finished_at" in payload and "error" not in payload

    # reopening the finished run (resume) takes the _SUCCESS marker away until it finishes again
    Manifest.open(layout, _settings(root))
    assert not layout.success.exists()
    assert read_json(layout.manifest)["status"] == "running"

    root = tmp_path / "bad"
    layout = RunLayout(root)
    manifest = Manifest.open(layout, _settings(root))
    manifest.finish("failed", error="DataError: x_train: no samples")
    assert not layout.success.exists()
    payload = read_json(layout.manifest)
    assert payload["status"] == "failed" and payload["error"] == "DataError: x_train: no samples"


def test_layout_paths(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.schedule(3) == tmp_path / "trajectory" / "seed=3" / "schedule.parquet"
    assert layout.checkpoint(3, 40) == tmp_path / "trajectory" / "seed=3" / "checkpoints" / "step=40.npz"
    assert layout.score_part("trajectory", 1, 2) == tmp_path / "scores" / "method=trajectory" / "seed=1" / "part-00002.parquet"
    assert layout.result_dirs == (tmp_path / "trajectory", tmp_path / "scores", tmp_path / "verify", tmp_path / "report")
    assert layout.result_files == (tmp_path / "ranking.parquet",)
