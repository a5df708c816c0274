"""End to end through Ray: stages, outputs contract, verify figures, resume, refusal, faults."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from pipeline.config import (
    DataSettings,
    ModelSettings,
    OptimizerSettings,
    OutputSettings,
    Settings,
    TrainSettings,
    VerifySettings,
)
from pipeline.errors import ConfigError, DivergenceError
from pipeline.io.tables import SIGN_CONVENTION, read_schedule
from pipeline.run import execute

N = 150


def small_settings(out, **changes) -> Settings:
    base = Settings(
        data=DataSettings(max_train=N),
        model=ModelSettings(hidden=(8,)),
        optimizer=OptimizerSettings(name="momentum", lr=0.05, momentum=0.9),
        train=TrainSettings(epochs=2, batch_size=25, seeds=(0,), dtype="float64", checkpoint_every=4),
        verify=VerifySettings(n_gradcheck=2, n_loo=6),
        output=OutputSettings(dir=str(out)),
        stages=("train", "score"),
    )
    return replace(base, **changes)


def test_train_score_verify_writes_the_contract(ray_session, tmp_path):
    settings = small_settings(tmp_path, stages=("train", "score", "verify", "aggregate", "report"))
    payload = execute(settings)

    assert payload["status"] == "succeeded" and (tmp_path / "_SUCCESS").exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["sign_convention"] == SIGN_CONVENTION
    assert set(manifest["stages"]) == {"train", "score", "verify", "aggregate", "report"}
    assert manifest["data"]["n_train"] == N

    seed_dir = tmp_path / "trajectory" / "seed=0"
    schedule = read_schedule(seed_dir / "schedule.parquet")
    assert schedule.n_steps == 12 and np.array_equal(np.sort(schedule.index[:6].ravel()), np.arange(N))
    stored = sorted(int(p.stem.split("=")[1]) for p in (seed_dir / "checkpoints").glob("step=*.npz"))
    assert stored == [0, 4, 8, 12]
    with np.load(seed_dir / "checkpoints" / "step=0.npz") as ckpt:
        assert any(k.startswith("trainable/") for k in ckpt.files) and any(
            k.startswith("optimizer/momentum/") for k in ckpt.files
        )

    table = pads.dataset(tmp_path / "scores", format="parquet", partitioning="hive").to_table()
    assert sorted(table["sample_id"].to_pylist()) == list(range(N))  # every sample exactly once
    assert table.schema.field("input_grad").type.list_size == 64
    assert json.loads(table.schema.metadata[b"input_shapes"]) == {"x": [8, 8, 1]}
    part = pq.read_table(tmp_path / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet")
    assert part.schema.metadata[b"sign_convention"].decode() == SIGN_CONVENTION
    assert np.all(np.isfinite(part["influence"].to_numpy())) and np.any(part["influence"].to_numpy() != 0)

    verify = manifest["stages"]["verify"]
    assert verify["gradcheck"]["eps"]["max_relative_error"] < 1e-6
    assert verify["gradcheck"]["x"]["max_relative_error"] < 1e-5
    assert verify["loo"]["n"] == 6 and verify["loo"]["pearson"] > 0.9
    loo = pq.read_table(tmp_path / "verify" / "loo.parquet")
    assert loo.num_rows == 6 and set(loo.column_names) == {"seed", "sample_id", "predicted_change", "actual_change"}
    smooth = verify["smoothness"]  # a short tanh run in float64: the derivative predicts removals
    assert smooth["verdict"] == "smooth" and smooth["single"]["linear_up_to"] == 1.0
    assert 0.1 < smooth["perturbation_growth"] < 10
    ladder = pq.read_table(tmp_path / "verify" / "smoothness.parquet")
    assert ladder.num_rows == (4 + 2 * 2) * 5  # 4 samples and 2 groups of each of 2 sizes, 5 steps each

    ranking = pq.read_table(tmp_path / "ranking.parquet").sort_by("rank")
    assert ranking["rank"].to_pylist() == list(range(1, N + 1))
    most_harmful = int(np.argmax(part["influence"].to_numpy()))
    assert ranking["sample_id"][0].as_py() == most_harmful
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Positive influence = harmful" in html and f"most harmful first: {most_harmful}," in html

    top = subprocess.run(
        [sys.executable, "-m", "pipeline.top", "--run", str(tmp_path), "--k", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert top.returncode == 0 and top.stdout.splitlines()[1].split()[1] == str(most_harmful)


def test_rerun_resumes_and_other_config_is_refused(ray_session, tmp_path):
    settings = small_settings(tmp_path)
    execute(settings)
    summary = tmp_path / "trajectory" / "seed=0" / "_summary.json"
    part = tmp_path / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet"
    stamps = (summary.stat().st_mtime_ns, part.stat().st_mtime_ns)

    execute(settings)  # same config: finished seeds are skipped, nothing rewritten
    assert (summary.stat().st_mtime_ns, part.stat().st_mtime_ns) == stamps

    other = replace(settings, optimizer=replace(settings.optimizer, lr=0.01))
    with pytest.raises(
        ConfigError,
        match=r"output.dir=.*holds a trajectory computed with other settings \(optimizer.lr=0.05 there, 0.01 now\)",
    ):
        execute(other)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "succeeded"  # untouched

    execute(replace(other, output=replace(other.output, overwrite=True)))
    assert part.stat().st_mtime_ns != stamps[1]  # replaced by the new config's scores
    assert (tmp_path / "_SUCCESS").exists()


def test_seeds_train_as_separate_tasks_with_their_own_results(ray_session, tmp_path):
    execute(small_settings(tmp_path, train=TrainSettings(epochs=1, batch_size=25, seeds=(0, 1), dtype="float32")))
    parts = [
        pq.read_table(tmp_path / "scores" / "method=trajectory" / f"seed={s}" / "part-00000.parquet") for s in (0, 1)
    ]
    assert all(p.num_rows == N for p in parts)
    assert not np.allclose(parts[0]["influence"].to_numpy(), parts[1]["influence"].to_numpy())


def test_interrupted_seed_is_redone_on_rerun(ray_session, tmp_path):
    """A seed whose task died before its _summary.json is trained again; a finished one is not."""
    settings = small_settings(tmp_path, stages=("train",))
    execute(settings)
    summary = tmp_path / "trajectory" / "seed=0" / "_summary.json"
    summary.unlink()  # as if the worker died after writing checkpoints
    execute(settings)
    assert summary.exists()


def test_divergence_stops_with_the_step_and_marks_failure(ray_session, tmp_path):
    settings = small_settings(
        tmp_path,
        optimizer=OptimizerSettings(name="sgd", lr=1e38),
        train=TrainSettings(epochs=2, batch_size=25, dtype="float32", checkpoint_every=4),
    )
    with pytest.raises(DivergenceError, match=r"training diverged: NaN/inf at step \d+"):
        execute(settings)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "step" in manifest["error"]
    assert not (tmp_path / "_SUCCESS").exists()


def test_score_without_trained_trajectory_is_a_clear_error(ray_session, tmp_path):
    with pytest.raises(ConfigError, match="score needs the trained trajectory of seed 0"):
        execute(small_settings(tmp_path, stages=("score",)))


def _cli(*overrides, out):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", f"output.dir={out}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1"),
        (["train.dtype=float16"], "train.dtype='float16'"),
        (["data=npz", "data.path=/no/such/file.npz"], "data.path=/no/such/file.npz: file not found"),
        (["train.batch_size=5000"], "train.batch_size=5000: larger than the 1437 training samples"),
        (["model=custom", "model.builder=nowhere_xyz:build"], "model.builder=nowhere_xyz:build: cannot import"),
    ],
)
def test_cli_bad_input_is_one_line_nonzero_and_not_successful(tmp_path, overrides, message):
    result = _cli(*overrides, "stages=[train]", out=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "_SUCCESS").exists()
    manifest = tmp_path / "manifest.json"
    assert not manifest.exists() or json.loads(manifest.read_text())["status"] == "failed"


def test_float32_run_is_compared_with_a_float64_replay(ray_session, tmp_path):
    settings = small_settings(
        tmp_path,
        train=TrainSettings(epochs=2, batch_size=25, dtype="float32", checkpoint_every=4),
        verify=VerifySettings(n_gradcheck=0, n_loo=0, n_smooth=2, n_groups=1),
        stages=("train", "score", "verify"),
    )
    payload = execute(settings)
    replay = payload["stages"]["verify"]["smoothness"]["float64_replay"]
    assert replay["n"] == 150
    # float32 rounding of a short smooth run: the scores are the float64 ones to about 1e-6
    assert replay["median_relative_error"] < 1e-4 and replay["spearman"] > 0.999
