"""The artifact keys of a few composed configurations, as literal values recorded before the settings were defined
by pipeline/config.py's fields (issue 17). A run directory resumes only while its keys stay the same, so a change
to any value here means existing runs would be refused (or, for the config hash, lose their stage records): make
such a change on purpose, never as a side effect. Pure Python, no TF or Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipeline.config import settings_from_config
from pipeline.io.arguments import (
    claim,
    features_key,
    key_of,
    score_arguments,
    trajectory_arguments,
)
from pipeline.io.files import read_json
from pipeline.io.queries import query_arguments

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
FINGERPRINT = "classification:x:0123456789abcdef"  # any fixed data fingerprint: the data's share of the trajectory key

# overrides -> trajectory key, scores key, features key, queries key, config hash (Settings.result_hash)
KEYS = [
    ([], "abd4180f4adff250", "643d088b926b1606", "7ae5c25608a813df", "aadc504925949819", "fc965ca2f6cead18"),
    (
        ["influence=trak"],
        "abd4180f4adff250",
        "e604026c309f0f2f",
        "d125df40a787d899",
        "9c6c71a69cae09b1",
        "ec4d28d5208c6d4b",
    ),
    (
        ["optimizer=adam"],
        "d9e439a3b3af3f3a",
        "c5cf135469c8fac5",
        "06eb1a9050048155",
        "a88a91f2feac08e9",
        "7d6cd65280b4e65d",
    ),
    (
        ["task=regression"],
        "7c5f5a8ba21e2bf6",
        "3f506ab1eca7bd1b",
        "afa2847d59893e0b",
        "12daa947b8da64cd",
        "54291beea20a8e4f",
    ),
    (
        ["task=regression", "influence=trak", "optimizer=adam"],
        "058844392948debc",
        "e8782b775d7b7ef2",
        "7b41955a940ce47a",
        "652d1dc03e7aa39e",
        "d731f5719708a29d",
    ),
    (
        ["influence.queries=per_sample", "influence.query_ids=[3,17]"],
        "abd4180f4adff250",
        "643d088b926b1606",
        "7ae5c25608a813df",
        "755785cca45bf314",
        "eb178e3bcd92243c",
    ),
    (
        ["influence=sensitivity", "influence.output_weights=[1,0.5]"],
        "abd4180f4adff250",
        "b949caee1261ce21",
        "b84ed51f841808b6",
        "6c40e5c8169ea58a",
        "a8b69ac0c5493285",
    ),
    (
        ["data=parquet", "data.path=t.parquet", "data.inputs={b:[g],a:[f]}"],
        "abd4180f4adff250",
        "643d088b926b1606",
        "7ae5c25608a813df",
        "aadc504925949819",
        "90c92143d980dfc4",
    ),
    (
        ["model=custom", "model.builder=pkg.mod:fn"],
        "3f960c0b1917bf86",
        "ca8c1c958ab69580",
        "f21c6de94f6370cb",
        "38d01ac79c54b91f",
        "b0b726d386e56006",
    ),
    (
        ["train.seeds=[0,1,2]", "train.dtype=float64"],
        "2bbda1ef9fecdea8",
        "426dc64b71a72e78",
        "6d27362348b1664a",
        "8cdd56ae9cb438f0",
        "6071de84d7580482",
    ),
]


@pytest.mark.parametrize(
    "overrides,trajectory,scores,features,queries,config_hash", KEYS, ids=[" ".join(k[0]) or "default" for k in KEYS]
)
def test_keys_of_a_composed_config_are_unchanged(
    tmp_path, overrides, trajectory, scores, features, queries, config_hash
):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        settings = settings_from_config(compose(config_name="config", overrides=overrides))
    assert key_of(trajectory_arguments(settings, FINGERPRINT)) == trajectory
    assert key_of(score_arguments(settings, trajectory)) == scores
    assert features_key(settings, trajectory) == features
    assert key_of(query_arguments(settings, trajectory)) == queries
    assert settings.result_hash() == config_hash
    # the key a run directory records (claim compares that one)
    path = tmp_path / "trajectory" / "_arguments.json"
    claim(tmp_path, path, trajectory_arguments(settings, FINGERPRINT), "a trajectory", False, [])
    assert read_json(path)["key"] == trajectory
