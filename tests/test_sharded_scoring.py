"""Sharded methods through Ray actors: every sample exactly once, identical to an in-process computation,
and complete after a worker is killed mid-run (retried) or after a failed run is rerun (resumed)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.dataset as pads
import pytest
import ray
from test_pipeline_run import N, small_settings

from pipeline.config import ClusterSettings, InfluenceSettings, Settings
from pipeline.run import execute


def sharded_settings(out, method="tracin", **changes) -> Settings:
    base = small_settings(out, influence=InfluenceSettings(method=method, shard_size=40, batch_size=16, steps=2))
    return replace(base, **changes)


def _scores(root, method="tracin") -> dict[int, np.ndarray]:
    parts = sorted((root / "scores" / f"method={method}").glob("seed=*/part-*.parquet"))
    table = pads.dataset(
        parts,
        format="parquet",
        partitioning=pads.partitioning(flavor="hive"),
        partition_base_dir=str(root / "scores" / f"method={method}"),
    ).to_table()
    out = {}
    for seed in set(table["seed"].to_pylist()):
        rows = table.filter(pads.field("seed") == seed).sort_by("sample_id")
        assert rows["sample_id"].to_pylist() == list(range(N))  # every sample exactly once
        out[seed] = rows["influence"].to_numpy()
    return out


def _in_process_tracin(root, settings):
    """TracIn of seed 0 computed directly from the stored checkpoints, without shards or Ray."""
    import tensorflow as tf

    from pipeline.config import with_task_defaults
    from pipeline.data import load_dataset
    from pipeline.io.checkpoints import StoredStates
    from pipeline.io.files import read_json
    from pipeline.io.layout import RunLayout
    from pipeline.io.tables import read_schedule
    from pipeline.kernels.per_sample import SampleScorer
    from pipeline.kernels.training import as_inputs
    from pipeline.runtime.recipes import recipe_for

    settings = with_task_defaults(settings)
    data = load_dataset(settings.data)
    layout = RunLayout(root)
    recipe = recipe_for(settings, data, 0)
    steps = read_json(layout.train_summary(0))["checkpoint_steps"]
    states, lr = (
        StoredStates(lambda t: layout.checkpoint(0, t), steps, recipe, "retrain"),
        read_schedule(layout.schedule(0)).lr,
    )
    scorer = SampleScorer(recipe)
    x_val, y_val = as_inputs(data.x_val["x"], tf.float64), tf.constant(data.y_val)
    checkpoints = [
        scorer.checkpoint(lr[a] * (b - a) / N, states[a], x_val, y_val) for a, b in zip(steps[:-1], steps[1:])
    ]  # w_c by hand
    influence, _ = scorer.tracin(checkpoints, as_inputs(data.x_train["x"], tf.float64), tf.constant(data.y_train))
    return influence.numpy()


def test_tracin_shards_equal_the_in_process_result(ray_session, tmp_path):
    settings = sharded_settings(tmp_path, train=replace(small_settings(tmp_path).train, seeds=(0, 1)))
    execute(settings)
    scores = _scores(tmp_path)
    assert sorted(scores) == [0, 1]
    assert len(list((tmp_path / "scores" / "method=tracin" / "seed=0").glob("part-*.parquet"))) == 4  # ceil(150 / 40)
    score = json.loads((tmp_path / "manifest.json").read_text())["stages"]["score"]
    assert [score["seeds"][seed]["actors"] for seed in ("0", "1")] == [2, 2]  # one per CPU of the session's Ray
    np.testing.assert_allclose(scores[0], _in_process_tracin(tmp_path, settings), rtol=1e-10)


# about a minute each on 2 cores: one stays in the default run, the others run with -m slow
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("lookahead", marks=SLOW),
        pytest.param("loss", marks=SLOW),
        pytest.param("saliency", marks=SLOW),
        "sensitivity",
    ],
)
def test_other_sharded_methods_cover_every_sample(ray_session, tmp_path, method):
    execute(sharded_settings(tmp_path, method=method))
    influence = _scores(tmp_path, method)[0]
    assert np.all(np.isfinite(influence)) and np.any(influence != 0)
    if method in ("loss", "saliency"):
        assert np.all(influence >= 0)


@pytest.mark.slow  # a killed actor and its replacement: about 1.5 minutes
def test_killed_worker_is_retried_and_the_run_completes(ray_session, tmp_path, kill_at_shard):
    reference_dir = tmp_path / "reference"
    execute(sharded_settings(reference_dir))
    kill_at_shard(2)
    run_dir = tmp_path / "killed"
    execute(sharded_settings(run_dir, cluster=ClusterSettings(max_retries=2)))
    assert (run_dir / ".killed-seed=0-shard=2").exists()  # the actor really died once
    np.testing.assert_array_equal(_scores(run_dir)[0], _scores(reference_dir)[0])
    assert (run_dir / "_SUCCESS").exists()


@pytest.mark.slow  # about 1.5 minutes (tests/test_faults.py keeps resume checks in the default run)
def test_failed_run_resumes_without_redoing_finished_shards(ray_session, tmp_path, kill_at_shard):
    kill_at_shard(3)
    settings = sharded_settings(tmp_path, cluster=ClusterSettings(max_retries=0))
    with pytest.raises(ray.exceptions.RayActorError):
        execute(settings)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "failed"
    assert not (tmp_path / "_SUCCESS").exists()
    parts = tmp_path / "scores" / "method=tracin" / "seed=0"
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert "part-00003.parquet" not in finished

    kill_at_shard(None)
    execute(replace(settings, cluster=ClusterSettings(max_retries=2)))  # cluster settings are not part of any key
    assert all((parts / name).stat().st_mtime_ns == stamp for name, stamp in finished.items())  # skipped, not rewritten
    _scores(tmp_path)  # every sample exactly once
    assert (tmp_path / "_SUCCESS").exists()
