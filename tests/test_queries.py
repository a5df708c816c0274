"""Per-query attribution end to end through Ray: long-format parts per query batch, query_top.parquet,
resume per batch with quarantine, refusals, `python -m pipeline.top --query`, and per_class against
per_sample."""

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
from test_pipeline_run import N, small_settings

from pipeline.config import DataSettings, InfluenceSettings, validate
from pipeline.errors import ConfigError
from pipeline.io.queries import QUERY_SIGN_CONVENTION
from pipeline.run import execute

QUERY_IDS = (0, 3, 7)


def query_settings(out, **influence):
    base = small_settings(out, stages=("train", "score", "aggregate"))
    changes = {"queries": "per_sample", "query_ids": QUERY_IDS, "query_batch": 2, "query_top_k": 5, **influence}
    return replace(base, influence=replace(base.influence, **changes))


def parts(root):
    return sorted((root / "queries" / "method=trajectory" / "seed=0").glob("part-*.parquet"))


def test_parts_query_top_resume_and_cli(ray_session, tmp_path):
    settings = query_settings(tmp_path)
    execute(settings)

    first, second = parts(tmp_path)
    assert [p.name for p in (first, second)] == ["part-00000.parquet", "part-00001.parquet"]
    table = pads.dataset(tmp_path / "queries", format="parquet", partitioning="hive").to_table()
    assert table.column_names == ["query_id", "sample_id", "influence", "method", "seed"]
    assert table.num_rows == len(QUERY_IDS) * N
    assert sorted(set(table["query_id"].to_pylist())) == list(QUERY_IDS)
    part = pq.read_table(first)
    assert part.schema.metadata[b"sign_convention"].decode() == QUERY_SIGN_CONVENTION
    assert json.loads(part.schema.metadata[b"query_ids"]) == [0, 3]
    assert part["query_id"].to_pylist() == [0] * N + [3] * N and part["sample_id"].to_pylist() == list(range(N)) * 2
    influence = part["influence"].to_numpy().reshape(2, N)
    assert np.all(np.isfinite(influence)) and not np.allclose(influence[0], influence[1])

    top = pq.read_table(tmp_path / "query_top.parquet")
    assert top.column_names == ["query_id", "rank", "sample_id", "influence", "direction"]
    assert top.num_rows == len(QUERY_IDS) * 2 * 5
    harmful = top.filter(pads.field("direction") == "harmful").filter(pads.field("query_id") == 3).sort_by("rank")
    helpful = top.filter(pads.field("direction") == "helpful").filter(pads.field("query_id") == 3).sort_by("rank")
    assert harmful["sample_id"].to_pylist() == list(np.argsort(-influence[1], kind="stable")[:5])
    assert helpful["sample_id"].to_pylist() == list(np.argsort(influence[1], kind="stable")[:5])
    np.testing.assert_array_equal(harmful["influence"].to_numpy(), np.sort(influence[1])[::-1][:5])

    cli = subprocess.run(
        [sys.executable, "-m", "pipeline.top", "--run", str(tmp_path), "--query", "3", "--k", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].startswith("query 3, validation sample 3: most harmful") and lines[2].split()[1] == str(
        harmful["sample_id"][0].as_py()
    )
    assert lines[4].startswith("query 3, validation sample 3: most helpful") and lines[6].split()[1] == str(
        helpful["sample_id"][0].as_py()
    )
    missing = subprocess.run(
        [sys.executable, "-m", "pipeline.top", "--run", str(tmp_path), "--query", "5"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert (
        missing.returncode == 2
        and "--query 5: not in" in missing.stderr
        and "3 per_sample queries: 0, 3, 7" in missing.stderr
    )

    # Resume per query batch: an intact part is kept, a truncated one is quarantined and recomputed.
    kept = first.stat().st_mtime_ns
    second.write_bytes(second.read_bytes()[:100])
    execute(settings)
    assert first.stat().st_mtime_ns == kept
    assert (second.parent / ".part-00001.parquet.corrupt").exists()
    assert pq.read_table(second)["query_id"].to_pylist() == [7] * N

    # Other query settings are refused, naming the setting; overwrite replaces only the queries.
    other = query_settings(tmp_path, query_ids=(1,))
    with pytest.raises(
        ConfigError,
        match=(
            r"holds trajectory per_sample queries computed with other settings \(influence.query_ids=\[0, 3, 7\] "
            r"there, \[1\] now\)"
        ),
    ):
        execute(other)
    scores = tmp_path / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet"
    scores_stamp = scores.stat().st_mtime_ns
    execute(replace(other, output=replace(other.output, overwrite=True)))
    assert [json.loads(pq.read_schema(p).metadata[b"query_ids"]) for p in parts(tmp_path)] == [[1]]
    assert scores.stat().st_mtime_ns == scores_stamp  # the mean scores do not depend on the queries


def test_per_class_is_the_mean_of_its_per_sample_queries_with_input_grads(ray_session, tmp_path, digits_subset):
    rows = np.flatnonzero(digits_subset(N).y_val == 3)
    by_class = query_settings(tmp_path / "class", queries="per_class", query_ids=(3,), query_input_grad=True)
    by_sample = query_settings(
        tmp_path / "sample", query_ids=tuple(int(r) for r in rows), query_batch=16, query_input_grad=True
    )
    execute(by_class)
    execute(by_sample)
    cls = pq.read_table(parts(tmp_path / "class")[0])
    assert cls.schema.field("input_grad").type.list_size == 64 and json.loads(cls.schema.metadata[b"input_shapes"]) == {
        "x": [8, 8, 1]
    }
    samples = (
        pads.dataset(parts(tmp_path / "sample"), format="parquet")
        .to_table()
        .sort_by([("query_id", "ascending"), ("sample_id", "ascending")])
    )
    per_sample = samples["influence"].to_numpy().reshape(rows.size, N)
    np.testing.assert_allclose(cls["influence"].to_numpy(), per_sample.mean(axis=0), rtol=1e-8, atol=1e-14)
    grads = samples["input_grad"].combine_chunks().flatten().to_numpy().reshape(rows.size, N, 64)
    class_grads = cls["input_grad"].combine_chunks().flatten().to_numpy().reshape(N, 64)
    np.testing.assert_allclose(class_grads, grads.mean(axis=0), rtol=1e-4, atol=1e-6)  # stored as float32


@pytest.mark.parametrize(
    "influence,message",
    [
        (
            InfluenceSettings(method="tracin", queries="per_sample"),
            "influence.queries=per_sample: needs influence.method=trajectory or trak (got tracin)",
        ),
        (
            InfluenceSettings(queries="all"),
            "influence.queries='all': unknown (known: mean, per_sample, per_class, groups)",
        ),
        (
            InfluenceSettings(query_ids=(1,)),
            "influence.query_ids: needs influence.queries=per_sample, per_class or groups",
        ),
        (InfluenceSettings(queries="per_sample", query_batch=0), "influence.query_batch=0: must be a positive integer"),
    ],
)
def test_settings_are_refused_in_one_line(tmp_path, influence, message):
    with pytest.raises(ConfigError) as error:
        validate(replace(small_settings(tmp_path), influence=influence))
    assert str(error.value) == message


def test_query_ids_outside_the_validation_set_are_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match=r"influence.query_ids: 100000 is not a validation sample id \(0\.\.359\)"):
        execute(query_settings(tmp_path, query_ids=(0, 100000)))
    assert not (tmp_path / "queries").exists() and not (tmp_path / "trajectory").exists()


def grouped_npz(path, digits, g_val):
    """The small run's data as an npz whose first 20 validation samples carry the group ids g_val."""
    np.savez(
        path,
        x_train=digits.x_train["x"],
        y_train=digits.y_train,
        x_val=digits.x_val["x"][:20],
        y_val=digits.y_val[:20],
        g_val=g_val,
    )
    return DataSettings(source="npz", path=str(path))


def test_groups_are_the_mean_of_their_per_sample_queries(ray_session, tmp_path, digits_subset):
    digits, g_val = digits_subset(N), np.array([4, 9, 9, 2] * 5)
    data = grouped_npz(tmp_path / "grouped.npz", digits, g_val)
    by_group = replace(query_settings(tmp_path / "groups", queries="groups", query_ids=None), data=data)
    by_sample = replace(query_settings(tmp_path / "samples", query_ids=None, query_batch=20), data=data)
    execute(by_group)
    execute(by_sample)
    groups = (
        pads.dataset(parts(tmp_path / "groups"), format="parquet")
        .to_table()
        .sort_by([("query_id", "ascending"), ("sample_id", "ascending")])
    )
    assert sorted(set(groups["query_id"].to_pylist())) == [2, 4, 9]
    samples = (
        pads.dataset(parts(tmp_path / "samples"), format="parquet")
        .to_table()
        .sort_by([("query_id", "ascending"), ("sample_id", "ascending")])
    )
    per_sample = samples["influence"].to_numpy().reshape(20, N)
    for row, group in enumerate([2, 4, 9]):
        expected = per_sample[g_val == group].mean(axis=0)
        np.testing.assert_allclose(
            groups["influence"].to_numpy()[row * N : (row + 1) * N], expected, rtol=1e-8, atol=1e-14
        )
    top = subprocess.run(
        [sys.executable, "-m", "pipeline.top", "--run", str(tmp_path / "groups"), "--query", "9", "--k", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert top.returncode == 0 and "group 9 (mean over its validation samples)" in top.stdout, top.stderr

    # new group ids are new queries: refused without output.overwrite, nothing rewritten
    grouped_npz(tmp_path / "grouped.npz", digits, np.array([4, 9, 2, 2] * 5))
    with pytest.raises(ConfigError, match=r"groups queries computed with other settings \(groups="):
        execute(by_group)


def test_groups_need_group_ids_in_the_data(tmp_path):
    with pytest.raises(
        ConfigError,
        match=(
            r"^influence.queries=groups: the data has no validation groups \(npz array g_val, or parquet "
            r"data.group_column\)$"
        ),
    ):
        execute(query_settings(tmp_path, queries="groups", query_ids=None))
    assert not (tmp_path / "trajectory").exists()
