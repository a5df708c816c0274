"""`python -m pipeline.evaluate` at tiny scale, and its figures against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.evaluation import stats

TINY = [
    "experiment=digits_mlp_sgd",
    "data.max_train=120",
    "train.epochs=2",
    "evaluation.methods=[trajectory,loss]",
    "evaluation.ensemble_sizes=[1,2]",
    "evaluation.n_loo=3",
    "evaluation.n_subsets=5",
    "evaluation.retrain_seeds=2",
    "evaluation.same_seed_drops=[0.05,0.5]",
    "evaluation.cross_seed_drops=[0.5]",
    "evaluation.removal_fractions=[0.05]",
    "evaluation.reliability_splits=4",
]


def test_split_half_reliability_matches_the_known_noise():
    """Targets = true effect (sd 1) + seed noise (sd 2) per seed: the mean of R seeds has reliability
    1 / (1 + 4 / R); R = 16 gives 0.8, and the prophecy from R = 4 (reliability 0.5) asks for 16 seeds."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=4000)
    values = truth[:, None] + 2.0 * rng.normal(size=(4000, 16))
    assert stats.split_half_reliability(values, 20, rng) == pytest.approx(0.8, abs=0.02)
    assert stats.split_half_reliability(values[:, :4], 20, rng) == pytest.approx(0.5, abs=0.03)
    assert stats.seeds_needed(0.5, 4) == pytest.approx(16.0)
    assert stats.spearman_brown(1 / 3, 2) == pytest.approx(0.5)
    assert math.isinf(stats.seeds_needed(-0.1, 4))


def test_lds_removal_and_flip_helpers_by_hand():
    masks = np.array([[1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=float)
    scores = np.array([1.0, 2.0, 3.0, 4.0])  # summed kept scores 3, 8, 9
    assert stats.lds(masks, scores, np.array([0.1, 0.2, 0.3])) == pytest.approx(1.0)
    assert stats.lds(masks, scores, np.array([0.3, 0.2, 0.1])) == pytest.approx(-1.0)
    assert stats.kept_masks(np.random.default_rng(0), 200, 0.05, 3).sum(axis=1).tolist() == [190, 190, 190]
    assert stats.removal_mask(4, np.array([1, 3])).tolist() == [1, 0, 1, 0]
    assert stats.top(np.array([0.5, 2.0, 2.0, -1.0]), 2).tolist() == [1, 2]
    mean, se = stats.paired_change(np.array([1.0, 2.0, 4.0]), np.array([0.0, 1.0, 1.0]))  # differences 1, 1, 3
    assert mean == pytest.approx(5 / 3) and se == pytest.approx(np.std([1, 1, 3], ddof=1) / math.sqrt(3))
    y, flipped = stats.flip_labels(np.random.default_rng(0), np.arange(100) % 10, 10, 0.1)
    assert (
        flipped.sum() == 10
        and np.all(y[flipped] != (np.arange(100) % 10)[flipped])
        and np.all(y[~flipped] == (np.arange(100) % 10)[~flipped])
    )


def test_paired_lds_difference_by_hand():
    rng = np.random.default_rng(1)
    masks = (rng.random((12, 30)) > 0.5).astype(float)
    a, b = rng.normal(size=30), rng.normal(size=30)
    measured = masks @ a + rng.normal(size=12)
    assert stats.paired_lds_difference(masks, a, a, measured, 200, np.random.default_rng(0)) == (0.0, 0.0)
    # a predicts E exactly in order (LDS 1), -a in reverse (LDS -1) on every resample: difference 2, se 0
    diff, se = stats.paired_lds_difference(masks, a, -a, masks @ a, 200, np.random.default_rng(0))
    assert diff == pytest.approx(2.0) and se == pytest.approx(0.0, abs=1e-12)
    # the same resamples of the subsets for both methods, each scored with stats.lds
    picks = np.random.default_rng(0).integers(0, 12, size=(200, 12))
    by_hand = [stats.lds(masks[p], a, measured[p]) - stats.lds(masks[p], b, measured[p]) for p in picks]
    diff, se = stats.paired_lds_difference(masks, a, b, measured, 200, np.random.default_rng(0))
    assert diff == pytest.approx(stats.lds(masks, a, measured) - stats.lds(masks, b, measured))
    assert se == pytest.approx(np.nanstd(by_hand, ddof=1)) and se > 0


def test_peer_scores_sign_follows_the_target(tmp_path):
    from pipeline.errors import UserInputError
    from pipeline.evaluate import peer_scores

    def write(name: str, target: str | None) -> Path:
        settings = {} if target is None else {"target": target}
        table = pa.table({"model": [0, 0, 0], "sample_id": [2, 0, 1], "score": [3.0, 1.0, -2.0]})
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table.replace_schema_metadata({b"peers": json.dumps({"settings": settings})}), path)
        pq.write_table(
            pa.table({"model": [0], "cpu_seconds_train": [1.0], "cpu_seconds_attribute": [2.0]}),
            tmp_path / f"{name}_models.parquet",
        )
        return path

    for name, target, sign in (("old", None, -1), ("margin", "margin", -1), ("ce", "ce", 1)):
        _, read_target, scores, seconds = peer_scores(write(name, target), 3)
        assert read_target == (target or "margin") and seconds.tolist() == [3.0]
        assert scores.tolist() == [[sign * 1.0, sign * -2.0, sign * 3.0]]  # positive = harmful, by sample_id
    with pytest.raises(UserInputError, match="unknown settings.target 'loss'"):
        peer_scores(write("bad", "loss"), 3)


def test_retrain_or_reuse_keys_the_cache(tmp_path, capsys):
    from pipeline.evaluate import Retrained, retrain_or_reuse

    calls = []

    def retrain() -> Retrained:
        calls.append(1)
        return Retrained(np.arange(2.0), np.ones((3, 2)) * len(calls), 6, 1.5, False)

    path, same, fresh = tmp_path / "targets.npz", np.eye(2), np.ones((3, 2))
    first = retrain_or_reuse(path, "k1", same, fresh, retrain)
    again = retrain_or_reuse(path, "k1", same, fresh, retrain)
    assert len(calls) == 1 and again.reused and not first.reused and (again.count, again.seconds) == (6, 1.5)
    assert np.array_equal(again.fresh, first.fresh) and "reusing the 6 retrainings" in capsys.readouterr().out
    for key, masks in (("k2", fresh), ("k2", np.zeros((3, 2)))):  # another key, then other masks: retrain, overwrite
        assert not retrain_or_reuse(path, key, same, masks, retrain).reused
    assert len(calls) == 3 and retrain_or_reuse(path, "k2", same, np.zeros((3, 2)), retrain).fresh[0, 0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["targets.npz"]


@pytest.fixture(scope="module")
def tiny_evaluation(tmp_path_factory, ray_session):
    """(cfg, overrides, results dir, gathered path) of one tiny `python -m pipeline.evaluate`."""
    from hydra import compose, initialize_config_dir

    from pipeline.evaluate import CONFIG_DIR, run

    tmp_path = tmp_path_factory.mktemp("evaluate")
    overrides = [*TINY, f"evaluation.scratch={tmp_path / 'runs'}", f"evaluation.results={tmp_path / 'results'}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="evaluate", overrides=overrides)
    path = run(cfg, "python -m pipeline.evaluate " + " ".join(overrides))
    return cfg, overrides, tmp_path / "results", path


def test_evaluate_entry_point_writes_parquet_and_markdown(tiny_evaluation):
    _, _, results, path = tiny_evaluation
    tmp_path = results.parent
    table = pq.read_table(tmp_path / "results" / "digits_mlp_sgd.parquet").to_pylist()
    value = {
        (r["part"], r["method"], r["metric"], r["ensemble"], None if math.isnan(r["fraction"]) else r["fraction"]): r[
            "value"
        ]
        for r in table
    }
    assert value[("context", "-", "N", 0, None)] == 120
    # seed 0: all data, 3 LOO, 2 drops x 5 subsets; fresh: R = 2 seeds x (all data, 5 subsets, every removal)
    removals = {(r["method"], r["metric"]) for r in table if r["part"] == "removal" and not r["metric"].endswith("_se")}
    harmful = ("trajectory K=1", "trajectory K=2", "loss K=1", "loss K=2", "random")  # every method on K seeds
    assert removals == {(m, "delta_E_harmful") for m in harmful} | {
        (m, "delta_E_helpful") for m in ("trajectory K=1", "trajectory K=2")
    }
    assert value[("context", "-", "retrainings", 0, None)] == 1 + 3 + 2 * 5 + 2 * (1 + 5 + len(removals))
    assert value[("context", "-", "targets_reused", 0, None)] == 0
    assert value[("same_seed", "trajectory", "loo_pearson", 0, None)] > 0.9  # the exact derivative on the same schedule
    assert -1 <= value[("cross_seed", "trajectory K=2", "lds", 0, 0.5)] <= 1
    assert ("ensemble", "trajectory", "lds", 2, 0.5) in value and (
        "ensemble",
        "trajectory",
        "seconds",
        2,
        None,
    ) in value
    assert ("ensemble", "loss standardized", "lds", 2, 0.5) in value and (
        "ensemble_groups",
        "loss",
        "lds_mean",
        1,
        0.5,
    ) in value
    assert 0 <= value[("flips", "loss", "auc", 0, None)] <= 1
    assert value[("context", "-", "E_fresh_sd", 0, None)] > 0

    section = (tmp_path / "results" / "digits_mlp_sgd.md").read_text()
    assert (
        "E = validation cross-entropy" in section
        and "target reliability (split-half, Spearman-Brown to R = 2)" in section
    )
    gathered = path.read_text()
    assert (
        path == tmp_path / "results.md"
        and "## digits_mlp_sgd" in gathered
        and "`python -m pipeline.evaluate experiment=mnist_seed000`" in gathered
    )


def test_second_evaluate_reuses_the_targets(tiny_evaluation, monkeypatch, capsys):
    """The same settings again: no retraining runs (targets.npz) and every row is the same, bit for bit."""
    from hydra import compose, initialize_config_dir

    from pipeline import evaluate

    cfg, overrides, results, _ = tiny_evaluation
    first = pq.read_table(results / "digits_mlp_sgd.parquet").to_pylist()

    def refuse(*args, **kwargs):
        raise AssertionError("a retraining ran")

    monkeypatch.setattr(evaluate.Retrainer, "_run", refuse)
    evaluate.run(cfg, "python -m pipeline.evaluate " + " ".join(overrides))
    assert "reusing the" in capsys.readouterr().out
    second = pq.read_table(results / "digits_mlp_sgd.parquet").to_pylist()

    def exact(rows: list[dict]) -> list[dict]:  # str() of a float is exact, and NaN equals NaN
        moved = {"wall_seconds", "targets_reused"}
        return [{k: str(v) for k, v in r.items()} for r in rows if r["metric"] not in moved]

    assert exact(second) == exact(first) and len(exact(first)) > 50
    assert [r["value"] for r in second if r["metric"] == "targets_reused"] == [1.0]

    # an outside reference is read after the retrainings: still no retraining, and paired margins against it
    peer = results.parent / "peer.parquet"
    scores = np.random.default_rng(0).normal(size=(2, 120))
    table = pa.table(
        {"model": np.repeat([0, 1], 120), "sample_id": np.tile(np.arange(120), 2), "score": scores.ravel()}
    )
    pq.write_table(table.replace_schema_metadata({b"peers": json.dumps({"settings": {"target": "ce"}})}), peer)
    pq.write_table(
        pa.table({"model": [0, 1], "cpu_seconds_train": [1.0, 1.0], "cpu_seconds_attribute": [1.0, 1.0]}),
        peer.with_name("peer_models.parquet"),
    )
    with_peer = [*overrides, f"evaluation.peer_scores={peer}"]
    with initialize_config_dir(config_dir=evaluate.CONFIG_DIR, version_base=None):
        evaluate.run(compose(config_name="evaluate", overrides=with_peer), "python -m pipeline.evaluate")
    rows = pq.read_table(results / "digits_mlp_sgd.parquet").to_pylist()
    value = {(r["part"], r["method"], r["metric"], r["ensemble"]): r["value"] for r in rows if r["fraction"] == 0.5}
    with np.load(results.parent / "runs" / "digits_mlp_sgd" / "targets.npz") as cached:  # row 0: all the data
        masks, target = cached["fresh_masks"][1:6].astype(float), cached["fresh"][1:6].mean(axis=1)
    # settings.target=ce: the scores are positive = harmful already, read as they are
    assert value[("ensemble", "dattri TRAK", "lds", 1)] == pytest.approx(stats.lds(masks, scores[0], target))
    assert value[("peer_difference", "trajectory", "lds_difference", 2)] == pytest.approx(
        value[("ensemble", "trajectory", "lds", 2)] - value[("ensemble", "dattri TRAK", "lds", 2)]
    )
    assert value[("peer_difference", "loss", "lds_difference_se", 1)] >= 0
    section = (results / "digits_mlp_sgd.md").read_text()
    assert "settings.target=ce" in section and "LDS margin over dattri TRAK ± paired se" in section
