"""Typed settings, validated once. The only module that reads a Hydra DictConfig.

The dataclasses below are the one definition of the configuration. Each field (made by `setting`) holds

- its default, which Hydra composes from the ConfigStore (`register`): conf/ YAML files only select an option and
  set what differs from these defaults;
- its help text, from which scripts/settings_table.py writes the README's settings tables;
- the rules its value must meet, checked by `validate` with a one-line ConfigError naming the setting (a section's
  `together` holds the few rules that read several settings);
- what it changes (`changes`: TRAJECTORY, SCORES, ...), from which io.arguments keys every artifact and
  `Settings.result_hash` hashes the run's results.

The options of a config group (model=cnn, influence=trak, ...) come from the registries (models.MODELS,
methods.REGISTRY) or the tables below, with the settings each option reads: the keys that option composes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from types import UnionType
from typing import (
    Any,
    ClassVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pipeline.errors import ConfigError
from pipeline.io.states import parse_size
from pipeline.kernels.optimizers import OPTIMIZERS as OPTIMIZER_KERNELS  # imports TensorFlow only to build one
from pipeline.kernels.schedule import LR_SCHEDULES
from pipeline.methods import REGISTRY
from pipeline.models import AUGMENTATIONS, MODELS
from pipeline.stage_registry import STAGES

# The options of the config groups without a registry of their own: option -> the settings it reads.
DATA_SOURCES = {  # data.source; every source reads DATA_COMMON too
    "digits": (),
    "synthetic": ("n_samples", "n_features", "n_classes", "n_informative"),
    "mnist": (),
    "npz": ("path", "inputs", "val_from"),
    "parquet": ("path", "label_column", "feature_columns", "inputs", "split_column", "group_column", "weight_column"),
}
DATA_COMMON = ("val_fraction", "split_seed", "max_train")
# optimizer.schedule's parameters as settings of their own (any other parameter: optimizer.schedule_args)
SCHEDULE_SETTINGS = (
    "warmup_steps",
    "alpha",
    "decay_steps",
    "decay_rate",
    "staircase",
    "boundaries",
    "values",
    "schedule_args",
)
# optimizer.name -> the settings it reads: its registry entry's Keras hyperparameters plus what every optimizer takes.
OPTIMIZER_COMMON = ("lr", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "schedule", *SCHEDULE_SETTINGS)
OPTIMIZERS = {name: (*OPTIMIZER_COMMON, *spec.hyper) for name, spec in OPTIMIZER_KERNELS.items()}
# Built-in per-sample losses of each task (kernels/task.py); any of them can train or be the objective E.
TASK_LOSSES = {"classification": ("cross_entropy", "mse", "margin"), "regression": ("mse", "mae", "huber")}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}
METHODS = tuple(REGISTRY)
DTYPES = ("float32", "float64")
ENSEMBLES = ("mean", "standardized", "rank")
FEATURE_DTYPES = ("float32", "float16")
QUERY_KINDS = ("mean", "per_sample", "per_class", "groups")  # influence.queries

# What a setting changes (field metadata "changes"). io.arguments keys each artifact by the settings that change it;
# Settings.result_hash (the config_hash of the manifest and the parts) hashes every setting that changes anything.
DATA = "data"  # the loaded data, so the trajectory through its fingerprint
TRAJECTORY = "trajectory"  # the recorded training runs: the trajectory key
SCORES = "scores"  # a method's scores, when the method lists the setting (methods.Method.settings): the scores key
FEATURES = "features"  # trak's stored features (features/method=trak/...): the features key
QUERIES = "queries"  # the per-query scores: the queries key
RESULTS = "results"  # the run's results outside every key: the method, which seeds run, how samples are batched
ARTIFACTS = (DATA, TRAJECTORY, SCORES, FEATURES, QUERIES, RESULTS)


# ------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """What a value must be: `holds(value)`, or the setting is refused with `must` ("must be a positive integer")."""

    holds: Callable[[Any], bool]
    must: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def one_of(names: Any) -> Rule:
    return Rule(lambda v: v in names, f"unknown (known: {', '.join(names)})")


def at_least(n: int, why: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and v >= n, f"must be an integer >= {n}{why}")


def each(holds: Callable[[Any], bool], must: str, *, non_empty: bool = False, increasing: bool = False) -> Rule:
    """A list whose every item holds (a non-empty one; one in increasing order)."""

    def test(values: Any) -> bool:
        listed = isinstance(values, tuple) and (len(values) > 0 or not non_empty)
        return listed and all(holds(v) for v in values) and (not increasing or list(values) == sorted(values))

    return Rule(test, must)


POSITIVE_INT = Rule(lambda v: _is_int(v) and v > 0, "must be a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: _is_int(v) and v >= 0, "must be a non-negative integer")
POSITIVE = Rule(lambda v: _is_number(v) and v > 0, "must be a positive number")
NON_NEGATIVE = Rule(lambda v: _is_number(v) and v >= 0, "must be a number >= 0")
FRACTION = Rule(lambda v: _is_number(v) and 0 < v < 1, "must be in (0, 1)")
BELOW_ONE = Rule(lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)")
NOT_EMPTY = Rule(bool, "must not be empty")
DISTINCT = Rule(lambda v: len(set(v)) == len(v), "contains duplicates")
POSITIVE_INTS = each(lambda v: _is_int(v) and v > 0, "must be positive integers")
FRACTIONS = each(
    lambda v: _is_number(v) and 0 < v < 1, "must be a non-empty list of fractions in (0, 1)", non_empty=True
)
IDS = each(lambda v: _is_int(v) and v >= 0, "must be a non-empty list of non-negative integers", non_empty=True)
SIZE = Rule(lambda v: parse_size(v) is not None, "must be a size such as 2GB, 512MiB or a number of bytes")
FUNCTION = Rule(lambda v: ":" in str(v), "must be 'package.module:function'")


def setting(
    default: Any, help: str, *rules: Rule, changes: tuple[str, ...] | None = None, keyed_at_default: bool = True
) -> Any:
    """A field of a settings section: its default, its help text, the rules its value must meet (in order; a
    setting that may be null is refused only when set) and what it changes (None: the section's CHANGES).
    keyed_at_default=False leaves it out of the artifact keys while it holds its default (a setting added after runs
    were recorded, whose default is what those runs did: they keep their keys and resume)."""
    metadata: dict[str, Any] = {"help": help, "rules": rules, "keyed_at_default": keyed_at_default}
    if changes is not None:
        metadata["changes"] = changes
    return field(default=default, metadata=metadata)


class Section:
    """A section of the settings: a frozen dataclass whose fields are made by `setting`."""

    CHANGES: ClassVar[tuple[str, ...]] = ()  # what every field changes, unless the field says otherwise

    def validate(self, prefix: str, settings: Settings | None = None) -> None:
        """Every field against its own rules, in field order, then the rules that read several settings."""
        nullable = _nullable(type(self))  # type: ignore[arg-type]  # a class is hashable; mypy misreads dataclass eq
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and nullable[f.name]:
                continue
            for rule in f.metadata.get("rules", ()):
                or_null = " or null" if nullable[f.name] else ""
                _check(rule.holds(value), f"{prefix}.{f.name}={_shown(value)}: {rule.must}{or_null}")
        self.together(settings)

    def together(self, settings: Settings | None) -> None:
        """The rules that read more than one setting (ConfigError); none unless a section says."""


# ---------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class TaskSettings(Section):
    CHANGES = (TRAJECTORY,)
    name: str = setting(
        "classification",
        "classification: class-id targets, losses cross_entropy, mse (on one-hot), margin; "
        "regression: float targets [n] or [n, k], losses mse, mae, huber",
        one_of(TASK_LOSSES),
    )


@dataclass(frozen=True)
class DataSettings(Section):
    CHANGES = (DATA,)
    source: str = setting("digits", "where the data comes from (the options of data=)", one_of(DATA_SOURCES))
    path: str | None = setting(None, "the .npz or .parquet file")
    inputs: Any = setting(
        None,
        "the model's inputs in order: names of x_train.<name> arrays (npz), or name -> columns (parquet); null: as "
        "in the file",
        Rule(
            lambda v: v is None or isinstance(v, (tuple, dict)),
            "must be a list of names (npz) or a mapping name -> columns (parquet)",
        ),
    )
    val_fraction: float = setting(
        0.2, "share of the data held out for the validation objective (stratified for classes)", FRACTION
    )
    split_seed: int = setting(0, "seed of that split")
    max_train: int | None = setting(None, "keep only the first N training rows; null: all", POSITIVE_INT)
    n_samples: int = setting(2000, "samples generated", at_least(4))
    n_features: int = setting(20, "features per sample", POSITIVE_INT)
    n_classes: int = setting(3, "classes", at_least(2))
    n_informative: int = setting(10, "informative features", POSITIVE_INT)
    val_from: str = setting(
        "test", "without x_val: test (x_test, y_test) or split (held out from train)", one_of(("test", "split"))
    )
    label_column: str = setting("label", "class ids or float targets (a list column for [n, k] targets)")
    feature_columns: tuple[str, ...] | None = setting(
        None, "one input from these columns; null: every numeric or list column but label and split"
    )
    split_column: str | None = setting(None, "a column of train / val; null: hold out data.val_fraction of the rows")
    weight_column: str | None = setting(
        None,
        "a column of per-sample weights >= 0 (model.fit's sample_weight; the npz form is an array w_train); "
        "null: all 1",
        keyed_at_default=False,
    )
    group_column: str | None = setting(
        None, "integer group ids; the validation rows' ids define influence.queries=groups"
    )


@dataclass(frozen=True)
class ModelSettings(Section):
    CHANGES = (TRAJECTORY,)
    name: str = setting("mlp", "the model (the options of model=)", one_of(MODELS))
    hidden: tuple[int, ...] = setting((64,), "widths of the hidden Dense layers", POSITIVE_INTS)
    activation: str = setting("tanh", "activation of the hidden layers (any Keras activation: tanh, relu, ...)")
    dropout: float = setting(0.0, "dropout rate (mlp: after each hidden layer; cnn: before the logits)", BELOW_ONE)
    batch_norm: bool = setting(
        False, "BatchNormalization after each hidden Dense layer (mlp) or convolution, before its activation (cnn)"
    )
    filters: tuple[int, ...] = setting((32, 64), "filters of each Conv-Pool block", POSITIVE_INTS)
    kernel_size: int = setting(3, "convolution kernel size")
    augment: tuple[str, ...] = setting(
        (),
        f"random augmentation layers on image inputs, in this order, active in training only: "
        f"{', '.join(AUGMENTATIONS)}",
        each(lambda v: v in AUGMENTATIONS, f"must be a list of {', '.join(AUGMENTATIONS)}"),
        DISTINCT,
        keyed_at_default=False,
    )
    builder: str | None = setting(None, "package.module:function building the keras.Model", FUNCTION)
    path: str | None = setting(None, "a .keras file")
    from_logits: bool = setting(True, "false when the model ends in a softmax")
    freeze: tuple[str, ...] = setting(
        (),
        "layers kept at their initial weights: a layer's name, or a prefix of names (conv_ freezes conv_0, conv_1)",
        each(lambda v: isinstance(v, str) and v != "", "must be a list of layer names or name prefixes"),
        keyed_at_default=False,
    )


@dataclass(frozen=True)
class OptimizerSettings(Section):
    """Keras 3's optimizers (kernels/optimizers.OPTIMIZERS), weight decay, clipping and learning-rate schedules, bit
    for bit. Settings added with the recipes are left out of the trajectory key while at their defaults."""

    CHANGES = (TRAJECTORY,)
    name: str = setting("sgd", "the optimizer (the options of optimizer=)", one_of(OPTIMIZERS))
    lr: float = setting(0.1, "learning rate (a schedule's base or peak value)", POSITIVE)
    momentum: float = setting(0.0, "momentum", BELOW_ONE)
    nesterov: bool = setting(False, "Nesterov momentum")
    beta_1: float = setting(0.9, "decay of the first-moment estimate", BELOW_ONE)
    beta_2: float = setting(0.999, "decay of the second-moment estimate", BELOW_ONE)
    epsilon: float = setting(1e-7, "added to the root of the second moment", POSITIVE)
    amsgrad: bool = setting(False, "AMSGrad: divide by the largest second moment so far", keyed_at_default=False)
    rho: float = setting(0.9, "decay of the squared-gradient average", BELOW_ONE, keyed_at_default=False)
    centered: bool = setting(False, "centred RMSprop (divide by the gradient's variance)", keyed_at_default=False)
    initial_accumulator_value: float = setting(
        0.1, "starting value of the squared-gradient accumulators", NON_NEGATIVE, keyed_at_default=False
    )
    weight_decay: float | None = setting(
        None,
        "decoupled weight decay, w -= lr * weight_decay * w each step; null: the optimizer's Keras default "
        "(adamw 0.004, others none)",
        NON_NEGATIVE,
        keyed_at_default=False,
    )
    clipnorm: float | None = setting(None, "clip each gradient tensor to this norm", POSITIVE, keyed_at_default=False)
    clipvalue: float | None = setting(None, "clip gradient entries to [-v, v]", POSITIVE, keyed_at_default=False)
    global_clipnorm: float | None = setting(
        None, "clip all gradients together to this global norm", POSITIVE, keyed_at_default=False
    )
    schedule: str = setting(
        "constant",
        f"the learning-rate schedule: {', '.join(LR_SCHEDULES)}, or package.module:Class (a Keras "
        "LearningRateSchedule)",
        Rule(
            lambda v: v in LR_SCHEDULES or ":" in str(v),
            f"must be one of {', '.join(LR_SCHEDULES)} or 'package.module:Class'",
        ),
        keyed_at_default=False,
    )
    warmup_steps: int | None = setting(
        None, "warmup_cosine: steps of linear warm-up to lr", NON_NEGATIVE_INT, keyed_at_default=False
    )
    alpha: float | None = setting(None, "cosine, warmup_cosine: final lr as a fraction of lr", keyed_at_default=False)
    decay_steps: int | None = setting(
        None, "exponential: steps per decay_rate factor", POSITIVE_INT, keyed_at_default=False
    )
    decay_rate: float | None = setting(None, "exponential: factor per decay_steps", POSITIVE, keyed_at_default=False)
    staircase: bool | None = setting(None, "exponential: decay in whole steps of decay_steps", keyed_at_default=False)
    boundaries: tuple[int, ...] | None = setting(
        None, "piecewise: the steps where the rate changes", keyed_at_default=False
    )
    values: tuple[float, ...] | None = setting(
        None, "piecewise: the learning rates, one more than boundaries", keyed_at_default=False
    )
    schedule_args: Any = setting(
        None,
        "other parameters of the schedule as a mapping (one_cycle: pct_start, div_factor, final_div_factor; "
        "a package.module:Class schedule: its constructor's)",
        keyed_at_default=False,
    )

    def __post_init__(self) -> None:
        """schedule_args is kept as sorted (name, value) pairs: hashable like every other setting."""
        args = self.schedule_args
        if isinstance(args, dict):
            object.__setattr__(self, "schedule_args", tuple(sorted(args.items())))
        elif args is not None and not (
            isinstance(args, tuple) and all(isinstance(a, tuple) and len(a) == 2 for a in args)
        ):
            raise ConfigError(f"optimizer.schedule_args={_shown(args)}: must be a mapping or null")

    def schedule_params(self) -> dict[str, Any]:
        """The schedule's parameters that are set: the schedule settings that are not null, and schedule_args."""
        named = {
            k: getattr(self, k) for k in SCHEDULE_SETTINGS if k != "schedule_args" and getattr(self, k) is not None
        }
        extra = dict(self.schedule_args or {})
        return {**named, **{k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()}}

    def together(self, settings: Settings | None) -> None:
        clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if getattr(self, k) is not None]
        _check(
            len(clips) <= 1,
            f"optimizer.{clips[-1] if clips else ''}: set at most one of optimizer.clipnorm, "
            f"optimizer.clipvalue and optimizer.global_clipnorm (got {', '.join(clips)})",
        )
        if self.schedule not in LR_SCHEDULES:
            return
        required, optional = LR_SCHEDULES[self.schedule]
        label = lambda k: f"optimizer.{k}" if k in SCHEDULE_SETTINGS else f"optimizer.schedule_args.{k}"  # noqa: E731
        params = self.schedule_params()
        reads = ", ".join(label(k) for k in (*required, *optional)) or "none"
        for name in params:
            _check(
                name in required or name in optional,
                f"{label(name)}: not a parameter of optimizer.schedule={self.schedule} (it reads: {reads})",
            )
        for name in required:
            _check(name in params, f"{label(name)}: required by optimizer.schedule={self.schedule}")


@dataclass(frozen=True)
class TrainSettings(Section):
    CHANGES = (TRAJECTORY,)
    epochs: int = setting(10, "passes over the training set", POSITIVE_INT)
    batch_size: int = setting(32, "samples per step", POSITIVE_INT)
    seeds: tuple[int, ...] = setting(
        (0,), "one training run per seed (initial weights, data order)", IDS, DISTINCT, changes=(RESULTS,)
    )
    shuffle: bool = setting(True, "a new data order every epoch")
    dtype: str = setting("float32", "float32 or float64 (float64 for tight finite-difference checks)", one_of(DTYPES))
    loss: str | None = setting(
        None, "the training loss: a built-in loss of the task or module:function; null: the task's default"
    )
    checkpoint_every: int | None = setting(
        None, "k: store the state every k steps; null: about sqrt(total steps)", POSITIVE_INT
    )
    label_smoothing: float = setting(
        0.0,
        "cross-entropy against (1 - s) one_hot + s / classes, as keras.losses.CategoricalCrossentropy "
        "(training loss only; E stays unsmoothed)",
        BELOW_ONE,
        keyed_at_default=False,
    )

    class_weight: tuple[float, ...] | None = setting(
        None,
        "weight of each class's samples in the training loss, one per class (class 0 first), as model.fit's "
        "class_weight; null: all 1",
        each(lambda v: _is_number(v) and v >= 0, "must be a non-empty list of numbers >= 0", non_empty=True),
        keyed_at_default=False,
    )

    def together(self, settings: Settings | None) -> None:
        if settings is not None:
            _check_loss("train.loss", self.loss, settings.task.name)
            _check(
                self.class_weight is None or settings.task.name == "classification",
                "train.class_weight: needs task=classification",
            )
            smoothable = settings.task.name == "classification" and self.loss == "cross_entropy"
            _check(
                not self.label_smoothing or smoothable,
                f"train.label_smoothing={self.label_smoothing}: needs train.loss=cross_entropy on a classification "
                "task",
            )


@dataclass(frozen=True)
class InfluenceSettings(Section):
    method: str = setting(
        "trajectory", "how samples are scored (the options of influence=)", one_of(METHODS), changes=(RESULTS,)
    )
    objective: str | None = setting(
        None,
        "the validation objective E: a built-in loss of the task or module:function; null: the task's default",
        changes=(SCORES, FEATURES, QUERIES),
    )
    steps: int = setting(1, "K: optimizer steps on sample i alone", POSITIVE_INT, changes=(SCORES,))
    output_weights: tuple[float, ...] | None = setting(
        None,
        "w: one weight per model output; null: ones",
        each(_is_number, "must be a non-empty list of numbers", non_empty=True),
        changes=(SCORES,),
    )
    horizon: int | None = setting(
        None, "steps differentiated, counted back from the end; null: one epoch", POSITIVE_INT, changes=(SCORES,)
    )
    input_grad: bool = setting(
        True,
        "also dE/d x_i per training sample (input_grad columns, their norm, the report's gradient maps); false: not "
        "computed at all (on a wide first layer the mean sweep about halves); influence is the same",
        changes=(RESULTS,),  # the influence column does not change; score parts with other columns are recomputed
        keyed_at_default=False,  # runs recorded before it keep their config hash
    )
    shard_size: int = setting(1024, "training samples per Parquet part", POSITIVE_INT, changes=(RESULTS,))
    batch_size: int = setting(
        128,
        "samples per vectorized kernel call (trak: per per-sample gradient batch)",
        POSITIVE_INT,
        changes=(RESULTS,),
    )
    queries: str = setting(
        "mean",
        "mean (one objective E) or one objective per validation sample (per_sample), class (per_class) or group "
        "(groups)",
        one_of(QUERY_KINDS),
        changes=(QUERIES,),
    )
    query_ids: tuple[int, ...] | None = setting(
        None, "validation sample ids, classes or group ids queried; null: all", IDS, DISTINCT, changes=(QUERIES,)
    )
    query_batch: int = setting(
        64,
        "queries per reverse sweep and per part (memory: query_batch x model state)",
        POSITIVE_INT,
        changes=(RESULTS,),
    )
    query_input_grad: bool = setting(
        False, "also dE_q/d x_i per query (memory: query_batch x N x input size)", changes=(QUERIES,)
    )
    query_top_k: int = setting(
        10, "harmful and helpful training samples per query in query_top.parquet", POSITIVE_INT, changes=(RESULTS,)
    )
    state_memory: str | None = setting(
        None,
        "keep every training state when they fit this many bytes (2GB, 512MiB), so sweeps read them instead of "
        "replaying; auto: when they fit a quarter of the available memory and of output.dir's free disk (decided "
        "by training, recorded in its summary); null: replay",
        Rule(lambda v: v == "auto" or SIZE.holds(v), f"{SIZE.must}, or auto"),
        changes=(),  # where a sweep reads its states from, not what it computes
    )
    proj_dim: int = setting(512, "k: dimensions of the random projection", POSITIVE_INT, changes=(SCORES, FEATURES))
    proj_seed: int = setting(
        0, "seed of the projection (the same matrix on every worker)", NON_NEGATIVE_INT, changes=(SCORES, FEATURES)
    )
    checkpoints: int | None = setting(
        None,
        "checkpoints featurized per seed, evenly spaced, ending at the last; null: the final one",
        POSITIVE_INT,
        changes=(SCORES, FEATURES),
    )
    damping: float = setting(
        1e-6,
        "lambda of the kernel Phi^T Phi + lambda I, relative to its mean diagonal",
        NON_NEGATIVE,
        changes=(SCORES,),
    )
    feature_dtype: str = setting(
        "float32",
        "how features are kept on disk: float32 or float16",
        one_of(FEATURE_DTYPES),
        changes=(SCORES, FEATURES),
    )

    def together(self, settings: Settings | None) -> None:
        method = REGISTRY[self.method]
        if settings is not None:
            _check_loss("influence.objective", self.objective, settings.task.name)
        with_queries = " or ".join(name for name, m in REGISTRY.items() if m.queries)
        _check(
            self.queries == "mean" or method.queries,
            f"influence.queries={self.queries}: needs influence.method={with_queries} (got {self.method})",
        )
        _check(
            not (self.query_input_grad and method.features),
            f"influence.query_input_grad=true: not available for influence.method={self.method} "
            "(its queries are products of features)",
        )
        _check(
            self.query_ids is None or self.queries != "mean",
            "influence.query_ids: needs influence.queries=per_sample, per_class or groups",
        )
        if self.input_grad:
            return
        _check(
            method.optional_input_grad,
            f"influence.input_grad=false: not available for influence.method={self.method} (its scores come with "
            "their input gradient)",
        )
        _check(
            not self.query_input_grad,
            "influence.query_input_grad=true: needs influence.input_grad=true (false computes no input gradient)",
        )
        _check(
            settings is None or "verify" not in settings.stages or not method.exact,
            f"influence.input_grad=false: the verify stage checks {self.method}'s dE/d x_i against finite "
            "differences; keep input_grad=true or drop verify from stages",
        )


@dataclass(frozen=True)
class VerifySettings(Section):
    n_gradcheck: int = setting(6, "samples checked by central finite differences of retraining", NON_NEGATIVE_INT)
    n_loo: int = setting(20, "samples retrained with eps_i = 0 (leave-one-out)", NON_NEGATIVE_INT)
    fd_step: float | None = setting(
        None, "h, in eps_i and along a unit direction of x_i; null: 1e-4 (float64), 1e-2 (float32)", POSITIVE
    )
    seed: int = setting(0, "seed of the samples, directions and groups checked")
    smoothness: bool = setting(
        True, "does the derivative predict finite changes: the ladder, perturbation growth and verdict (exact method)"
    )
    n_smooth: int = setting(4, "single samples on the ladder", POSITIVE_INT)
    ladder: tuple[float, ...] = setting(
        (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        "s: weights moved from 1 to 1 - s (1 = removal)",
        each(
            lambda s: _is_number(s) and 0 < s <= 1,
            "must be increasing numbers in (0, 1]",
            non_empty=True,
            increasing=True,
        ),
    )
    group_fractions: tuple[float, ...] = setting(
        (0.01, 0.05),
        "random groups of these fractions of the training set",
        each(lambda f: _is_number(f) and 0 < f < 1, "must be numbers in (0, 1)"),
    )
    n_groups: int = setting(2, "groups per fraction", NON_NEGATIVE_INT)
    perturbation: float | None = setting(
        None, "relative initial-weight perturbation; null: 1e-6 (float64), 1e-3 (float32)", POSITIVE
    )
    n_float64: int = setting(
        200, "float32 runs: samples whose influence is compared with a float64 replay of the run", POSITIVE_INT
    )


@dataclass(frozen=True)
class ClusterSettings(Section):
    address: str | None = setting(
        None,
        "null: a private local Ray on 127.0.0.1 with token authentication; auto: join the running cluster; ray://host:port",
    )
    num_cpus: int | None = setting(None, "CPUs of a local Ray; null: all", POSITIVE_INT)
    cpus_per_task: float = setting(1.0, "CPUs per task and per actor", POSITIVE)
    gpus_per_task: float = setting(0.0, "GPUs per task, requested only when the cluster reports GPUs", NON_NEGATIVE)
    tf_threads: int = setting(1, "TF_NUM_INTRAOP_THREADS in every worker", POSITIVE_INT)
    max_retries: int = setting(2, "retries of a task or shard whose worker, actor or node was lost", NON_NEGATIVE_INT)
    dashboard: bool = setting(False, "a local Ray starts Ray's dashboard (on 127.0.0.1, behind the run's token)")


@dataclass(frozen=True)
class AggregateSettings(Section):
    ensemble: str = setting(
        "mean",
        "how ranking.parquet combines a method's seeds: mean, standardized (each seed divided by its root mean square "
        "first) or rank (the mean of each seed's centred ranks)",
        one_of(ENSEMBLES),
    )


@dataclass(frozen=True)
class OutputSettings(Section):
    dir: str = setting("outputs/default", "the run directory: a rerun resumes, other settings are refused", NOT_EMPTY)
    overwrite: bool = setting(
        False, "true: other settings replace the run in output.dir (only what a run wrote is removed)"
    )


@dataclass(frozen=True)
class EvaluationSettings(Section):
    """`python -m pipeline.evaluate`: sizes of one experiment's ground truth (conf/evaluate.yaml)."""

    name: str = setting(
        "experiment",
        "file names of the results (docs/results/<name>.*)",
        Rule(lambda v: bool(v) and "/" not in v, "must be a non-empty file name"),
    )
    methods: tuple[str, ...] = setting(
        ("trajectory", "truncated", "tracin", "loss"),
        "scored on seed 0 (the ensembles: on seeds 0..K-1); random is always added",
        each(lambda m: m in METHODS, f"unknown method (known: {', '.join(METHODS)})"),
    )
    ensemble_sizes: tuple[int, ...] = setting(
        (1, 2, 4, 8, 16),
        "K: scores of seeds 0..K-1 averaged",
        each(lambda k: _is_int(k) and k > 0, "must be increasing positive integers", non_empty=True, increasing=True),
        DISTINCT,
    )
    truncated_epochs: int = setting(1, "influence.horizon of truncated, in epochs", POSITIVE_INT)
    n_loo: int = setting(20, "same-seed leave-one-out samples (seed 0's schedule)", NON_NEGATIVE_INT)
    same_seed_drops: tuple[float, ...] = setting(
        (0.01, 0.05, 0.1, 0.5), "LDS on seed 0's schedule: fractions removed", FRACTIONS
    )
    cross_seed_drops: tuple[float, ...] = setting(
        (0.1, 0.5), "LDS against targets averaged over R fresh seeds: fractions removed", FRACTIONS
    )
    n_subsets: int = setting(40, "random subsets per drop fraction", POSITIVE_INT)
    retrain_seeds: int = setting(
        16,
        "R: fresh seeds (initialisation and data order) per target and per removal",
        at_least(2, " (the reliability splits the seeds in halves)"),
    )
    first_retrain_seed: int = setting(
        1000, "fresh seeds are first_retrain_seed + 0..R-1, the same for every subset (never scored)"
    )
    removal_fractions: tuple[float, ...] = setting(
        (0.01, 0.05, 0.1), "k / N removed by each method (most harmful; most helpful)", FRACTIONS
    )
    flip_fraction: float = setting(0.1, "labels flipped for the mislabel test", FRACTION)
    flip_seeds: int = setting(1, "scored seeds on the flipped data (scores averaged)", POSITIVE_INT)
    reliability_splits: int = setting(
        50, "random half splits of the R seeds averaged for the split-half reliability", POSITIVE_INT
    )
    seed: int = setting(0, "seed of the subsets, flips, leave-one-out samples and random scores")
    scratch: str = setting("outputs/evaluation", "run directories: <scratch>/<name>/{main,flipped}", NOT_EMPTY)
    results: str = setting("docs/results", "<name>.parquet and <name>.md; docs/results.md gathers them", NOT_EMPTY)
    peer_scores: str | None = setting(
        None,
        "scores of an outside reference on the same data (scripts/peers: model, sample_id, score with positive = "
        "helpful), "
        "compared on the same targets; null: none",
    )

    def together(self, settings: Settings | None) -> None:
        _check(
            "trajectory" in self.methods,
            "evaluation.methods: must include trajectory (the ensembles and the removal test use it)",
        )
        largest = max(self.ensemble_sizes[-1], self.flip_seeds)
        _check(
            _is_int(self.first_retrain_seed) and self.first_retrain_seed >= largest,
            f"evaluation.first_retrain_seed={self.first_retrain_seed}: must be an integer >= the largest ensemble size "
            "(fresh seeds are never scored)",
        )


@dataclass(frozen=True)
class Settings:
    """Every setting of a run. train.loss and influence.objective left null take the task's default loss when the
    settings are made (__post_init__), so every Settings holds the losses it runs with."""

    task: TaskSettings = field(default_factory=TaskSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    influence: InfluenceSettings = field(default_factory=InfluenceSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    stages: tuple[str, ...] = setting(
        ("train", "score", "aggregate", "report"),
        f"the stages to run, always in the order {', '.join(STAGES)}; add verify for the ground-truth checks",
        each(lambda s: s in STAGES, f"must be a non-empty list of stages (known: {', '.join(STAGES)})", non_empty=True),
    )

    def __post_init__(self) -> None:
        default = DEFAULT_LOSS.get(self.task.name)  # None for an unknown task, which validate refuses
        if default is not None and self.train.loss is None:
            object.__setattr__(self, "train", replace(self.train, loss=default))
        if default is not None and self.influence.objective is None:
            object.__setattr__(self, "influence", replace(self.influence, objective=default))

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)

    def sections(self) -> Iterator[tuple[str, Section]]:
        """(name, section) in field order."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                yield f.name, value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changing(self, artifact: str) -> dict[str, dict[str, Any]]:
        """section -> {setting: value} of the settings that change `artifact` (one of ARTIFACTS), sections without
        one left out; values as to_dict gives them."""
        out = {}
        for name, section in self.sections():
            chosen = changed_by(type(section), artifact)
            if chosen:
                values = asdict(section)  # type: ignore[call-overload]
                quiet = {f.name for f in fields(section) if _quiet_at_default(section, f)}  # type: ignore[arg-type]
                out[name] = {k: values[k] for k in chosen if k not in quiet}
        return out

    def result_hash(self) -> str:
        """Hash of every setting that changes a result (any of ARTIFACTS); not cluster, output, verify, aggregate or
        stage choices, nor influence.state_memory. A mapping keeps its order (data.inputs: the model's input order)."""
        relevant: dict[str, dict[str, Any]] = {}
        for artifact in ARTIFACTS:
            for section, values in self.changing(artifact).items():
                relevant.setdefault(section, {}).update(values)
        relevant = {
            s: {k: [[a, b] for a, b in v.items()] if isinstance(v, dict) else v for k, v in values.items()}
            for s, values in relevant.items()
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _quiet_at_default(section: Any, f: Any) -> bool:
    """Whether field `f` of `section` is left out of the keys: keyed_at_default=False and holding its default."""
    return not f.metadata.get("keyed_at_default", True) and getattr(section, f.name) == f.default


def changed_by(cls: type, artifact: str) -> tuple[str, ...]:
    """The settings of section `cls` that change `artifact` (field metadata "changes", else the section's CHANGES)."""
    return tuple(f.name for f in fields(cls) if artifact in f.metadata.get("changes", cls.CHANGES))  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- from the DictConfig


def settings_from_config(cfg: DictConfig) -> Settings:
    """Convert the composed Hydra config into validated `Settings` (raises ConfigError)."""
    hints = _hints(Settings)
    parts: dict[str, Any] = {}
    for f in fields(Settings):
        if isinstance(f.default_factory, type) and issubclass(f.default_factory, Section):
            parts[f.name] = _section(hints[f.name], cfg.get(f.name), f.name)
    stages = cfg.get("stages")
    parts["stages"] = _typed(
        OmegaConf.to_container(stages, resolve=True) if stages is not None else [], hints["stages"], "stages"
    )
    settings = Settings(**parts)
    validate(settings)
    return settings


def evaluation_from_config(cfg: DictConfig) -> EvaluationSettings:
    """The `evaluation:` section as validated `EvaluationSettings` (raises ConfigError)."""
    evaluation = _section(EvaluationSettings, cfg.get("evaluation"), "evaluation")
    evaluation.validate("evaluation")
    return evaluation


def validate(s: Settings) -> None:
    """Check every setting, section by section (data-dependent checks, such as the batch against the data's size,
    happen at load time)."""
    grouped = groups()
    for name, section in s.sections():
        section.validate(name, s)
        if name in grouped:
            option = getattr(section, grouped[name].selector)
            for required in grouped[name].required.get(option, ()):
                _check(bool(getattr(section, required)), f"{name}.{required}: required for {name}={option}")
    field_of = {f.name: f for f in fields(Settings)}
    for rule in field_of["stages"].metadata["rules"]:
        _check(rule.holds(s.stages), f"stages={_shown(s.stages)}: {rule.must}")


def with_task_defaults(settings: Settings) -> Settings:
    """The settings as they run: train.loss and influence.objective hold the task's default when left null. Settings
    fill them in when they are made (Settings.__post_init__), so this returns `settings` itself."""
    return settings


def _check_loss(setting_name: str, value: str | None, task: str) -> None:
    """A built-in loss of the task, or 'module:function' (imported and checked in the workers)."""
    if value is None or task not in TASK_LOSSES:
        return
    known = TASK_LOSSES[task]
    if ":" in str(value):
        module_name, _, attr = str(value).partition(":")
        _check(
            bool(module_name) and attr.isidentifier(), f"{setting_name}={value!r}: expected 'package.module:function'"
        )
        return
    other = next((t for t, names in TASK_LOSSES.items() if value in names and t != task), None)
    hint = f"; {value} is a {other} loss (set task={other})" if other else ""
    _check(
        value in known,
        f"{setting_name}={value!r}: unknown for task={task} (known: {', '.join(known)}, or module:function){hint}",
    )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name -> its type, for the fields of dataclass `cls`."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


@cache
def _nullable(cls: type) -> dict[str, bool]:
    """Field name -> whether its type allows null."""
    return {name: _options(hint)[0] for name, hint in _hints(cls).items()}


def _options(hint: Any) -> tuple[bool, Any]:
    """(nullable, the type besides None) of a field's type."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    (kind,) = [option for option in options if option is not type(None)]
    return len(options) > 1, kind


def _section(cls: type, cfg: DictConfig | None, prefix: str) -> Any:
    """Build dataclass `cls` from a config node, refusing unknown keys and checking every value against its
    field's type (_typed)."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if cfg is not None else {}
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key}: required but not set (pass {exc.full_key}=...)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {raw!r}")
    values = {str(k): v for k, v in raw.items()}  # YAML keys of a section are names
    types = _hints(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown setting (known: {', '.join(sorted(types))})")
    return cls(**{k: _typed(v, types[k], f"{prefix}.{k}") for k, v in values.items()})


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}  # checked by type
_LISTS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
_WRONG = object()  # _scalar: the value is not of the kind


def _typed(value: Any, hint: Any, name: str) -> Any:
    """`value` as the setting `name` of dataclass type `hint`, or ConfigError naming it. Booleans are true/false
    only; an integer is taken for a float (1 and 1.0 are one config) and as the text of a string (Hydra reads
    output.dir=2024 as a number); lists become tuples; null only where the type allows it; `Any` is not checked."""
    nullable, kind = _options(hint)
    listed = get_origin(kind) is tuple
    item = get_args(kind)[0] if listed else kind
    if item not in _KINDS:
        return tuple(value) if isinstance(value, list) else value
    if value is None and nullable:
        return None
    or_null = " or null" if nullable else ""
    if listed:
        items = [_scalar(v, item) for v in value] if isinstance(value, list) else [_WRONG]
        if any(v is _WRONG for v in items):
            raise ConfigError(f"{name}={_shown(value)}: must be a list of {_LISTS[item]}{or_null}")
        return tuple(items)
    typed = _scalar(value, item)
    if typed is _WRONG:
        raise ConfigError(f"{name}={_shown(value)}: must be {_KINDS[item]}{or_null}")
    return typed


def _scalar(value: Any, kind: type) -> Any:
    """`value` as `kind` (bool, int, float or str), or _WRONG; bools are never numbers, numbers never bools."""
    if _is_int(value) and kind in (float, str):
        return kind(value)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        return _WRONG
    return value


def _shown(value: Any) -> str:
    """A value as a message shows it: strings quoted, lists as lists, true/false/null as typed."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


# -------------------------------------------------------------------------------------------- Hydra's schema

SCHEMA = "schema"  # the config group of the options' schemas: schema/<group>/<option> (conf/config.yaml)


@dataclass(frozen=True)
class Group:
    """A config group that selects an option (model=cnn): the setting the option sets, and per option the settings
    it reads and those of them it requires. `<group>=<option>` composes exactly the settings it reads, so a setting
    the option does not read is refused as unknown, and a required one left unset names itself."""

    selector: str
    options: dict[str, tuple[str, ...]]
    required: dict[str, tuple[str, ...]]


def groups() -> dict[str, Group]:
    """Section name -> its Group, for the sections that a config group selects."""
    sources = {name: (*reads, *DATA_COMMON) for name, reads in DATA_SOURCES.items()}
    return {
        "task": Group("name", {name: () for name in TASK_LOSSES}, {}),
        "data": Group("source", sources, {name: ("path",) for name, reads in sources.items() if "path" in reads}),
        "model": Group(
            "name",
            {name: m.settings for name, m in MODELS.items()},
            {name: (m.source,) for name, m in MODELS.items() if m.source},
        ),
        "optimizer": Group("name", OPTIMIZERS, {}),
        "influence": Group("method", {name: method.options for name, method in REGISTRY.items()}, {}),
    }


def defaults(cls: type, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The defaults of the `setting` fields of `cls` (those named in `only`, in field order) as plain YAML values."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple) else value

    return {f.name: plain(f.default) for f in fields(cls) if only is None or f.name in only}


def register() -> None:
    """Store the defaults in Hydra's ConfigStore: `settings` (the sections no group selects, and stages),
    `schema/<group>/<option>` (the settings an option reads, with the option's name; what it requires as ???) and
    `evaluation_settings`.

    The nodes are plain (untyped) on purpose: OmegaConf's typed nodes would turn output.overwrite=no into false and
    name a wrong type in an error of many lines; `settings_from_config` checks every value against its field's type
    with a one-line message instead."""
    from hydra.core.config_store import ConfigStore

    store, grouped, hints = ConfigStore.instance(), groups(), _hints(Settings)
    sections = [name for name, hint in hints.items() if is_dataclass(hint) and name not in grouped]
    store.store(
        name="settings", node={**{name: defaults(hints[name]) for name in sections}, **defaults(Settings, ("stages",))}
    )
    for name, group in grouped.items():
        for option, reads in group.options.items():
            required = {setting: "???" for setting in group.required.get(option, ())}  # Hydra's "required" value
            node = {**defaults(hints[name], (group.selector, *reads)), group.selector: option, **required}
            store.store(group=f"{SCHEMA}/{name}", name=option, node=node)
    store.store(name="evaluation_settings", node={"evaluation": defaults(EvaluationSettings)})


register()
