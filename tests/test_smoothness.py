"""The smoothness verdict from ladder numbers (pure), and the verdict box at the top of the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import smoothness

STEPS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def test_relative_deviation_by_hand_and_below_rounding():
    actual, predicted = np.array([1.0, -2.0, 1e-20, 0.5]), np.array([0.5, -2.0, 2e-20, -0.5])
    deviation = smoothness.relative_deviation(actual, predicted, floor=1e-15)
    assert deviation[0] == pytest.approx(0.5) and deviation[1] == 0.0 and deviation[3] == pytest.approx(2.0)
    assert np.isnan(deviation[2])  # both changes below the rounding floor: no evidence either way


def test_ladder_summary_finds_the_linear_range():
    deviations = np.array([[0.01, 0.02, 0.1, 0.6, 0.9], [0.02, 0.01, 0.3, 0.8, 1.0], [0.0, 0.05, 0.2, 0.7, 0.4]])
    summary = smoothness.ladder_summary(STEPS, deviations)
    assert summary["median_deviation"] == pytest.approx([0.01, 0.02, 0.2, 0.7, 0.9])
    assert summary["linear_up_to"] == 1e-2  # the first median over 0.5 is at s = 0.1
    # A later median back under the threshold does not extend the range; steps below rounding are skipped.
    assert smoothness.ladder_summary(STEPS, np.array([[np.nan, 0.1, 0.9, 0.1, 0.1]]))["linear_up_to"] == 1e-3
    assert smoothness.ladder_summary(STEPS, np.array([[0.9, 0.1, 0.1, 0.1, 0.1]]))["linear_up_to"] is None


@pytest.mark.parametrize(
    "single,groups,expected",
    [
        (1.0, (1.0, 1.0), "smooth"),
        (1e-3, (1.0, 1.0), "groups-only"),
        (1e-3, (1.0, 1e-2), "non-smooth"),
        (None, (), "non-smooth"),
    ],
)
def test_verdict(single, groups, expected):
    result = smoothness.verdict(
        {"linear_up_to": single}, {f"group {i}": {"linear_up_to": g} for i, g in enumerate(groups)}
    )
    assert result == expected


def test_explanation_names_what_would_help():
    settings = {"train": {"dtype": "float32"}, "model": {"name": "mlp", "activation": "relu"}, "optimizer": {"lr": 0.1}}
    text = smoothness.explanation(
        {"verdict": "non-smooth", "perturbation_growth": 250.0, "initial_perturbation": 1e-3}, settings
    )
    assert (
        "smaller optimizer.lr (now 0.1)" in text
        and "tanh" in text
        and "train.dtype=float64" in text
        and "seeds" in text
    )
    assert "grew 250x" in text
    smooth = smoothness.explanation({"verdict": "smooth"}, settings)
    assert "predicts what removing a single training sample does" in smooth and "What would change" not in smooth


def test_report_shows_the_verdict_at_the_top(tmp_path):
    from report.test_report import image_data, make_run

    from pipeline.report import write_report

    dataset = image_data()
    run = make_run(tmp_path, dataset)
    manifest = json.loads((run / "manifest.json").read_text())
    html = write_report(run, dataset, final_status="succeeded").read_text()
    assert "Predictive power not checked" in html  # verify ran without the smoothness block
    ladder = {"steps": list(STEPS), "median_deviation": [0.01, 0.1, 0.7, 0.9, 1.0], "linear_up_to": 1e-3}
    manifest["stages"]["verify"]["smoothness"] = {
        "verdict": "non-smooth",
        "explanation": "Because ReLU & Adam.",
        "single": ladder,
        "groups": {"group 0.05": ladder},
        "initial_perturbation": 1e-6,
        "perturbation_growth": 1.5,
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    html = write_report(run, dataset, final_status="succeeded").read_text()
    top = html[: html.index("Run settings")]
    assert 'class="verdict verdict-non-smooth"' in top and "Scores do not predict removals" in top
    assert "Because ReLU &amp; Adam." in top  # escaped
    assert "Smoothness: does the derivative predict finite changes?" in html
