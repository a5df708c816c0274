"""`python -m pipeline.top` on hand-made ranking.parquet files: class labels, scalar and k-wide regression targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.tables import target_array
from pipeline.top import main as top_main

REPO = Path(__file__).resolve().parent.parent
INFLUENCE = np.array([0.5, -1.0, 2.0, 0.0, -3.0, 1.0])  # samples 0..5
ORDER = np.argsort(-INFLUENCE)  # sample_id by rank: 2, 5, 0, 3, 1, 4


def write_ranking(root: Path, task: str, targets: np.ndarray, methods: tuple[str, ...] = ("trajectory",)) -> Path:
    """ranking.parquet as stage aggregate writes it: targets [6] (label or target) or [6, k]."""
    n = len(INFLUENCE)
    tables = [
        pa.table(
            {
                "method": pa.array([method] * n, pa.string()),
                "sample_id": pa.array(ORDER, pa.int64()),
                "influence_mean": pa.array(INFLUENCE[ORDER]),
                "influence_std": pa.array(np.zeros(n)),
                "n_seeds": pa.array(np.ones(n, np.int64)),
                "input_grad_norm_mean": pa.array(np.ones(n)),
                "train_loss_mean": pa.array(np.full(n, 0.5)),
                "rank": pa.array(np.arange(1, n + 1), pa.int64()),
                "label" if task == "classification" else "target": target_array(targets[ORDER], task),
            }
        )
        for method in methods
    ]
    pq.write_table(pa.concat_tables(tables), root / "ranking.parquet")
    return root


def printed(capsys) -> tuple[list[str], list[list[str]]]:
    """Header and rows of what top printed, split on whitespace."""
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    return lines[0], lines[1:]


def test_classification_prints_labels(tmp_path, capsys):
    write_ranking(tmp_path, "classification", np.arange(6) % 3)
    assert top_main(["--run", str(tmp_path), "--k", "3"]) == 0
    header, rows = printed(capsys)
    assert header[:3] == ["rank", "sample_id", "label"]
    assert [(int(r[1]), int(r[2])) for r in rows] == [(s, s % 3) for s in ORDER[:3]]
    assert top_main(["--run", str(tmp_path), "--k", "2", "--by", "helpful"]) == 0
    _, rows = printed(capsys)
    assert [int(r[1]) for r in rows] == [4, 1] and [int(r[0]) for r in rows] == [6, 5]


def test_regression_prints_targets(tmp_path, capsys):
    targets = np.array([0.25, 1.5, -2.125, 3.0, 1e-5, 123456.789])
    write_ranking(tmp_path, "regression", targets)
    assert top_main(["--run", str(tmp_path), "--k", "6"]) == 0
    header, rows = printed(capsys)
    assert header[:3] == ["rank", "sample_id", "target"] and "label" not in header
    assert [int(r[1]) for r in rows] == ORDER.tolist()
    assert [float(r[2]) for r in rows] == pytest.approx(targets[ORDER], rel=1e-5)
    assert rows[0][2] == "-2.125" and rows[1][2] == "123457"


def test_wide_targets_print_compactly(tmp_path, capsys):
    targets = np.arange(12, dtype=float).reshape(6, 2) / 4
    write_ranking(tmp_path, "regression", targets)
    assert top_main(["--run", str(tmp_path), "--k", "2"]) == 0
    _, rows = printed(capsys)
    assert [r[2] for r in rows] == ["[1,1.25]", "[2.5,2.75]"]  # samples 2 and 5
    assert all(len(r) == 8 for r in rows)  # one field per column: no spaces inside a target


def test_method_choice_and_errors(tmp_path, capsys):
    write_ranking(tmp_path, "regression", np.zeros(6), methods=("tracin", "sensitivity"))
    assert top_main(["--run", str(tmp_path), "--k", "1", "--method", "sensitivity"]) == 0
    assert printed(capsys)[1][0][1] == "2"
    assert top_main(["--run", str(tmp_path), "--method", "loss"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: --method loss: not in {tmp_path / 'ranking.parquet'} (has sensitivity, tracin)"
    )
    assert top_main(["--run", str(tmp_path), "--k", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --k 0: must be positive"
    assert top_main(["--run", str(tmp_path / "missing")]) == 2
    assert "no ranking.parquet (run the aggregate stage first)" in capsys.readouterr().err


def test_ranking_without_label_or_target_is_refused(tmp_path, capsys):
    write_ranking(tmp_path, "classification", np.zeros(6, np.int64))
    table = pq.read_table(tmp_path / "ranking.parquet")
    pq.write_table(table.drop_columns(["label"]), tmp_path / "ranking.parquet")
    assert top_main(["--run", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'ranking.parquet'}: has neither a label nor a target column"
    )


def test_module_entry_point(tmp_path):
    write_ranking(tmp_path, "regression", np.linspace(0, 1, 6))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.top", "--run", str(tmp_path), "--k", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[1:3] == ["2", "0.4"]
