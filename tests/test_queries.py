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

from pipeline.config import InfluenceSettings, validate
from pipeline.errors import ConfigError
from pipeline.io.queries import QUERY_SIGN_CONVENTION
from pipeline.run import execute

from conftest import REPO
from test_pipeline_run import N, small_settings

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

    cli = subprocess.run([sys.executable, "-m", "pipeline.top", "--run", str(tmp_path), "--query", "3", "--k", "2"], capture_output=True, text=True, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].startswith("query 3, validation sample 3: most harmful") and lines[2].split()[1] == str(harmful["sample_id"][0].as_py())
    assert lines[4].startswith("query 3, validation sample 3: most helpful") and lines[6].split()[1] == str(helpful["sample_id"][0].as_py())
    missing = subprocess.run([sys.executable, "-m", "pipeline.top", "--run", str(tmp_path), "--query", "5"], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "--query 5: not in" in missing.stderr and "3 per_sample queries: 0, 3, 7" in missing.stderr

    # Resume per query batch: an intact part is kept, a truncated one is quarantined and recomputed.
    kept = first.stat().st_mtime_ns
    second.write_bytes(second.read_bytes()[:100])
    execute(settings)
    assert first.stat().st_mtime_ns == kept
    assert (second.parent / ".part-00001.parquet.corrupt").exists()
    assert pq.read_table(second)["query_id"].to_pylist() == [7] * N

    # Other query settings are refused, naming the setting; overwrite replaces only the queries.
    other = query_settings(tmp_path, query_ids=(1,))
    with pytest.raises(ConfigError, match=r"holds trajectory per_sample queries computed with other settings \(influence.query_ids=\[0, 3, 7\] there, \[1\] now\)"):
        execute(other)
    scores = tmp_path / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet"
    scores_stamp = scores.stat().st_mtime_ns
    execute(replace(other, output=replace(other.output, overwrite=True)))
    assert [json.loads(pq.read_schema(p).metadata[b"query_ids"]) for p in parts(tmp_path)] == [[1]]
    assert scores.stat().st_mtime_ns == scores_stamp  # the mean scores do not depend on the queries


def test_per_class_is_the_mean_of_its_per_sample_queries_with_input_grads(ray_session, tmp_path, digits_subset):
    rows = np.flatnonzero(digits_subset(N).y_val == 3)
    by_class = query_settings(tmp_path / "class", queries="per_class", query_ids=(3,), query_input_grad=True)
    by_sample = query_settings(tmp_path / "sample", query_ids=tuple(int(r) for r in rows), query_batch=16, query_input_grad=True)
    execute(by_class)
    execute(by_sample)
    cls = pq.read_table(parts(tmp_path / "class")[0])
    assert cls.schema.field("input_grad").type.list_size == 64 and json.loads(cls.schema.metadata[b"input_shapes"]) == {"x": [8, 8, 1]}
    samples = pads.dataset(parts(tmp_path / "sample"), format="parquet").to_table().sort_by([("query_id", "ascending"), ("sample_id", "ascending")])
    per_sample = samples["influence"].to_numpy().reshape(rows.size, N)
    np.testing.assert_allclose(cls["influence"].to_numpy(), per_sample.mean(axis=0), rtol=1e-8, atol=1e-14)
    grads = samples["input_grad"].combine_chunks().flatten().to_numpy().reshape(rows.size, N, 64)
    class_grads = cls["input_grad"].combine_chunks().flatten().to_numpy().reshape(N, 64)
    np.testing.assert_allclose(class_grads, grads.mean(axis=0), rtol=1e-4, atol=1e-6)  # stored as float32


@pytest.mark.parametrize(
    "influence,message",
    [
        (InfluenceSettings(method="tracin", queries="per_sample"), "influence.queries=per_sample: needs influence.method=trajectory (got tracin)"),
        (InfluenceSettings(queries="groups"), "influence.queries='groups': unknown (known: mean, per_sample, per_class; groups is not implemented yet)"),
        (InfluenceSettings(query_ids=(1,)), "influence.query_ids: needs influence.queries=per_sample or per_class"),
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
