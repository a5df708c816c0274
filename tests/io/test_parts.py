"""io.parts: shards of the training set, the metadata of score parts, and which parts a rerun must
(re)compute, on real parts written with io.tables (pure NumPy/Arrow, no TF or Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import __version__
from pipeline.config import InfluenceSettings, Settings, TaskSettings
from pipeline.io.integrity import check_part
from pipeline.io.layout import RunLayout
from pipeline.io.parts import part_metadata, parts_to_compute, split, whole
from pipeline.io.tables import SIGN_CONVENTION, scores_table, write_table
from pipeline.methods import REGISTRY

KEY = "5c0re5c0re5c0re5"
OTHER_KEY = "0ther0ther0ther0"
METHOD = "tracin"
SETTINGS = Settings(influence=InfluenceSettings(method=METHOD, objective="cross_entropy"))


# -------------------------------------------------------------------------------------------------- shards


def test_split_examples():
    assert split(10, 4) == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert split(8, 4) == [(0, 0, 4), (1, 4, 8)]
    assert split(3, 10) == [(0, 0, 3)]
    assert split(5, 1) == [(i, i, i + 1) for i in range(5)]
    assert whole(10) == [(0, 0, 10)]


@pytest.mark.parametrize("n_train", [1, 7, 64, 1000, 1025])
@pytest.mark.parametrize("shard_size", [1, 3, 64, 1024, 5000])
def test_split_covers_every_sample_once(n_train, shard_size):
    shards = split(n_train, shard_size)
    assert [number for number, _, _ in shards] == list(range(len(shards)))
    ids = np.concatenate([np.arange(start, stop) for _, start, stop in shards])
    assert np.array_equal(ids, np.arange(n_train))
    sizes = [stop - start for _, start, stop in shards]
    assert all(size == shard_size for size in sizes[:-1]) and 0 < sizes[-1] <= shard_size
    assert len(shards) == -(-n_train // shard_size)


# ------------------------------------------------------------------------------------------- part metadata


def test_part_metadata():
    meta = part_metadata(SETTINGS, 3, KEY)
    assert meta == {
        "artifact_key": KEY,
        "package_version": __version__,
        "config_hash": SETTINGS.result_hash(),
        "method": METHOD,
        "method_meaning": REGISTRY[METHOD].description,
        "seed": "3",
        "task": "classification",
        "objective": "cross_entropy",
    }
    assert all(isinstance(v, str) for v in meta.values())


def test_part_metadata_follows_the_settings():
    settings = Settings(
        task=TaskSettings(name="regression"), influence=InfluenceSettings(method="lookahead", objective="huber")
    )
    meta = part_metadata(settings, 0, OTHER_KEY)
    assert meta["method"] == "lookahead" and meta["method_meaning"] == REGISTRY["lookahead"].description
    assert meta["task"] == "regression" and meta["objective"] == "huber" and meta["artifact_key"] == OTHER_KEY
    assert meta["config_hash"] == settings.result_hash() != SETTINGS.result_hash()


# ---------------------------------------------------------------------------------------- real score parts


def _write_part(path: Path, ids: np.ndarray, key: str = KEY, seed: int = 0) -> Path:
    """A score part as the score stage writes it: io.tables.scores_table + write_table, part_metadata."""
    rng = np.random.default_rng(int(ids[0]) if len(ids) else 0)
    n = len(ids)
    table = scores_table(
        sample_id=np.asarray(ids, np.int64),
        targets=rng.integers(0, 3, size=n),
        task="classification",
        influence=rng.normal(size=n),
        input_grad={"x": rng.normal(size=(n, 2, 2))},
        train_loss=rng.uniform(size=n),
        metadata=part_metadata(SETTINGS, seed, key),
    )
    write_table(table, path)
    return path


def _write_all(layout: RunLayout, shards, seed: int = 0, key: str = KEY) -> list[Path]:
    return [
        _write_part(layout.score_part(METHOD, seed, number), np.arange(start, stop), key, seed)
        for number, start, stop in shards
    ]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _names(layout: RunLayout, seed: int = 0) -> list[str]:
    return sorted(p.name for p in layout.scores_dir(METHOD, seed).iterdir())


def test_written_part_passes_the_check(tmp_path):
    path = _write_part(tmp_path / "part-00000.parquet", np.arange(5, 9))
    assert check_part(path, np.arange(5, 9), KEY) is None
    meta = pq.read_schema(path).metadata
    assert meta[b"artifact_key"] == KEY.encode() and meta[b"sign_convention"] == SIGN_CONVENTION.encode()
    assert meta[b"seed"] == b"0" and meta[b"method"] == METHOD.encode()


def test_nothing_written_yet_means_every_shard(tmp_path, capsys):
    layout = RunLayout(tmp_path)
    shards = split(10, 4)
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == shards
    assert parts_to_compute(layout, METHOD, 0, shards, KEY, repair=False) == shards
    assert capsys.readouterr().out == ""  # a missing part is not a problem worth a line
    assert list(tmp_path.iterdir()) == []  # and nothing is created


def test_all_parts_good_means_nothing_to_do(tmp_path, capsys):
    layout = RunLayout(tmp_path)
    shards = split(10, 4)
    _write_all(layout, shards)
    before = _snapshot(tmp_path)
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == []
    assert parts_to_compute(layout, METHOD, 0, shards, KEY, repair=False) == []
    assert capsys.readouterr().out == ""
    assert _snapshot(tmp_path) == before


def test_whole_shard(tmp_path):
    layout = RunLayout(tmp_path)
    assert parts_to_compute(layout, "trajectory", 0, whole(6), KEY) == whole(6)
    _write_part(layout.score_part("trajectory", 0, 0), np.arange(6)[::-1])  # any row order
    assert parts_to_compute(layout, "trajectory", 0, whole(6), KEY) == []


def _damage(layout: RunLayout) -> list:
    """Shards of split(20, 4): 0 good, 1 missing, 2 other key, 3 truncated, 4 other ids."""
    shards = split(20, 4)
    paths = _write_all(layout, shards)
    paths[1].unlink()
    _write_part(paths[2], np.arange(8, 12), key=OTHER_KEY)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])
    _write_part(paths[4], np.arange(15, 19))
    return shards


def test_bad_parts_are_recomputed_and_moved_aside(tmp_path, capsys):
    layout = RunLayout(tmp_path)
    shards = _damage(layout)
    good = layout.score_part(METHOD, 0, 0).read_bytes()
    truncated = layout.score_part(METHOD, 0, 3).read_bytes()
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == [shards[1], shards[2], shards[3], shards[4]]
    assert _names(layout) == [
        ".part-00002.parquet.corrupt",
        ".part-00003.parquet.corrupt",
        ".part-00004.parquet.corrupt",
        "part-00000.parquet",
    ]
    assert layout.score_part(METHOD, 0, 0).read_bytes() == good
    assert (layout.scores_dir(METHOD, 0) / ".part-00003.parquet.corrupt").read_bytes() == truncated
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # one per bad part, none for the missing one
    for line, number, reason in zip(
        lines,
        (2, 3, 4),
        (f"written under key {OTHER_KEY}, expected {KEY}", "unreadable (", "sample_ids differ from the shard's"),
    ):
        path = layout.score_part(METHOD, 0, number)
        assert line.startswith(f"[score] {path}: ") and reason in line
        assert f"moved to .{path.name}.corrupt" in line and "recomputing" in line
    # the second look finds the same shards missing and has nothing left to move
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == shards[1:]
    assert capsys.readouterr().out == ""


def test_without_repair_nothing_changes_on_disk(tmp_path, capsys):
    layout = RunLayout(tmp_path)
    shards = _damage(layout)
    stray = _write_part(layout.score_part(METHOD, 0, 9), np.arange(36, 40))
    before = _snapshot(tmp_path)
    assert parts_to_compute(layout, METHOD, 0, shards, KEY, repair=False) == shards[1:]
    assert _snapshot(tmp_path) == before
    assert stray.exists()
    assert capsys.readouterr().out == ""


def test_parts_of_an_earlier_shard_size_are_moved_aside(tmp_path, capsys):
    """shard_size is not part of the key: after it changes, old parts hold other ids or belong to no shard."""
    layout = RunLayout(tmp_path)
    _write_all(layout, split(10, 4))  # parts 0..2
    shards = split(10, 5)  # parts 0..1
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == shards
    assert _names(layout) == [
        ".part-00000.parquet.corrupt",
        ".part-00001.parquet.corrupt",
        ".part-00002.parquet.corrupt",
    ]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    stray = layout.score_part(METHOD, 0, 2)
    assert f"[score] {stray}: belongs to no shard of this run; moved to .part-00002.parquet.corrupt" in out
    assert sum("holds 4 rows, expected 5" in line for line in out) == 2
    # parts written for the new shards are then complete: every sample in exactly one part
    _write_all(layout, shards)
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == []
    assert capsys.readouterr().out == ""


def test_stray_part_with_good_shards(tmp_path, capsys):
    layout = RunLayout(tmp_path)
    shards = split(8, 4)
    _write_all(layout, shards)
    _write_part(layout.score_part(METHOD, 0, 2), np.arange(8, 12))  # e.g. from a run with more training samples
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == []
    assert _names(layout) == [".part-00002.parquet.corrupt", "part-00000.parquet", "part-00001.parquet"]
    assert capsys.readouterr().out.count("belongs to no shard") == 1


def test_quarantine_never_overwrites_an_earlier_corrupt_file(tmp_path, capsys):
    layout = RunLayout(tmp_path)
    shards = split(4, 4)
    _write_part(layout.score_part(METHOD, 0, 0), np.arange(4), key=OTHER_KEY)
    parts_to_compute(layout, METHOD, 0, shards, KEY)
    _write_part(layout.score_part(METHOD, 0, 0), np.arange(4), key=OTHER_KEY)
    parts_to_compute(layout, METHOD, 0, shards, KEY)
    assert _names(layout) == [".part-00000.parquet.corrupt", ".part-00000.parquet.corrupt.1"]
    assert "moved to .part-00000.parquet.corrupt.1" in capsys.readouterr().out


def test_other_seeds_and_methods_are_left_alone(tmp_path, capsys):
    layout = RunLayout(tmp_path)
    shards = split(8, 4)
    _write_all(layout, shards, seed=1, key=OTHER_KEY)
    other_method = _write_part(layout.score_part("loss", 0, 0), np.arange(100, 104), key=OTHER_KEY)
    before = _snapshot(tmp_path)
    assert parts_to_compute(layout, METHOD, 0, shards, KEY) == shards
    assert _snapshot(tmp_path) == before and other_method.exists()
    assert capsys.readouterr().out == ""
    # seed 1's parts, checked under seed 1 with its own key, are good
    assert parts_to_compute(layout, METHOD, 1, shards, OTHER_KEY) == []
