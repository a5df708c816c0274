"""Hydra composition of conf/ and its conversion into validated, typed Settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipeline.config import (
    ClusterSettings,
    DataSettings,
    InfluenceSettings,
    ModelSettings,
    OptimizerSettings,
    OutputSettings,
    Settings,
    TrainSettings,
    VerifySettings,
    settings_from_config,
)
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def make_settings(*overrides: str) -> Settings:
    return settings_from_config(make_cfg(*overrides))


# --------------------------------------------------------------------------------------------- defaults


def test_default_config_composes_to_digits_mlp_sgd_trajectory():
    s = make_settings()
    assert s == Settings(
        data=DataSettings(source="digits", path=None, val_fraction=0.2, split_seed=0, max_train=None),
        model=ModelSettings(name="mlp", hidden=(64,), activation="tanh", dropout=0.0, batch_norm=False),
        optimizer=OptimizerSettings(name="sgd", lr=0.1),
        train=TrainSettings(epochs=10, batch_size=32, seeds=(0,), shuffle=True, dtype="float32", loss="cross_entropy"),
        influence=InfluenceSettings(method="trajectory", objective="cross_entropy", checkpoint_every=None),
        verify=VerifySettings(n_gradcheck=6, n_loo=20, fd_step=None, seed=0),
        cluster=ClusterSettings(address=None, num_cpus=None, cpus_per_task=1.0, gpus_per_task=0.0, tf_threads=1, max_retries=2),
        output=OutputSettings(dir="outputs/default", overwrite=False),
        stages=("train", "score", "aggregate", "report"),
    )
    # the lists of the YAML arrive as tuples, the numbers with their YAML types
    assert type(s.model.hidden) is tuple and type(s.train.seeds) is tuple and type(s.stages) is tuple
    assert type(s.optimizer.lr) is float and type(s.train.epochs) is int and type(s.train.shuffle) is bool
    assert s.output_dir == Path("outputs/default")


def test_composed_config_has_no_hydra_node_and_every_section():
    cfg = make_cfg()
    assert set(cfg.keys()) == {"data", "model", "optimizer", "influence", "cluster", "output", "train", "verify", "stages"}


# -------------------------------------------------------------------------------------- group choices

GROUP_CASES = [
    (["data=digits"], "data", {"source": "digits", "path": None, "val_fraction": 0.2, "split_seed": 0, "max_train": None}),
    (
        ["data=synthetic"],
        "data",
        {"source": "synthetic", "n_samples": 2000, "n_features": 20, "n_classes": 3, "n_informative": 10, "val_fraction": 0.2, "split_seed": 0, "max_train": None},
    ),
    (
        ["data=npz", "data.path=/data/mnist.npz"],
        "data",
        {"source": "npz", "path": "/data/mnist.npz", "val_from": "test", "val_fraction": 0.2, "split_seed": 0, "max_train": None},
    ),
    (
        ["data=parquet", "data.path=/data/table.parquet"],
        "data",
        {"source": "parquet", "path": "/data/table.parquet", "label_column": "label", "feature_columns": None, "split_column": None, "val_fraction": 0.2},
    ),
    (["model=logistic"], "model", {"name": "logistic"}),
    (["model=mlp"], "model", {"name": "mlp", "hidden": (64,), "activation": "tanh", "dropout": 0.0, "batch_norm": False}),
    (["model=cnn"], "model", {"name": "cnn", "filters": (32, 64), "kernel_size": 3, "activation": "relu", "dropout": 0.5}),
    (["model=custom", "model.builder=mypkg.nets:build"], "model", {"name": "custom", "builder": "mypkg.nets:build", "from_logits": True}),
    (["optimizer=sgd"], "optimizer", {"name": "sgd", "lr": 0.1}),
    (["optimizer=momentum"], "optimizer", {"name": "momentum", "lr": 0.05, "momentum": 0.9, "nesterov": False}),
    (["optimizer=adam"], "optimizer", {"name": "adam", "lr": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
]


@pytest.mark.parametrize("overrides,section,expected", GROUP_CASES, ids=[" ".join(c[0]) for c in GROUP_CASES])
def test_every_group_choice_composes_to_matching_settings(overrides, section, expected):
    s = make_settings(*overrides)
    got = getattr(s, section)
    assert {k: getattr(got, k) for k in expected} == expected
    # the other groups keep their defaults
    default = make_settings()
    for other in ("data", "model", "optimizer"):
        if other != section:
            assert getattr(s, other) == getattr(default, other)


def test_group_choice_only_sets_keys_of_its_yaml():
    # logistic.yaml sets only the name: the remaining fields are the dataclass defaults
    assert make_settings("model=logistic").model == ModelSettings(name="logistic")
    assert make_settings("optimizer=sgd").optimizer == OptimizerSettings(name="sgd", lr=0.1)


def test_overrides_arrive_typed():
    s = make_settings("model.hidden=[32,16]", "train.seeds=[0,1,2]", "train.dtype=float64", "optimizer.lr=0.5")
    assert s.model.hidden == (32, 16) and type(s.model.hidden) is tuple
    assert all(type(h) is int for h in s.model.hidden)
    assert s.train.seeds == (0, 1, 2) and type(s.train.seeds) is tuple
    assert s.train.dtype == "float64"
    assert s.optimizer.lr == 0.5 and type(s.optimizer.lr) is float


def test_more_overrides_arrive_typed():
    s = make_settings(
        "data=parquet",
        "data.path=t.parquet",
        "data.feature_columns=[a,b]",
        "data.split_column=split",
        "stages=[train,score,verify]",
        "influence.checkpoint_every=5",
        "train.shuffle=false",
        "cluster.num_cpus=4",
        "output.overwrite=true",
    )
    assert s.data.feature_columns == ("a", "b") and type(s.data.feature_columns) is tuple
    assert s.data.split_column == "split"
    assert s.stages == ("train", "score", "verify")
    assert s.influence.checkpoint_every == 5
    assert s.train.shuffle is False
    assert s.cluster.num_cpus == 4
    assert s.output.overwrite is True


# ------------------------------------------------------------------------------------------ invalid values

INVALID = [
    (["optimizer.lr=-0.1"], "optimizer.lr"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=true"], "optimizer.lr"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.dtype=float16"], "train.dtype"),
    (["data.source=imagenet"], "data.source"),
    (["model.name=transformer"], "model.name"),
    (["optimizer.name=rmsprop"], "optimizer.name"),
    (["train.seeds=[1,2,1]"], "train.seeds"),
    (["train.seeds=[]"], "train.seeds"),
    (["train.seeds=[-1]"], "train.seeds"),
    (["train.epochs=0"], "train.epochs"),
    (["train.loss=hinge"], "train.loss"),
    (["influence.objective=foo"], "influence.objective"),
    (["influence.method=influence_functions"], "influence.method"),
    (["influence.checkpoint_every=0"], "influence.checkpoint_every"),
    (["+train.foo=1"], "train.foo"),
    (["+optimizer.weight_decay=0.1"], "optimizer.weight_decay"),
    (["stages=[train,bogus]"], "stages"),
    (["stages=[]"], "stages"),
    (["model=custom"], "model.builder"),
    (["model=custom", "model.builder=no_colon"], "model.builder"),
    (["data.val_fraction=1.0"], "data.val_fraction"),
    (["data.max_train=0"], "data.max_train"),
    (["data=npz", "data.path=x.npz", "data.val_from=train"], "data.val_from"),
    (["model.dropout=1.0"], "model.dropout"),
    (["model.hidden=[0]"], "model.hidden"),
    (["optimizer=momentum", "optimizer.momentum=1.0"], "optimizer.momentum"),
    (["verify.n_loo=-1"], "verify.n_loo"),
    (["cluster.cpus_per_task=0"], "cluster.cpus_per_task"),
    (["output.dir=''"], "output.dir"),
]


@pytest.mark.parametrize("overrides,setting", INVALID, ids=[" ".join(c[0]) for c in INVALID])
def test_invalid_setting_raises_one_line_config_error_naming_it(overrides, setting):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        settings_from_config(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(setting), message
    # the setting name is followed by '=' or ':' (not a longer name sharing the prefix)
    assert re.match(re.escape(setting) + r"[=:]", message), message


@pytest.mark.parametrize("source", ["npz", "parquet"])
def test_file_source_without_path_raises_config_error_naming_data_path(source):
    cfg = make_cfg(f"data={source}")
    with pytest.raises(ConfigError, match=r"^data\.path") as info:
        settings_from_config(cfg)
    assert "\n" not in str(info.value)


# -------------------------------------------------------------------------------------------- result hash


def test_result_hash_ignores_cluster_output_and_stages():
    base = make_settings().result_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert make_settings().result_hash() == base  # deterministic
    for overrides in (
        ["cluster.num_cpus=4"],
        ["cluster.address=auto", "cluster.max_retries=0", "cluster.tf_threads=8"],
        ["output.dir=/somewhere/else"],
        ["output.overwrite=true"],
        ["stages=[train,score,verify]"],
        ["stages=[train]"],
    ):
        assert make_settings(*overrides).result_hash() == base, overrides


def test_result_hash_changes_with_result_settings():
    base = make_settings().result_hash()
    changed = {
        tuple(o): make_settings(*o).result_hash()
        for o in (
            ["optimizer.lr=0.5"],
            ["optimizer=adam"],
            ["model.hidden=[32]"],
            ["train.seeds=[0,1]"],
            ["train.epochs=3"],
            ["train.dtype=float64"],
            ["data.max_train=100"],
            ["influence.objective=margin"],
        )
    }
    for overrides, h in changed.items():
        assert h != base, overrides
    assert len(set(changed.values())) == len(changed)


def test_result_hash_does_not_depend_on_int_vs_float_spelling():
    a, b = make_settings("optimizer.lr=1"), make_settings("optimizer.lr=1.0")
    assert a == b
    assert a.result_hash() == b.result_hash()


# ----------------------------------------------------------------------------------------- command line


def test_cli_cfg_job_prints_composed_yaml_without_running():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "source: digits" in out
    assert "name: mlp" in out
    assert "name: sgd" in out
    assert "method: trajectory" in out
    assert "- train\n- score" in out
    # -X importtime lists every imported module on stderr: TensorFlow must not be among them
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported, "no -X importtime output"
    assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in imported)
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
