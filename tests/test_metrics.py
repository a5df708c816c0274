"""Agreement figures used by verify and the evaluation script, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline import metrics


def test_found_fraction_counts_targets_in_the_top():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.0, 0.5, 0.4, 0.6])
    targets = np.zeros(10, dtype=bool)
    targets[[0, 3, 6]] = True  # ranks 1, 4 and 10
    assert metrics.found_fraction(scores, targets, 0.1) == pytest.approx(1 / 3)
    assert metrics.found_fraction(scores, targets, 0.4) == pytest.approx(2 / 3)
    assert metrics.found_fraction(scores, targets, 1.0) == 1.0


def test_roc_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)
    targets = rng.random(200) < 0.2
    assert metrics.roc_auc(scores, targets) == pytest.approx(roc_auc_score(targets, scores))


def test_correlations_and_relative_errors():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.correlations(a, 2 * a + 1) == pytest.approx({"pearson": 1.0, "spearman": 1.0, "kendall": 1.0})
    assert metrics.correlations(a, -a)["kendall"] == pytest.approx(-1.0)
    assert np.isnan(metrics.correlations(a[:2], a[:2])["pearson"])
    np.testing.assert_allclose(metrics.relative_errors([1.0, 0.0, -2.0], [1.1, 0.0, 2.0]), [0.1 / 1.1, 0.0, 2.0])
    assert metrics.central_difference(3.0, 1.0, 0.5) == 2.0
    assert metrics.mean_pairwise_spearman(np.array([[1.0, 2, 3], [1, 3, 2], [3, 2, 1]])) == pytest.approx(
        (0.5 - 1 - 0.5) / 3
    )
