"""influence.state_memory through the pipeline: training keeps every state in trajectory/seed=<s>/states.npy
when it fits the budget, and the sweep reads it instead of replaying, with the same scores and query
parts bit for bit; over budget, or with a damaged file, the sweep replays and says so in its summary."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq

from pipeline.config import InfluenceSettings
from pipeline.run import execute

from test_pipeline_run import small_settings


def with_influence(out, **influence):
    base = small_settings(out, stages=("train", "score"))
    changes = {"queries": "per_sample", "query_ids": (1, 6), "query_batch": 2, **influence}
    return replace(base, influence=replace(InfluenceSettings(), **changes))


def scores(root):
    return pq.read_table(root / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet")


def queries(root):
    return pq.read_table(root / "queries" / "method=trajectory" / "seed=0" / "part-00000.parquet")


def summaries(root):
    train = json.loads((root / "trajectory" / "seed=0" / "_summary.json").read_text())
    score = json.loads((root / "scores" / "method=trajectory" / "seed=0" / "_summary.json").read_text())
    query = json.loads((root / "queries" / "method=trajectory" / "seed=0" / "_summary.json").read_text())
    return train, score, query


def test_kept_states_replace_the_replay_with_identical_results(ray_session, tmp_path):
    execute(with_influence(tmp_path / "replay"))
    execute(with_influence(tmp_path / "kept", state_memory="1GB"))

    train, score, query = summaries(tmp_path / "kept")
    assert train["states"]["kept"] and (tmp_path / "kept" / "trajectory" / "seed=0" / "states.npy").is_file()
    assert score["replayed"] is False and query["replayed"] is False and query["queries_per_second"] > 0
    states = np.load(tmp_path / "kept" / "trajectory" / "seed=0" / "states.npy", mmap_mode="r")
    assert states.shape == (train["n_steps"],) and train["states"]["bytes"] == states.nbytes
    with np.load(tmp_path / "kept" / "trajectory" / "seed=0" / "checkpoints" / "step=4.npz") as checkpoint:
        np.testing.assert_array_equal(states[4]["trainable/0000"], checkpoint["trainable/0000"])
    assert summaries(tmp_path / "replay")[1]["replayed"] is True
    assert not (tmp_path / "replay" / "trajectory" / "seed=0" / "states.npy").exists()
    for read in (scores, queries):
        kept, replayed = read(tmp_path / "kept"), read(tmp_path / "replay")
        np.testing.assert_array_equal(kept["influence"].to_numpy(), replayed["influence"].to_numpy())
    np.testing.assert_array_equal(np.stack(scores(tmp_path / "kept")["input_grad"].to_numpy(zero_copy_only=False)), np.stack(scores(tmp_path / "replay")["input_grad"].to_numpy(zero_copy_only=False)))


def test_over_budget_or_damaged_states_fall_back_to_the_replay(ray_session, tmp_path):
    execute(with_influence(tmp_path / "small", state_memory="1KB"))
    train, score, _ = summaries(tmp_path / "small")
    assert train["states"] == {"kept": False, "bytes": train["states"]["bytes"], "budget": 1000} and train["states"]["bytes"] > 1000
    assert score["replayed"] is True and not (tmp_path / "small" / "trajectory" / "seed=0" / "states.npy").exists()

    root = tmp_path / "damaged"
    execute(with_influence(root, state_memory="1GB"))
    reference = scores(root)["influence"].to_numpy()
    path = root / "trajectory" / "seed=0" / "states.npy"
    path.write_bytes(path.read_bytes()[:-100])
    for part in (root / "scores").rglob("part-*.parquet"):
        part.unlink()
    execute(with_influence(root, state_memory="1GB"))
    assert summaries(root)[1]["replayed"] is True
    np.testing.assert_array_equal(scores(root)["influence"].to_numpy(), reference)
