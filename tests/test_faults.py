"""Fault injection on a run directory: each case ends with every sample exactly once under the right
key, or a clean one-line refusal. (A worker killed mid-shard: tests/test_sharded_scoring.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from test_pipeline_run import N, small_settings

from pipeline.config import DataSettings, InfluenceSettings
from pipeline.errors import ConfigError, DataError
from pipeline.io.layout import RunLayout
from pipeline.io.tables import read_parts
from pipeline.run import execute


def _every_sample_once(root: Path, method: str, seed: int = 0, n: int = N) -> np.ndarray:
    """The influence of (method, seed), asserting each sample_id 0..n-1 occurs exactly once."""
    table = read_parts(RunLayout(root).score_parts(method, seed)).sort_by("sample_id")
    assert table["sample_id"].to_pylist() == list(range(n))
    return table["influence"].to_numpy()


def _sharded(root: Path, method: str = "loss", **changes):
    return small_settings(
        root,
        influence=InfluenceSettings(method=method, shard_size=40, batch_size=16),
        stages=("train", "score", "aggregate"),
        **changes,
    )


def test_truncated_part_is_set_aside_and_recomputed(ray_session, tmp_path, capsys):
    settings = _sharded(tmp_path)
    execute(settings)
    before = _every_sample_once(tmp_path, "loss")
    part = RunLayout(tmp_path).score_part("loss", 0, 1)
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    execute(settings)
    assert "moved to .part-00001.parquet.corrupt, recomputing" in capsys.readouterr().out
    assert (part.parent / ".part-00001.parquet.corrupt").exists()
    np.testing.assert_array_equal(_every_sample_once(tmp_path, "loss"), before)
    assert (tmp_path / "_SUCCESS").exists()


def test_missing_part_is_recomputed_even_though_the_summary_exists(ray_session, tmp_path):
    settings = _sharded(tmp_path)
    execute(settings)
    before = _every_sample_once(tmp_path, "loss")
    RunLayout(tmp_path).score_part("loss", 0, 2).unlink()
    execute(settings)
    np.testing.assert_array_equal(_every_sample_once(tmp_path, "loss"), before)


def test_part_written_under_another_key_is_replaced(ray_session, tmp_path):
    """A part of another config (e.g. left by an overwritten run) never passes for this one."""
    settings = _sharded(tmp_path, method="lookahead")
    execute(settings)
    stray = RunLayout(tmp_path).score_part("lookahead", 0, 0)
    table = pq.read_table(stray)
    pq.write_table(
        table.replace_schema_metadata({**table.schema.metadata, b"artifact_key": b"0123456789abcdef"}), stray
    )
    execute(settings)
    assert pq.read_schema(stray).metadata[b"artifact_key"] != b"0123456789abcdef"
    _every_sample_once(tmp_path, "lookahead")


def test_deleted_or_truncated_checkpoint_retrains_the_seed(ray_session, tmp_path, capsys):
    settings = small_settings(tmp_path)
    execute(settings)
    layout = RunLayout(tmp_path)
    before = _every_sample_once(tmp_path, "trajectory")
    layout.checkpoint(0, 4).unlink()
    execute(settings)
    assert "[train] seed=0: checkpoint step=4.npz missing; retraining" in capsys.readouterr().out
    assert layout.checkpoint(0, 4).exists()
    last = layout.checkpoint(0, 12)
    last.write_bytes(last.read_bytes()[:100])
    execute(settings)
    assert "checkpoint step=12.npz unreadable" in capsys.readouterr().out
    np.testing.assert_array_equal(_every_sample_once(tmp_path, "trajectory"), before)  # same recorded run


def test_bad_checkpoint_met_by_score_alone_names_the_file_and_the_fix(ray_session, tmp_path):
    settings = small_settings(tmp_path)
    execute(settings)
    layout = RunLayout(tmp_path)
    layout.score_part("trajectory", 0, 0).unlink()
    layout.checkpoint(0, 8).write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(
        DataError,
        match=r"checkpoints/step=8.npz: checkpoint unreadable .*; rerun with train in stages to retrain seed 0",
    ):
        execute(replace(settings, stages=("score",)))


def test_data_changed_in_place_is_refused_then_retrained_with_overwrite(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    x, y = rng.normal(size=(60, 5)), rng.integers(0, 3, size=60)
    np.savez(data, x_train=x[:50], y_train=y[:50], x_val=x[50:], y_val=y[50:])
    out = tmp_path / "run"
    settings = small_settings(
        out, data=DataSettings(source="npz", path=str(data)), stages=("train", "score", "aggregate")
    )
    execute(settings)
    y_changed = y.copy()
    y_changed[:10] = (y_changed[:10] + 1) % 3
    np.savez(data, x_train=x[:50], y_train=y_changed[:50], x_val=x[50:], y_val=y[50:])
    with pytest.raises(
        ConfigError,
        match=(
            r"output.dir=.*: holds a trajectory computed with other settings \(data_fingerprint=classification:x:\w+ "
            r"there, classification:x:\w+ now\)"
        ),
    ):
        execute(settings)
    execute(replace(settings, output=replace(settings.output, overwrite=True)))
    ranking = pq.read_table(out / "ranking.parquet")
    labels = dict(zip(ranking["sample_id"].to_pylist(), ranking["label"].to_pylist()))
    assert [labels[i] for i in range(50)] == y_changed[:50].tolist()


def test_one_training_scored_three_ways_is_ranked_together(ray_session, tmp_path):
    """train once, then tracin and loss from the same trajectory; nothing is retrained."""
    base = small_settings(tmp_path, stages=("train", "score", "aggregate"))
    execute(base)
    summary = RunLayout(tmp_path).train_summary(0)
    trained_at = summary.stat().st_mtime_ns
    for method in ("tracin", "loss"):
        execute(replace(base, influence=InfluenceSettings(method=method, shard_size=40, batch_size=16)))
    assert summary.stat().st_mtime_ns == trained_at
    ranking = pq.read_table(tmp_path / "ranking.parquet")
    assert sorted(set(ranking["method"].to_pylist())) == ["loss", "tracin", "trajectory"]
    assert ranking.num_rows == 3 * N
    # A method's own settings are its key: the same method with another objective is a conflict.
    with pytest.raises(
        ConfigError,
        match=(
            r"holds tracin scores computed with other settings \(influence.objective=cross_entropy there, margin "
            r"now\)"
        ),
    ):
        execute(
            replace(
                base, influence=InfluenceSettings(method="tracin", objective="margin", shard_size=40, batch_size=16)
            )
        )


# ------------------------------------------------------------------------------ drivers (subprocesses)


def _command(out: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        f"output.dir={out}",
        "train.epochs=2",
        "influence=lookahead",
        "influence.steps=3",
        "influence.shard_size=20",
        "influence.batch_size=10",
        "stages=[train,score,aggregate]",
        *overrides,
    ]


def _descendants(root: int) -> set[int]:
    """Every live process below `root` in the process tree."""
    from pipeline.cluster import _processes

    children: dict[int, list[int]] = {}
    for pid, ppid, _, _ in _processes():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    from pipeline.cluster import _processes

    return pids & {pid for pid, _, _, _ in _processes()}


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow  # real drivers in subprocesses, about a minute each
def test_ctrl_c_interrupts_cleanly_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    driver = subprocess.Popen(_command(out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = out / "scores" / "method=lookahead" / "seed=0"
    assert _wait_for(lambda: len(list(parts.glob("part-*.parquet"))) >= 2, 240), driver.communicate()[1][-3000:]
    started = _descendants(driver.pid)  # its Ray: gcs, raylet, agents, workers
    assert started
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "interrupted; rerun the same command to resume" in stderr and "Traceback" not in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and not (out / "_SUCCESS").exists()
    assert not (out / ".lock").exists()
    assert _wait_for(lambda: not _alive(started), 30), (
        f"processes of the interrupted driver still running: {_alive(started)}"
    )

    done_before = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    rerun = subprocess.run(_command(out), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert all((parts / name).stat().st_mtime_ns == stamp for name, stamp in done_before.items())
    _every_sample_once(out, "lookahead", n=1437)
    assert (out / "_SUCCESS").exists()


@pytest.mark.slow  # real drivers in subprocesses, about a minute each
def test_second_driver_on_one_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_command(out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: (out / "manifest.json").exists(), 240), first.communicate()[1][-3000:]
    for extra in ((), ("output.overwrite=true", "optimizer.lr=0.05")):
        second = subprocess.run(_command(out, *extra), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"output.dir={out}: in use by another run (pid {first.pid} on host" in errors[0], (
            second.stderr[-3000:]
        )
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    _every_sample_once(out, "lookahead", n=1437)
    assert json.loads((out / "manifest.json").read_text())["status"] == "succeeded"


@pytest.mark.parametrize("target", ["file", "proc"])
def test_unwritable_output_dir_is_one_line(tmp_path, target):
    out = "/proc/influence-pipeline-test" if target == "proc" else str(tmp_path / "a-file")
    if target == "file":
        Path(out).write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", f"output.dir={out}", "stages=[train]"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: output.dir={out}: cannot write there"), result.stderr[
        -2000:
    ]


def test_refused_run_leaves_an_existing_run_untouched(ray_session, tmp_path):
    settings = small_settings(tmp_path)
    execute(settings)
    snapshot = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", f"output.dir={tmp_path}", "optimizer.lr=-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", f"output.dir={tmp_path}", "data.max_train=150", "train.epochs=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "holds a trajectory computed with other settings" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == snapshot  # no hydra/, no new manifest


@pytest.mark.slow  # real drivers in subprocesses, about a minute each
def test_driver_killed_with_sigkill_leaves_no_agents_after_the_rerun(tmp_path):
    """kill -9 of the driver mid-score: its raylet dies, Ray's agents survive (they ignore SIGTERM); the
    rerun stops them, resumes, and ends with every sample exactly once."""
    out = tmp_path / "run"
    driver = subprocess.Popen(_command(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / "scores" / "method=lookahead" / "seed=0"
    assert _wait_for(lambda: len(list(parts.glob("part-*.parquet"))) >= 2, 240)
    driver.kill()
    driver.wait()
    rerun = subprocess.run(_command(out), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[cluster] stopped" in rerun.stdout and "Ray agent process(es) left behind by a killed run" in rerun.stdout
    from pipeline.cluster import _processes, orphaned_agents

    assert orphaned_agents(_processes(), os.getuid()) == []
    _every_sample_once(out, "lookahead", n=1437)
    assert (out / "_SUCCESS").exists()


def test_a_changed_value_inside_a_part_is_caught_by_its_page_checksum(tmp_path):
    """One float of a written part scaled by 1.01 in place: the footer and the ids still read, only the page
    checksum tells, so the part is refused (and, in a run, quarantined and recomputed)."""
    import pyarrow as pa

    from pipeline.io.integrity import check_part
    from pipeline.io.tables import write_table

    value = 0.123456789012345
    ids = np.arange(50)
    influence = np.linspace(-1, 1, 50)
    influence[17] = value
    table = pa.table({"sample_id": ids, "influence": influence}).replace_schema_metadata({"artifact_key": "k"})
    path = tmp_path / "part-00000.parquet"
    write_table(table, path)
    assert check_part(path, ids, "k") is None
    raw = path.read_bytes()
    old = np.float64(value).tobytes()
    assert raw.count(old) == 1  # the page stores the value's bytes as they are
    path.write_bytes(raw.replace(old, np.float64(value * 1.01).tobytes()))
    assert check_part(path, ids, "k").startswith("unreadable")
