"""Hydra composition of conf/ and its conversion into validated, typed Settings."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import get_type_hints

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipeline.config import (
    DATA_SOURCES,
    DEFAULT_LOSS,
    METHODS,
    OPTIMIZERS,
    TASK_LOSSES,
    AggregateSettings,
    ClusterSettings,
    DataSettings,
    EvaluationSettings,
    InfluenceSettings,
    ModelSettings,
    OptimizerSettings,
    OutputSettings,
    Settings,
    TaskSettings,
    TrainSettings,
    VerifySettings,
    defaults,
    groups,
    settings_from_config,
    validate,
    with_task_defaults,
)
from pipeline.errors import ConfigError
from pipeline.methods import REGISTRY
from pipeline.models import MODELS
from pipeline.stage_registry import STAGES, in_order

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
        task=TaskSettings(name="classification"),
        data=DataSettings(source="digits", path=None, val_fraction=0.2, split_seed=0, max_train=None),
        model=ModelSettings(name="mlp", hidden=(64,), activation="tanh", dropout=0.0, batch_norm=False),
        optimizer=OptimizerSettings(name="sgd", lr=0.1),
        train=TrainSettings(
            epochs=10,
            batch_size=32,
            seeds=(0,),
            shuffle=True,
            dtype="float32",
            loss="cross_entropy",
            checkpoint_every=None,
        ),
        influence=InfluenceSettings(method="trajectory", objective="cross_entropy", output_weights=None),
        verify=VerifySettings(n_gradcheck=6, n_loo=20, fd_step=None, seed=0),
        cluster=ClusterSettings(
            address=None, num_cpus=None, cpus_per_task=1.0, gpus_per_task=0.0, tf_threads=1, max_retries=2
        ),
        output=OutputSettings(dir="outputs/default", overwrite=False),
        stages=("train", "score", "aggregate", "report"),
    )
    # the lists of the YAML arrive as tuples, the numbers with their YAML types
    assert type(s.model.hidden) is tuple and type(s.train.seeds) is tuple and type(s.stages) is tuple
    assert type(s.optimizer.lr) is float and type(s.train.epochs) is int and type(s.train.shuffle) is bool
    assert s.output_dir == Path("outputs/default")
    assert s.data.inputs is None


def test_yaml_leaves_loss_and_objective_to_the_task():
    # the YAML says null; settings_from_config fills in the task's default
    cfg = make_cfg()
    assert cfg.train.loss is None and cfg.influence.objective is None
    assert cfg.task.name == "classification"


def test_composed_config_has_no_hydra_node_and_every_section():
    cfg = make_cfg()
    assert set(cfg.keys()) == {
        "task",
        "data",
        "model",
        "optimizer",
        "influence",
        "cluster",
        "output",
        "train",
        "verify",
        "aggregate",
        "stages",
    }


# -------------------------------------------------------------------------------------- group choices

GROUP_CASES = [
    (["task=classification"], "task", {"name": "classification"}),
    (["task=regression"], "task", {"name": "regression"}),
    (
        ["data=digits"],
        "data",
        {"source": "digits", "path": None, "val_fraction": 0.2, "split_seed": 0, "max_train": None},
    ),
    (
        ["data=synthetic"],
        "data",
        {
            "source": "synthetic",
            "n_samples": 2000,
            "n_features": 20,
            "n_classes": 3,
            "n_informative": 10,
            "val_fraction": 0.2,
            "split_seed": 0,
            "max_train": None,
        },
    ),
    (
        ["data=npz", "data.path=/data/mnist.npz"],
        "data",
        {
            "source": "npz",
            "path": "/data/mnist.npz",
            "inputs": None,
            "val_from": "test",
            "val_fraction": 0.2,
            "split_seed": 0,
            "max_train": None,
        },
    ),
    (
        ["data=mnist"],
        "data",
        {"source": "mnist", "path": None, "val_fraction": 0.2, "split_seed": 0, "max_train": None},
    ),
    (
        ["data=parquet", "data.path=/data/table.parquet"],
        "data",
        {
            "source": "parquet",
            "path": "/data/table.parquet",
            "label_column": "label",
            "feature_columns": None,
            "inputs": None,
            "split_column": None,
            "val_fraction": 0.2,
        },
    ),
    (["model=logistic"], "model", {"name": "logistic"}),
    (
        ["model=mlp"],
        "model",
        {"name": "mlp", "hidden": (64,), "activation": "tanh", "dropout": 0.0, "batch_norm": False},
    ),
    (
        ["model=cnn"],
        "model",
        {"name": "cnn", "filters": (32, 64), "kernel_size": 3, "activation": "relu", "dropout": 0.5},
    ),
    (
        ["model=custom", "model.builder=mypkg.nets:build"],
        "model",
        {"name": "custom", "builder": "mypkg.nets:build", "from_logits": True},
    ),
    (
        ["model=saved", "model.path=/models/net.keras"],
        "model",
        {"name": "saved", "path": "/models/net.keras", "from_logits": True, "builder": None},
    ),
    (["optimizer=sgd"], "optimizer", {"name": "sgd", "lr": 0.1}),
    (["optimizer=momentum"], "optimizer", {"name": "momentum", "lr": 0.05, "momentum": 0.9, "nesterov": False}),
    (["optimizer=adam"], "optimizer", {"name": "adam", "lr": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
    (["influence=trajectory"], "influence", {"method": "trajectory", "objective": "cross_entropy"}),
    (
        ["influence=lookahead"],
        "influence",
        {"method": "lookahead", "objective": "cross_entropy", "steps": 1, "shard_size": 1024, "batch_size": 64},
    ),
    (
        ["influence=tracin"],
        "influence",
        {"method": "tracin", "objective": "cross_entropy", "shard_size": 1024, "batch_size": 256},
    ),
    (
        ["influence=loss"],
        "influence",
        {"method": "loss", "objective": "cross_entropy", "shard_size": 1024, "batch_size": 1024},
    ),
    (
        ["influence=saliency"],
        "influence",
        {"method": "saliency", "objective": "cross_entropy", "shard_size": 1024, "batch_size": 1024},
    ),
    (
        ["influence=sensitivity"],
        "influence",
        {"method": "sensitivity", "output_weights": None, "shard_size": 1024, "batch_size": 1024},
    ),
]


@pytest.mark.parametrize("overrides,section,expected", GROUP_CASES, ids=[" ".join(c[0]) for c in GROUP_CASES])
def test_every_group_choice_composes_to_matching_settings(overrides, section, expected):
    s = make_settings(*overrides)
    got = getattr(s, section)
    assert {k: getattr(got, k) for k in expected} == expected
    # the other groups keep their defaults
    default = make_settings()
    for other in ("task", "data", "model", "optimizer", "influence"):
        if other == "influence" and section == "task":
            # only the objective follows the task
            assert s.influence == replace(default.influence, objective=s.train.loss)
        elif other != section:
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
        "train.checkpoint_every=5",
        "train.shuffle=false",
        "cluster.num_cpus=4",
        "output.overwrite=true",
    )
    assert s.data.feature_columns == ("a", "b") and type(s.data.feature_columns) is tuple
    assert s.data.split_column == "split"
    assert s.stages == ("train", "score", "verify")
    assert s.train.checkpoint_every == 5 and type(s.train.checkpoint_every) is int
    assert s.train.shuffle is False
    assert s.cluster.num_cpus == 4
    assert s.output.overwrite is True


def test_new_settings_arrive_typed():
    s = make_settings("data=npz", "data.path=d.npz", "data.inputs=[prices,image]")
    assert s.data.inputs == ("prices", "image") and type(s.data.inputs) is tuple
    s = make_settings("data=parquet", "data.path=t.parquet", "data.inputs={prices:[open,close],volume:volume}")
    assert s.data.inputs == {"prices": ["open", "close"], "volume": "volume"}
    assert list(s.data.inputs) == ["prices", "volume"]  # the order of the override is the order of the inputs
    s = make_settings("influence=sensitivity", "influence.output_weights=[1,0.5,-2]")
    assert s.influence.output_weights == (1.0, 0.5, -2.0) and type(s.influence.output_weights) is tuple
    assert all(type(w) is float for w in s.influence.output_weights)  # 1 and 1.0 are one config
    assert make_settings("influence=sensitivity", "influence.output_weights=[1]") == make_settings(
        "influence=sensitivity", "influence.output_weights=[1.0]"
    )
    s = make_settings("model=saved", "model.path='~/nets/model.keras'", "model.from_logits=false")
    assert s.model.path == "~/nets/model.keras" and s.model.from_logits is False


# ------------------------------------------------------------------------------------------- task and losses


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_null_loss_and_objective_take_the_task_default(task):
    s = make_settings(f"task={task}")
    assert s.task == TaskSettings(name=task)
    assert s.train.loss == s.influence.objective == DEFAULT_LOSS[task]
    assert DEFAULT_LOSS == {"classification": "cross_entropy", "regression": "mse"}


def test_explicit_loss_and_objective_are_kept():
    s = make_settings("train.loss=mse", "influence.objective=margin")
    assert s.train.loss == "mse" and s.influence.objective == "margin"
    s = make_settings("task=regression", "train.loss=huber")
    assert s.train.loss == "huber" and s.influence.objective == "mse"  # only the null one is filled in


def test_explicit_default_equals_null():
    assert make_settings() == make_settings("train.loss=cross_entropy", "influence.objective=cross_entropy")
    assert make_settings("task=regression") == make_settings(
        "task=regression", "train.loss=mse", "influence.objective=mse"
    )


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_every_built_in_loss_of_the_task_is_accepted(task):
    assert TASK_LOSSES == {"classification": ("cross_entropy", "mse", "margin"), "regression": ("mse", "mae", "huber")}
    for loss in TASK_LOSSES[task]:
        s = make_settings(f"task={task}", f"train.loss={loss}", f"influence.objective={loss}")
        assert s.train.loss == loss and s.influence.objective == loss


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_module_function_losses_are_accepted_for_either_task(task):
    s = make_settings(f"task={task}", "train.loss=mypkg.losses:pinball", "influence.objective=mypkg.losses:quantile_90")
    assert s.train.loss == "mypkg.losses:pinball" and s.influence.objective == "mypkg.losses:quantile_90"


@pytest.mark.parametrize(
    "overrides,setting,other",
    [
        (["task=regression", "train.loss=cross_entropy"], "train.loss", "classification"),
        (["task=regression", "influence.objective=margin"], "influence.objective", "classification"),
        (["train.loss=mae"], "train.loss", "regression"),
        (["influence.objective=huber"], "influence.objective", "regression"),
    ],
)
def test_a_loss_of_the_other_task_is_refused_with_a_hint(overrides, setting, other):
    with pytest.raises(ConfigError) as info:
        make_settings(*overrides)
    message = str(info.value)
    assert message.startswith(f"{setting}=") and "\n" not in message
    assert f"(set task={other})" in message, message
    task = "regression" if other == "classification" else "classification"
    assert f"unknown for task={task}" in message and all(name in message for name in TASK_LOSSES[task])


def test_an_unknown_loss_gets_no_task_hint():
    with pytest.raises(ConfigError) as info:
        make_settings("train.loss=hinge")
    assert "set task=" not in str(info.value) and "module:function" in str(info.value)


def test_hand_built_settings_take_the_task_defaults_when_made():
    s = Settings(task=TaskSettings("regression"))
    assert s.train.loss == "mse" and s.influence.objective == "mse"
    s = Settings(train=TrainSettings(loss="margin"))
    assert s.train.loss == "margin" and s.influence.objective == "cross_entropy"
    assert with_task_defaults(s) is s  # nothing left to fill in
    s = replace(s, influence=InfluenceSettings(method="tracin"))  # a new section is filled in too
    assert s.influence.objective == "cross_entropy"
    assert Settings(task=TaskSettings("ranking")).train.loss is None  # an unknown task is validate's to refuse


def test_validate_checks_hand_built_settings():
    validate(Settings())  # the dataclass defaults are valid
    with pytest.raises(ConfigError, match=r"^model\.path: required for model=saved"):
        validate(Settings(model=ModelSettings(name="saved")))
    with pytest.raises(ConfigError, match=r"^task\.name='ranking': unknown \(known: classification, regression\)"):
        validate(Settings(task=TaskSettings("ranking")))
    with pytest.raises(ConfigError, match=r"^data\.inputs="):
        validate(Settings(data=DataSettings(inputs="prices")))


def test_checkpoint_every_moved_to_train():
    with pytest.raises(ConfigError, match=r"^influence\.checkpoint_every: unknown setting \(known: .*output_weights"):
        make_settings("+influence.checkpoint_every=5")
    assert "checkpoint_every" not in {f for f in InfluenceSettings.__dataclass_fields__}
    assert make_settings("train.checkpoint_every=7").train.checkpoint_every == 7


# ---------------------------------------------------------------------------------------------- methods


def test_methods_come_from_the_registry():
    assert tuple(REGISTRY) == METHODS
    assert set(METHODS) == {"trajectory", "lookahead", "tracin", "loss", "saliency", "sensitivity", "truncated", "trak"}


def test_every_method_has_a_config_group_and_composes():
    groups = {p.stem for p in (ROOT / "conf" / "influence").glob("*.yaml")}
    assert groups == set(METHODS)
    for method in METHODS:
        assert make_settings(f"influence={method}").influence.method == method
        # and under the other task
        assert make_settings("task=regression", f"influence={method}").influence.objective == "mse"


def test_removed_names_are_gone():
    import pipeline.config as config

    for name in ("SHARDED_METHODS", "OBJECTIVES", "TRAIN_LOSSES"):
        assert not hasattr(config, name), name


# ------------------------------------------------------------------------------------------ invalid values

INVALID = [
    (["optimizer.lr=-0.1"], "optimizer.lr"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=true"], "optimizer.lr"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.dtype=float16"], "train.dtype"),
    (["data.source=imagenet"], "data.source"),
    (["model.name=transformer"], "model.name"),
    (["optimizer.name=adadelta"], "optimizer.name"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay"),
    (["optimizer.clipnorm=1.0", "optimizer.global_clipnorm=1.0"], "optimizer.global_clipnorm"),
    (["optimizer.schedule=cosines"], "optimizer.schedule"),
    (["optimizer.schedule=warmup_cosine"], "optimizer.warmup_steps"),
    (["optimizer.schedule=cosine", "optimizer.decay_rate=0.5"], "optimizer.decay_rate"),
    (["train.seeds=[1,2,1]"], "train.seeds"),
    (["train.seeds=[]"], "train.seeds"),
    (["train.seeds=[-1]"], "train.seeds"),
    (["train.epochs=0"], "train.epochs"),
    (["train.loss=hinge"], "train.loss"),
    (["influence.objective=foo"], "influence.objective"),
    (["influence.method=influence_functions"], "influence.method"),
    (["train.checkpoint_every=0"], "train.checkpoint_every"),
    (["train.checkpoint_every=1.5"], "train.checkpoint_every"),
    (["+influence.checkpoint_every=5"], "influence.checkpoint_every"),  # moved to train.checkpoint_every
    (["task.name=ranking"], "task.name"),
    (["+task.loss=mse"], "task.loss"),
    (["train.loss=huber"], "train.loss"),  # a regression loss under classification
    (["task=regression", "train.loss=cross_entropy"], "train.loss"),
    (["task=regression", "train.loss=margin"], "train.loss"),
    (["task=regression", "influence.objective=cross_entropy"], "influence.objective"),
    (["task=regression", "influence.objective=foo"], "influence.objective"),
    (["train.loss=mypkg.losses:"], "train.loss"),
    (["train.loss=:fn"], "train.loss"),
    (["influence.objective=mypkg:not-a-name"], "influence.objective"),
    (["model=saved"], "model.path"),
    (["model=saved", "model.path=''"], "model.path"),
    (["influence=sensitivity", "influence.output_weights=[]"], "influence.output_weights"),
    (["influence=sensitivity", "influence.output_weights=[1,a]"], "influence.output_weights"),
    (["influence=sensitivity", "influence.output_weights=[true]"], "influence.output_weights"),
    (["influence.method=random"], "influence.method"),
    (["data=npz", "data.path=x.npz", "data.inputs=prices"], "data.inputs"),
    (["data=npz", "data.path=x.npz", "data.inputs=3"], "data.inputs"),
    (["data.source=cifar"], "data.source"),
    (["+train.foo=1"], "train.foo"),
    (["+optimizer.decay=0.1"], "optimizer.decay"),
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


def test_saved_model_without_path_names_model_path():
    with pytest.raises(ConfigError, match=r"^model\.path: required but not set \(pass model\.path=\.\.\.\)$"):
        make_settings("model=saved")


def test_scalar_output_weights_is_config_error():
    with pytest.raises(ConfigError, match=r"^influence\.output_weights="):
        make_settings("influence=sensitivity", "influence.output_weights=2")


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
            ["task=regression"],
            ["train.loss=mse"],
            ["train.checkpoint_every=5"],
            ["influence.method=sensitivity"],
            ["influence=sensitivity", "influence.output_weights=[2]"],
            ["data=mnist"],
            ["data.split_seed=1"],
        )
    }
    for overrides, h in changed.items():
        assert h != base, overrides
    assert len(set(changed.values())) == len(changed)


def test_result_hash_follows_the_order_of_npz_inputs():
    ab = make_settings("data=npz", "data.path=d.npz", "data.inputs=[a,b]")
    ba = make_settings("data=npz", "data.path=d.npz", "data.inputs=[b,a]")
    assert ab != ba and ab.result_hash() != ba.result_hash()


def test_result_hash_follows_the_order_of_parquet_inputs():
    ab = make_settings("data=parquet", "data.path=t.parquet", "data.inputs={a:[f],b:[g]}")
    ba = make_settings("data=parquet", "data.path=t.parquet", "data.inputs={b:[g],a:[f]}")
    assert ab.result_hash() != ba.result_hash()


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
    assert "task:\n  name: classification" in out
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


def test_state_memory_takes_a_size():
    assert make_settings("influence.state_memory=2GB").influence.state_memory == "2GB"
    assert make_settings("influence=truncated", "influence.state_memory=512MiB").influence.state_memory == "512MiB"
    assert (
        make_settings("influence.state_memory=2GB").result_hash() == make_settings().result_hash()
    )  # numbers unchanged
    with pytest.raises(ConfigError, match=r"^influence\.state_memory='lots': must be a size such as 2GB"):
        make_settings("influence.state_memory=lots")


# ------------------------------------------------------------------------------------------- typed values

BAD_TYPES = [
    (["output.overwrite=no"], "output.overwrite='no': must be true or false"),
    (["output.overwrite=maybe"], "output.overwrite='maybe': must be true or false"),
    (["output.overwrite=0"], "output.overwrite=0: must be true or false"),
    (["model.batch_norm=1"], "model.batch_norm=1: must be true or false"),
    (["train.shuffle=yes"], "train.shuffle='yes': must be true or false"),
    (["optimizer=momentum", "optimizer.nesterov=0"], "optimizer.nesterov=0: must be true or false"),
    (
        ["model=saved", "model.path=m.keras", "model.from_logits=maybe"],
        "model.from_logits='maybe': must be true or false",
    ),
    (["influence.query_input_grad=1"], "influence.query_input_grad=1: must be true or false"),
    (["verify.smoothness=off"], "verify.smoothness='off': must be true or false"),
    (["train.epochs=3.0"], "train.epochs=3.0: must be an integer"),
    (["train.checkpoint_every=1.5"], "train.checkpoint_every=1.5: must be an integer or null"),
    (["cluster.max_retries=true"], "cluster.max_retries=true: must be an integer"),
    (["optimizer.lr=abc"], "optimizer.lr='abc': must be a number"),
    (["verify.fd_step=false"], "verify.fd_step=false: must be a number or null"),
    (["output.dir=null"], "output.dir=null: must be a string"),
    (["train.dtype=[float32]"], "train.dtype=['float32']: must be a string"),
    (["model.hidden=64"], "model.hidden=64: must be a list of integers"),
    (["train.seeds=[0,true]"], "train.seeds=[0, True]: must be a list of integers"),
    (
        ["data=parquet", "data.path=t.parquet", "data.feature_columns=a"],
        "data.feature_columns='a': must be a list of strings or null",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD_TYPES, ids=[" ".join(c[0]) for c in BAD_TYPES])
def test_a_value_of_the_wrong_type_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        make_settings(*overrides)
    assert str(info.value) == message


def test_every_bool_setting_takes_only_true_or_false():
    """Every bool field of every section, present and future, is checked by its type, not by a list of names."""
    sections = {f.name: f.default_factory for f in fields(Settings) if is_dataclass(f.default_factory)}
    flags = [
        f"{name}.{field}"
        for name, cls in sections.items()
        for field, hint in get_type_hints(cls).items()
        if hint is bool
    ]
    assert {"output.overwrite", "model.batch_norm", "model.from_logits", "optimizer.nesterov", "train.shuffle"} <= set(
        flags
    )
    for flag in flags:
        for bad, shown in (("no", "'no'"), ("maybe", "'maybe'"), ("1", "1"), ("0", "0"), ("null", "null")):
            with pytest.raises(ConfigError) as info:
                make_settings(f"++{flag}={bad}")
            assert str(info.value) == f"{flag}={shown}: must be true or false"
        section, name = flag.split(".")
        assert getattr(getattr(make_settings(f"++{flag}=true"), section), name) is True
        assert getattr(getattr(make_settings(f"++{flag}=false"), section), name) is False


def test_loose_spellings_that_mean_one_value_are_kept():
    s = make_settings(
        "output.dir=2024", "influence.state_memory=1000000", "cluster.cpus_per_task=2", "train.checkpoint_every=null"
    )
    assert s.output.dir == "2024" and s.influence.state_memory == "1000000"  # Hydra reads the digits as a number
    assert s.cluster.cpus_per_task == 2.0 and type(s.cluster.cpus_per_task) is float
    assert s.train.checkpoint_every is None
    assert make_settings("output.overwrite=TRUE").output.overwrite is True  # Hydra's own spelling of a boolean


def test_cli_refuses_a_bad_boolean_before_touching_a_finished_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "_SUCCESS").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", f"output.dir={run}", "output.overwrite=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "error: output.overwrite='no': must be true or false"
    assert [p.name for p in run.iterdir()] == ["_SUCCESS"]


# ------------------------------------------------------------------------------ one definition of the settings

SECTIONS = {f.name: f.default_factory for f in fields(Settings) if is_dataclass(f.default_factory)}


def test_every_setting_has_a_help_text():
    for cls in (*SECTIONS.values(), EvaluationSettings):
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
    assert next(f for f in fields(Settings) if f.name == "stages").metadata["help"]


def test_the_options_of_a_group_are_those_of_its_registry_and_its_files():
    options = {name: set(group.options) for name, group in groups().items()}
    assert options == {
        "task": set(TASK_LOSSES),
        "data": set(DATA_SOURCES),
        "model": set(MODELS),
        "optimizer": set(OPTIMIZERS),
        "influence": set(REGISTRY),
    }
    for name, names in options.items():
        assert {p.stem for p in (ROOT / "conf" / name).glob("*.yaml")} == names, name


def test_every_setting_of_a_grouped_section_is_read_by_an_option():
    for name, group in groups().items():
        settings = {f.name for f in fields(SECTIONS[name])}
        read = set().union(*map(set, group.options.values()))
        assert read <= settings and settings == read | {group.selector}, name
        assert all(set(required) <= set(group.options[option]) for option, required in group.required.items())


def test_group_files_set_only_what_differs_from_the_defaults():
    for name, group in groups().items():
        for option, reads in group.options.items():
            values = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / name / f"{option}.yaml")) or {}
            schema = defaults(SECTIONS[name])
            for key, value in values.items():
                assert key in reads, f"{name}/{option}.yaml: {key} is not read by {name}={option}"
                assert value != schema[key], f"{name}/{option}.yaml: {key}={value} restates the default"
    for path in ROOT.glob("conf/*.yaml"):  # the primary configs set no setting to its default either
        values = OmegaConf.to_container(OmegaConf.load(path))
        for section, settings in values.items():
            if section in ("defaults", "hydra"):
                continue
            cls = SECTIONS.get(section, EvaluationSettings)
            assert all(v != defaults(cls)[k] for k, v in settings.items()), path


@pytest.mark.parametrize(
    "overrides,section",
    [
        (["model=cnn"], "model"),
        (["optimizer=adam"], "optimizer"),
        (["influence=trak"], "influence"),
        (["data=npz", "data.path=d.npz"], "data"),
    ],
)
def test_an_option_composes_exactly_the_settings_it_reads(overrides, section):
    cfg = make_cfg(*overrides)
    group = groups()[section]
    option = overrides[0].split("=")[1]
    assert set(cfg[section]) == {group.selector, *group.options[option]}
    assert list(cfg[section]) == [f.name for f in fields(SECTIONS[section]) if f.name in cfg[section]]  # in field order


def test_sections_without_a_group_compose_every_setting():
    cfg = make_cfg()
    for name in ("train", "verify", "aggregate", "cluster", "output"):
        assert OmegaConf.to_container(cfg[name]) == defaults(SECTIONS[name]), name
    assert list(cfg.stages) == list(Settings().stages)


def test_an_option_that_requires_a_setting_names_it():
    for overrides, setting in (
        (["model=custom"], "model.builder"),
        (["model=saved"], "model.path"),
        (["data=npz"], "data.path"),
        (["data=parquet"], "data.path"),
    ):
        with pytest.raises(
            ConfigError, match=rf"^{re.escape(setting)}: required but not set \(pass {re.escape(setting)}=\.\.\.\)$"
        ):
            make_settings(*overrides)
    with pytest.raises(ConfigError, match=r"^model\.builder: required for model=custom$"):
        validate(Settings(model=ModelSettings(name="custom")))


def test_a_setting_the_option_does_not_read_is_refused_by_hydra():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="optimizer.momentum"):
        make_cfg("optimizer=adam", "optimizer.momentum=0.9")
    assert make_settings("optimizer=momentum", "optimizer.momentum=0.5").optimizer.momentum == 0.5


def test_stages_come_from_the_stage_registry():
    assert list(STAGES) == ["train", "score", "verify", "aggregate", "report"]
    assert [s.name for s in in_order(("report", "train", "verify"))] == ["train", "verify", "report"]
    assert {name for name, stage in STAGES.items() if stage.ray} == {"train", "score", "verify"}
    assert make_settings("stages=[report,train]").stages == ("report", "train")  # as given; run in registry order
    with pytest.raises(
        ConfigError, match=r"^stages=\['train', 'bogus'\]: must be a non-empty list of stages \(known: train, score"
    ):
        make_settings("stages=[train,bogus]")


def test_aggregate_ensemble_is_checked():
    with pytest.raises(
        ConfigError, match=r"^aggregate\.ensemble='median': unknown \(known: mean, standardized, rank\)$"
    ):
        validate(Settings(aggregate=AggregateSettings(ensemble="median")))
