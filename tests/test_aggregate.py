"""Stage aggregate and the `pipeline.top` query command, on hand-made score files."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import InfluenceSettings, OutputSettings, Settings, TrainSettings, with_task_defaults
from pipeline.data import make_dataset
from pipeline.errors import DataError
from pipeline.io import arguments
from pipeline.io.layout import RunLayout
from pipeline.io.tables import SIGN_CONVENTION, scores_table, write_table
from pipeline.stages import aggregate
from pipeline.stages.context import RunContext
from pipeline.top import main as top_main

N = 6
# influence per seed for samples 0..5: seed 1 reverses the order of two samples of seed 0
INFLUENCE = {0: np.array([0.5, -1.0, 2.0, 0.0, -3.0, 1.0]), 1: np.array([1.5, -1.0, 1.0, 0.0, -2.0, 2.0])}


def _write_scores(root, seeds=(0, 1), shards=2, drop=None, duplicate=None, method="trajectory", task="classification"):
    """Parts of `method` for `seeds` under a claimed scores key; returns the RunContext aggregate reads."""
    settings = Settings(
        train=TrainSettings(seeds=tuple(seeds)),
        influence=InfluenceSettings(method=method),
        output=OutputSettings(dir=str(root)),
    )
    layout = RunLayout(root)
    targets = np.arange(N) % 3 if task == "classification" else np.linspace(-1.0, 1.0, N)
    dataset = make_dataset("toy", task, {"x": np.zeros((N, 4))}, targets, {"x": np.zeros((3, 4))}, targets[:3])
    score_arguments = arguments.score_arguments(with_task_defaults(settings), "trajectory-key")
    arguments.claim(layout.root, layout.score_arguments(method), score_arguments, f"{method} scores", False, [])
    for seed in seeds:
        ids = np.arange(N)
        if drop is not None:
            ids = ids[ids != drop]
        if duplicate is not None:
            ids = np.append(ids, duplicate)
        for shard, part_ids in enumerate(np.array_split(ids, shards)):
            grads = {"x": np.full((part_ids.size, 4), float(seed + 1))}
            table = scores_table(
                part_ids,
                targets[part_ids],
                task,
                INFLUENCE[seed][part_ids],
                grads,
                np.full(part_ids.size, 0.1 * seed),
                {},
            )
            write_table(table, layout.score_part(method, seed, shard))
    return RunContext(settings, dataset, layout, "trajectory-key", arguments.key_of(score_arguments))


def test_ranking_combines_seeds_and_shards(tmp_path):
    details = aggregate.run(_write_scores(tmp_path))
    ranking = pq.read_table(tmp_path / "ranking.parquet")
    assert ranking.schema.metadata[b"sign_convention"].decode() == SIGN_CONVENTION
    rows = {r["sample_id"]: r for r in ranking.to_pylist()}
    assert len(rows) == N and details.rows == N
    mean = (INFLUENCE[0] + INFLUENCE[1]) / 2
    std = np.abs(INFLUENCE[0] - INFLUENCE[1]) / 2  # population std of two values
    for i in range(N):
        assert rows[i]["influence_mean"] == pytest.approx(mean[i])
        assert rows[i]["influence_std"] == pytest.approx(std[i])
        assert rows[i]["n_seeds"] == 2 and rows[i]["label"] == i % 3 and rows[i]["method"] == "trajectory"
        assert rows[i]["input_grad_norm_mean"] == pytest.approx(1.5 * 2)  # norms 2 and 4 (rows of 1s and 2s, d=4)
        assert rows[i]["train_loss_mean"] == pytest.approx(0.05)
    by_rank = [r["sample_id"] for r in sorted(ranking.to_pylist(), key=lambda r: r["rank"])]
    assert by_rank == list(np.argsort(-mean, kind="stable"))  # 1 = most harmful = largest mean influence
    # Seeds agree on ranks except for samples 0/5 and 2: Spearman of the two influence vectors.
    from scipy.stats import spearmanr

    assert details.seed_agreement["trajectory"] == pytest.approx(spearmanr(INFLUENCE[0], INFLUENCE[1]).statistic)


def test_one_seed_has_zero_std_and_no_agreement_figure(tmp_path):
    details = aggregate.run(_write_scores(tmp_path, seeds=(0,)))
    ranking = pq.read_table(tmp_path / "ranking.parquet")
    assert set(ranking["influence_std"].to_pylist()) == {0.0}
    assert details.seed_agreement == {"trajectory": None}


@pytest.mark.parametrize("kind,kwargs", [("missing", {"drop": 3}), ("duplicated", {"duplicate": 2})])
def test_incomplete_or_duplicated_scores_are_refused(tmp_path, kind, kwargs):
    context = _write_scores(tmp_path, **kwargs)
    with pytest.raises(DataError, match=r"scores/method=trajectory/seed=0: holds"):
        aggregate.run(context)
    assert not (tmp_path / "ranking.parquet").exists()


def test_top_prints_harmful_and_helpful_in_order(tmp_path, capsys):
    aggregate.run(_write_scores(tmp_path))
    mean = (INFLUENCE[0] + INFLUENCE[1]) / 2
    assert top_main(["--run", str(tmp_path), "--k", "3", "--by", "harmful"]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [int(row[1]) for row in printed] == list(np.argsort(-mean)[:3])
    assert top_main(["--run", str(tmp_path), "--k", "2", "--by", "helpful"]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [int(row[1]) for row in printed] == list(np.argsort(mean)[:2])


def test_top_without_ranking_is_a_one_line_error(tmp_path, capsys):
    assert top_main(["--run", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: --run {tmp_path}: no ranking.parquet (run the aggregate stage first)"
    )


def test_methods_scored_from_one_trajectory_are_ranked_together(tmp_path):
    """Two methods in one output.dir: each ranked over its own seeds, in one ranking.parquet."""
    _write_scores(tmp_path, method="tracin", seeds=(0,))
    context = _write_scores(tmp_path, method="trajectory")
    details = aggregate.run(context)
    ranking = pq.read_table(tmp_path / "ranking.parquet")
    assert list(details.methods) == ["tracin", "trajectory"] and ranking.num_rows == 2 * N
    tracin = {r["sample_id"]: r for r in ranking.to_pylist() if r["method"] == "tracin"}
    assert all(tracin[i]["n_seeds"] == 1 and tracin[i]["influence_mean"] == INFLUENCE[0][i] for i in range(N))


def test_regression_ranking_carries_the_target(tmp_path):
    aggregate.run(_write_scores(tmp_path, task="regression"))
    ranking = pq.read_table(tmp_path / "ranking.parquet")
    assert "label" not in ranking.column_names and ranking.schema.field("target").type == "double"
    for row in ranking.to_pylist():
        assert row["target"] == pytest.approx(np.linspace(-1.0, 1.0, N)[row["sample_id"]])
