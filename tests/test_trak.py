"""influence=trak end to end through Ray: the features map-reduce against the same computation done in one
process, resume that reuses or repairs features, another damping without new features, queries as matrix products
(their mean is the mean score), ensembles in the ranking, and the report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_pipeline_run import N, small_settings

from pipeline.config import AggregateSettings, InfluenceSettings
from pipeline.errors import ConfigError
from pipeline.io import features as store
from pipeline.io.layout import RunLayout
from pipeline.io.tables import read_parts
from pipeline.kernels import trak_scores
from pipeline.run import execute

TRAK = InfluenceSettings(method="trak", proj_dim=48, shard_size=40, batch_size=50, checkpoints=2)


def _trak(out, **changes):
    return small_settings(
        out,
        influence=replace(TRAK, **changes),
        train=replace(small_settings(out).train, seeds=(0, 1)),
        stages=("train", "score", "aggregate"),
    )


def _scores(root, seed=0):
    table = read_parts(RunLayout(root).score_parts("trak", seed)).sort_by("sample_id")
    assert table["sample_id"].to_pylist() == list(range(N))
    return table


@pytest.mark.slow  # about 2 minutes; test_queries_are_matrix_products... runs the map-reduce in the default run
def test_map_reduce_equals_one_process_and_resumes(ray_session, tmp_path, capsys):
    settings = _trak(tmp_path)
    payload = execute(settings)
    score = payload["stages"]["score"]
    assert score["features"]["computed_shards"] == 2 * 4 and len(score["features"]["checkpoints"]["0"]) == 2
    table = _scores(tmp_path)
    # the reduce by hand: every shard's features, one kernel, one inverse per checkpoint
    folder = store.features_dir(tmp_path, "trak", 0)
    shards = [store.read_shard(folder, s) for s in range(4)]
    phi = np.concatenate([np.asarray(s.phi) for s in shards], axis=1).astype(np.float64)  # [C, N, k]
    slope = np.concatenate([s.slope for s in shards], axis=1)
    target = np.load(folder / "validation.npz")["objective"]
    expected = np.mean(
        [
            trak_scores.scores(
                phi[c], slope[c], trak_scores.kernel_inverse(phi[c].T @ phi[c], TRAK.damping), target[c][None]
            )[0]
            for c in range(2)
        ],
        axis=0,
    )
    np.testing.assert_allclose(table["influence"].to_numpy(), expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    assert np.all(table["self_influence"].to_numpy() > 0)
    assert pq.read_schema(RunLayout(tmp_path).score_part("trak", 0, 0)).field("self_influence").type == "double"

    # a rerun reuses everything; a damaged feature file is found by its digest and recomputed alone
    before = table["influence"].to_numpy()
    with open(store.phi_path(folder, 2), "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    RunLayout(tmp_path).score_part("trak", 0, 2).unlink()
    payload = execute(settings)
    assert "features of shard 2 features do not match their digest; recomputing" in capsys.readouterr().out
    assert payload["stages"]["score"]["features"]["computed_shards"] == 1
    np.testing.assert_allclose(_scores(tmp_path)["influence"].to_numpy(), before, rtol=1e-6)

    ranking = pq.read_table(tmp_path / "ranking.parquet").to_pandas()
    assert set(ranking.columns) >= {"influence_ensemble", "influence_mean"}
    aggregate = json.loads((tmp_path / "manifest.json").read_text())["stages"]["aggregate"]
    assert set(aggregate["seed_scale"]["trak"]) == {"0", "1"} and aggregate["seed_agreement_pairs"]["trak"][0][
        "seeds"
    ] == [0, 1]

    # another damping is refused without overwrite; with it, the features are reused and only the kernel changes
    heavier = _trak(tmp_path, damping=0.5)
    with pytest.raises(ConfigError, match="influence.damping=1e-06 there, 0.5 now"):
        execute(heavier)
    payload = execute(replace(heavier, output=replace(heavier.output, overwrite=True)))
    assert payload["stages"]["score"]["features"]["computed_shards"] == 0
    damped = _scores(tmp_path)["influence"].to_numpy()
    assert not np.allclose(damped, before)
    assert np.corrcoef(damped, before)[0, 1] > 0.5  # heavier damping shrinks the kernel toward a scaled identity


def test_queries_are_matrix_products_whose_mean_is_the_mean_score(ray_session, tmp_path):
    settings = _trak(tmp_path, queries="per_sample", query_batch=128)
    settings = replace(
        settings, train=replace(settings.train, seeds=(0,)), aggregate=AggregateSettings(ensemble="standardized")
    )
    payload = execute(settings)
    n_val = payload["data"]["n_val"]
    queries = pq.read_table(tmp_path / "queries" / "method=trak").to_pandas()
    assert len(queries) == n_val * N
    matrix = queries.pivot(index="query_id", columns="sample_id", values="influence").to_numpy()
    mean = _scores(tmp_path)["influence"].to_numpy()
    np.testing.assert_allclose(matrix.mean(axis=0), mean, rtol=2e-3, atol=2e-3 * np.abs(mean).max())
    assert (tmp_path / "query_top.parquet").exists()
