"""`python -m pipeline.evaluate` at tiny scale, and its figures against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
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


def test_evaluate_entry_point_writes_parquet_and_markdown(tmp_path, ray_session):
    from hydra import compose, initialize_config_dir

    from pipeline.evaluate import CONFIG_DIR, run

    overrides = [*TINY, f"evaluation.scratch={tmp_path / 'runs'}", f"evaluation.results={tmp_path / 'results'}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="evaluate", overrides=overrides)
    path = run(cfg, "python -m pipeline.evaluate " + " ".join(overrides))

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
