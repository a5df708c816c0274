"""Typed settings, validated once. The only module that reads a Hydra DictConfig.

Every check raises `ConfigError` with a one-line message that names the setting, so the command line
tells the user exactly which override to fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pipeline.errors import ConfigError
from pipeline.io.states import parse_size
from pipeline.methods import REGISTRY

STAGES = ("train", "score", "verify", "aggregate", "report")  # always run in this order
DATA_SOURCES = ("digits", "synthetic", "mnist", "npz", "parquet")
MODELS = ("logistic", "mlp", "cnn", "custom", "saved")
OPTIMIZERS = ("sgd", "momentum", "adam")
METHODS = tuple(REGISTRY)
DTYPES = ("float32", "float64")
ENSEMBLES = ("mean", "standardized", "rank")  # aggregate.ensemble
FEATURE_DTYPES = ("float32", "float16")  # influence.feature_dtype
QUERIES = ("mean", "per_sample", "per_class", "groups")  # influence.queries
# Built-in per-sample losses of each task (kernels/task.py); any of them can train or be the objective E.
TASK_LOSSES = {"classification": ("cross_entropy", "mse", "margin"), "regression": ("mse", "mae", "huber")}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}


@dataclass(frozen=True)
class TaskSettings:
    name: str = "classification"  # classification (class-id targets) | regression (float targets)


@dataclass(frozen=True)
class DataSettings:
    source: str = "digits"
    path: str | None = None
    # input order (npz: names of x_train.<name> arrays) or name -> columns (parquet); null: as in the file
    inputs: Any = None
    val_fraction: float = 0.2
    split_seed: int = 0
    max_train: int | None = None
    # synthetic
    n_samples: int = 2000
    n_features: int = 20
    n_classes: int = 3
    n_informative: int = 10
    # npz
    val_from: str = "test"  # npz without x_val: "test" (use x_test/y_test) or "split" (hold out from train)
    # parquet
    label_column: str = "label"
    feature_columns: tuple[str, ...] | None = None
    split_column: str | None = None
    group_column: str | None = None  # integer group ids of the validation rows (influence.queries=groups)


@dataclass(frozen=True)
class ModelSettings:
    name: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    activation: str = "tanh"
    dropout: float = 0.0
    batch_norm: bool = False
    filters: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    builder: str | None = None
    path: str | None = None  # model=saved: a .keras file
    from_logits: bool = True


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    seeds: tuple[int, ...] = (0,)
    shuffle: bool = True
    dtype: str = "float32"
    loss: str | None = None  # null: the task's default (cross_entropy | mse)
    checkpoint_every: int | None = None  # None: about sqrt(total steps)


@dataclass(frozen=True)
class InfluenceSettings:
    method: str = "trajectory"
    objective: str | None = None  # null: the task's default (cross_entropy | mse)
    steps: int = 1  # K, optimizer steps per sample for lookahead
    output_weights: tuple[float, ...] | None = None  # sensitivity: weights of the model outputs (null: ones)
    horizon: int | None = None  # truncated: steps differentiated, counted back from the end (null: one epoch)
    shard_size: int = 1024  # training samples per Parquet part (sharded methods)
    batch_size: int = 128  # samples per kernel call (sharded methods)
    queries: str = "mean"  # mean (one objective E) | per_sample (one per validation sample) | per_class | groups (trajectory only)
    query_ids: tuple[int, ...] | None = None  # validation sample ids (per_sample), classes (per_class) or group ids (groups); null: all
    query_batch: int = 64  # queries carried by one reverse sweep (memory: query_batch x model state) and one part
    query_input_grad: bool = False  # also dE_q/d x_i per query (memory: query_batch x N x input size)
    query_top_k: int = 10  # harmful and helpful training samples per query in query_top.parquet
    # exact sweeps: keep every training state when they fit this many bytes ("2GB", "512MiB"), so the
    # reverse sweep reads them instead of replaying each segment (trajectory/seed=<s>/states.npy); null: replay
    state_memory: str | None = None
    # trak: projected gradients of the output function (features/method=trak/...)
    proj_dim: int = 512  # k, dimensions of the random projection
    proj_seed: int = 0  # seed of the projection (the same matrix on every worker)
    checkpoints: int | None = None  # stored checkpoints featurized per seed, evenly spaced, ending at the last; null: 1
    damping: float = 1e-6  # lambda of the kernel Phi^T Phi + lambda I, relative to its mean diagonal
    feature_dtype: str = "float32"  # float32 | float16: how features are kept on disk


@dataclass(frozen=True)
class VerifySettings:
    n_gradcheck: int = 6
    n_loo: int = 20
    fd_step: float | None = None  # None: 1e-4 in float64, 1e-2 in float32
    seed: int = 0
    smoothness: bool = True  # finite-step ladder, perturbation growth and the verdict (exact method only)
    n_smooth: int = 4  # single samples on the ladder
    ladder: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # s: weights moved from 1 to 1 - s (1 = removal)
    group_fractions: tuple[float, ...] = (0.01, 0.05)  # random groups of these fractions of the training set
    n_groups: int = 2  # groups per fraction
    perturbation: float | None = None  # relative initial-weight perturbation; None: 1e-6 (float64), 1e-3 (float32)
    n_float64: int = 200  # float32 runs: samples whose influence is compared with a float64 replay


@dataclass(frozen=True)
class ClusterSettings:
    address: str | None = None
    num_cpus: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    tf_threads: int = 1
    max_retries: int = 2
    dashboard: bool = False  # a local Ray starts its dashboard (on 127.0.0.1) only when asked


@dataclass(frozen=True)
class AggregateSettings:
    # how ranking.parquet combines a method's seeds: mean (of the raw scores) | standardized (each seed divided
    # by its root mean square first, so no seed dominates by scale) | rank (mean of each seed's centred ranks)
    ensemble: str = "mean"


@dataclass(frozen=True)
class OutputSettings:
    dir: str = "outputs/default"
    overwrite: bool = False


@dataclass(frozen=True)
class EvaluationSettings:
    """`python -m pipeline.evaluate`: sizes of one experiment's ground truth (conf/evaluate.yaml)."""

    name: str = "experiment"
    methods: tuple[str, ...] = ("trajectory", "truncated", "tracin", "loss")  # scored; `random` is always added
    ensemble_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)  # K: exact sweeps on seeds 0..K-1, scores averaged
    truncated_epochs: int = 1  # influence.horizon of `truncated`, in epochs
    n_loo: int = 20  # same-seed leave-one-out samples
    same_seed_drops: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5)  # LDS on seed 0's schedule: fractions removed
    cross_seed_drops: tuple[float, ...] = (0.1, 0.5)  # LDS against targets averaged over R fresh seeds
    n_subsets: int = 40  # random subsets per drop fraction
    retrain_seeds: int = 16  # R: fresh seeds per cross-seed target and per removal
    first_retrain_seed: int = 1000  # fresh seeds are first_retrain_seed + 0..R-1 (disjoint from the scored seeds)
    removal_fractions: tuple[float, ...] = (0.01, 0.05, 0.1)  # k / N removed by each method
    flip_fraction: float = 0.1
    flip_seeds: int = 1  # scored seeds on the flipped data (scores averaged)
    reliability_splits: int = 50  # random half splits of the R seeds averaged for the split-half reliability
    seed: int = 0
    scratch: str = "outputs/evaluation"  # run directories, one per experiment
    results: str = "docs/results"  # <name>.parquet and <name>.md; docs/results.md gathers them
    # scores of an outside reference on the same data (scripts/peers: model, sample_id, score with positive =
    # helpful; seconds per model in <stem>_models.parquet), compared on the same targets; null: none
    peer_scores: str | None = None


@dataclass(frozen=True)
class Settings:
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
    stages: tuple[str, ...] = ("train", "score", "aggregate", "report")

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_hash(self) -> str:
        """Hash of everything that changes the numbers (not cluster, output or stage choices)."""
        relevant = {k: v for k, v in self.to_dict().items() if k in ("task", "data", "model", "optimizer", "train", "influence")}
        del relevant["influence"]["state_memory"]  # where the sweep reads its states from, not what it computes
        if isinstance(self.data.inputs, dict):  # its order is the model's input order: keep it out of sort_keys
            relevant["data"] = {**relevant["data"], "inputs": [[k, v] for k, v in self.data.inputs.items()]}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(cls: type, cfg: DictConfig | None, prefix: str) -> Any:
    """Build dataclass `cls` from a config node, refusing unknown keys and checking every value against its
    field's type (_typed)."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if cfg is not None else {}
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key}: required but not set (pass {exc.full_key}=...)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {raw!r}")
    types = get_type_hints(cls)
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown setting (known: {', '.join(sorted(types))})")
    return cls(**{k: _typed(v, types[k], f"{prefix}.{k}") for k, v in raw.items()})


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}  # checked by type
_LISTS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
_WRONG = object()  # _scalar: the value is not of the kind


def _typed(value: Any, hint: Any, name: str) -> Any:
    """`value` as the setting `name` of dataclass type `hint`, or ConfigError naming it. Booleans are true/false
    only; an integer is taken for a float (1 and 1.0 are one config) and as the text of a string (Hydra reads
    output.dir=2024 as a number); lists become tuples; null only where the type allows it; `Any` is not checked."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    (kind,) = [option for option in options if option is not type(None)]
    nullable, listed = len(options) > 1, get_origin(kind) is tuple
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
    """A value as a message shows it: strings quoted, true/false/null as typed."""
    return json.dumps(value) if value is None or isinstance(value, bool) else repr(value)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def settings_from_config(cfg: DictConfig) -> Settings:
    """Convert the composed Hydra config into validated `Settings` (raises ConfigError)."""
    stages = OmegaConf.to_container(cfg.get("stages"), resolve=True) if cfg.get("stages") is not None else []
    _check(isinstance(stages, list) and len(stages) > 0, f"stages={stages!r}: must be a non-empty list")
    for stage in stages:
        _check(stage in STAGES, f"stages: unknown stage {stage!r} (known: {', '.join(STAGES)})")
    settings = Settings(
        task=_section(TaskSettings, cfg.get("task"), "task"),
        data=_section(DataSettings, cfg.get("data"), "data"),
        model=_section(ModelSettings, cfg.get("model"), "model"),
        optimizer=_section(OptimizerSettings, cfg.get("optimizer"), "optimizer"),
        train=_section(TrainSettings, cfg.get("train"), "train"),
        influence=_section(InfluenceSettings, cfg.get("influence"), "influence"),
        verify=_section(VerifySettings, cfg.get("verify"), "verify"),
        cluster=_section(ClusterSettings, cfg.get("cluster"), "cluster"),
        output=_section(OutputSettings, cfg.get("output"), "output"),
        aggregate=_section(AggregateSettings, cfg.get("aggregate"), "aggregate"),
        stages=tuple(stages),
    )
    validate(settings)
    return with_task_defaults(settings)


def evaluation_from_config(cfg: DictConfig) -> EvaluationSettings:
    """The `evaluation:` section as validated `EvaluationSettings` (raises ConfigError)."""
    e = _section(EvaluationSettings, cfg.get("evaluation"), "evaluation")
    fractions = lambda values: isinstance(values, tuple) and len(values) > 0 and all(_is_number(f) and 0 < f < 1 for f in values)  # noqa: E731
    _check(bool(e.name) and "/" not in e.name, f"evaluation.name={e.name!r}: must be a non-empty file name")
    _check(isinstance(e.methods, tuple) and all(m in METHODS for m in e.methods), f"evaluation.methods={list(e.methods)}: unknown method (known: {', '.join(METHODS)})")
    _check("trajectory" in e.methods, "evaluation.methods: must include trajectory (the ensembles and the removal test use it)")
    sizes = e.ensemble_sizes
    _check(isinstance(sizes, tuple) and len(sizes) > 0 and all(_is_int(k) and k > 0 for k in sizes) and list(sizes) == sorted(set(sizes)), f"evaluation.ensemble_sizes={list(sizes)}: must be increasing positive integers")
    for name in ("truncated_epochs", "n_subsets", "flip_seeds", "reliability_splits"):
        _check(_is_int(getattr(e, name)) and getattr(e, name) > 0, f"evaluation.{name}={getattr(e, name)}: must be a positive integer")
    _check(_is_int(e.retrain_seeds) and e.retrain_seeds >= 2, f"evaluation.retrain_seeds={e.retrain_seeds}: must be an integer >= 2 (the reliability splits the seeds in halves)")
    _check(_is_int(e.first_retrain_seed) and e.first_retrain_seed >= max(sizes[-1], e.flip_seeds), f"evaluation.first_retrain_seed={e.first_retrain_seed}: must be an integer >= the largest ensemble size (fresh seeds are never scored)")
    _check(_is_int(e.n_loo) and e.n_loo >= 0, f"evaluation.n_loo={e.n_loo}: must be a non-negative integer")
    for name in ("same_seed_drops", "cross_seed_drops", "removal_fractions"):
        _check(fractions(getattr(e, name)), f"evaluation.{name}={list(getattr(e, name))}: must be a non-empty list of fractions in (0, 1)")
    _check(_is_number(e.flip_fraction) and 0 < e.flip_fraction < 1, f"evaluation.flip_fraction={e.flip_fraction}: must be in (0, 1)")
    _check(bool(e.scratch) and bool(e.results), "evaluation.scratch, evaluation.results: must not be empty")
    return e


def with_task_defaults(settings: Settings) -> Settings:
    """train.loss and influence.objective left null take the task's default loss."""
    default = DEFAULT_LOSS[settings.task.name]
    train = replace(settings.train, loss=settings.train.loss or default)
    influence = replace(settings.influence, objective=settings.influence.objective or default)
    return replace(settings, train=train, influence=influence)


def _check_loss(setting: str, value: str | None, task: str) -> None:
    """A built-in loss of the task, or 'module:function' (imported and checked in the workers)."""
    if value is None:
        return
    known = TASK_LOSSES[task]
    if ":" in str(value):
        module_name, _, attr = str(value).partition(":")
        _check(bool(module_name) and attr.isidentifier(), f"{setting}={value!r}: expected 'package.module:function'")
        return
    other = next((t for t, names in TASK_LOSSES.items() if value in names and t != task), None)
    hint = f"; {value} is a {other} loss (set task={other})" if other else ""
    _check(value in known, f"{setting}={value!r}: unknown for task={task} (known: {', '.join(known)}, or module:function){hint}")


def validate(s: Settings) -> None:
    """Check every setting on its own; data-dependent checks (batch vs. data size) happen at load time."""
    d, m, o, t, i, v, c = s.data, s.model, s.optimizer, s.train, s.influence, s.verify, s.cluster
    _check(s.task.name in TASK_LOSSES, f"task.name={s.task.name!r}: unknown (known: {', '.join(TASK_LOSSES)})")
    _check(d.inputs is None or isinstance(d.inputs, (tuple, dict)), f"data.inputs={d.inputs!r}: must be a list of names (npz) or a mapping name -> columns (parquet)")
    _check(d.source in DATA_SOURCES, f"data.source={d.source!r}: unknown (known: {', '.join(DATA_SOURCES)})")
    if d.source in ("npz", "parquet"):
        _check(bool(d.path), f"data.path: required for data={d.source}")
    _check(_is_number(d.val_fraction) and 0 < d.val_fraction < 1, f"data.val_fraction={d.val_fraction}: must be in (0, 1)")
    _check(d.max_train is None or (_is_int(d.max_train) and d.max_train > 0), f"data.max_train={d.max_train}: must be a positive integer or null")
    _check(_is_int(d.n_samples) and d.n_samples >= 4, f"data.n_samples={d.n_samples}: must be an integer >= 4")
    _check(_is_int(d.n_features) and d.n_features >= 1, f"data.n_features={d.n_features}: must be a positive integer")
    _check(_is_int(d.n_classes) and d.n_classes >= 2, f"data.n_classes={d.n_classes}: must be an integer >= 2")
    _check(_is_int(d.n_informative) and d.n_informative >= 1, f"data.n_informative={d.n_informative}: must be a positive integer")
    _check(d.val_from in ("test", "split"), f"data.val_from={d.val_from!r}: must be 'test' or 'split'")

    _check(m.name in MODELS, f"model.name={m.name!r}: unknown (known: {', '.join(MODELS)})")
    _check(isinstance(m.hidden, tuple) and all(_is_int(h) and h > 0 for h in m.hidden), f"model.hidden={list(m.hidden)}: must be positive integers")
    _check(isinstance(m.filters, tuple) and all(_is_int(f) and f > 0 for f in m.filters), f"model.filters={list(m.filters)}: must be positive integers")
    _check(_is_number(m.dropout) and 0 <= m.dropout < 1, f"model.dropout={m.dropout}: must be in [0, 1)")
    if m.name == "custom":
        _check(bool(m.builder) and ":" in str(m.builder), f"model.builder={m.builder!r}: model=custom needs 'package.module:function'")
    if m.name == "saved":
        _check(bool(m.path), "model.path: required for model=saved (a .keras file)")

    _check(o.name in OPTIMIZERS, f"optimizer.name={o.name!r}: unknown (known: {', '.join(OPTIMIZERS)})")
    _check(_is_number(o.lr) and o.lr > 0, f"optimizer.lr={o.lr}: must be a positive number")
    _check(_is_number(o.momentum) and 0 <= o.momentum < 1, f"optimizer.momentum={o.momentum}: must be in [0, 1)")
    _check(_is_number(o.beta_1) and 0 <= o.beta_1 < 1, f"optimizer.beta_1={o.beta_1}: must be in [0, 1)")
    _check(_is_number(o.beta_2) and 0 <= o.beta_2 < 1, f"optimizer.beta_2={o.beta_2}: must be in [0, 1)")
    _check(_is_number(o.epsilon) and o.epsilon > 0, f"optimizer.epsilon={o.epsilon}: must be positive")

    _check(_is_int(t.epochs) and t.epochs > 0, f"train.epochs={t.epochs}: must be a positive integer")
    _check(_is_int(t.batch_size) and t.batch_size > 0, f"train.batch_size={t.batch_size}: must be a positive integer")
    _check(isinstance(t.seeds, tuple) and len(t.seeds) > 0 and all(_is_int(x) and x >= 0 for x in t.seeds), f"train.seeds={list(t.seeds)}: must be a non-empty list of non-negative integers")
    _check(len(set(t.seeds)) == len(t.seeds), f"train.seeds={list(t.seeds)}: contains duplicates")
    _check(t.dtype in DTYPES, f"train.dtype={t.dtype!r}: unknown (known: {', '.join(DTYPES)})")
    _check_loss("train.loss", t.loss, s.task.name)
    _check(t.checkpoint_every is None or (_is_int(t.checkpoint_every) and t.checkpoint_every > 0), f"train.checkpoint_every={t.checkpoint_every}: must be a positive integer or null")

    _check(i.method in METHODS, f"influence.method={i.method!r}: unknown (known: {', '.join(METHODS)})")
    _check(_is_int(i.steps) and i.steps > 0, f"influence.steps={i.steps}: must be a positive integer")
    _check(_is_int(i.shard_size) and i.shard_size > 0, f"influence.shard_size={i.shard_size}: must be a positive integer")
    _check(_is_int(i.batch_size) and i.batch_size > 0, f"influence.batch_size={i.batch_size}: must be a positive integer")
    _check_loss("influence.objective", i.objective, s.task.name)
    _check(i.horizon is None or (_is_int(i.horizon) and i.horizon > 0), f"influence.horizon={i.horizon}: must be a positive integer or null")
    _check(i.queries in QUERIES, f"influence.queries={i.queries!r}: unknown (known: {', '.join(QUERIES)})")
    with_queries = [name for name, m in REGISTRY.items() if m.queries]
    _check(
        i.queries == "mean" or REGISTRY[i.method].queries,
        f"influence.queries={i.queries}: needs influence.method={' or '.join(with_queries)} (got {i.method})",
    )
    _check(
        not (i.query_input_grad and REGISTRY[i.method].features),
        f"influence.query_input_grad=true: not available for influence.method={i.method} (its queries are products of features)",
    )
    _check(_is_int(i.proj_dim) and i.proj_dim > 0, f"influence.proj_dim={i.proj_dim}: must be a positive integer")
    _check(_is_int(i.proj_seed) and i.proj_seed >= 0, f"influence.proj_seed={i.proj_seed}: must be a non-negative integer")
    _check(
        i.checkpoints is None or (_is_int(i.checkpoints) and i.checkpoints > 0),
        f"influence.checkpoints={i.checkpoints}: must be a positive integer or null",
    )
    _check(_is_number(i.damping) and i.damping >= 0, f"influence.damping={i.damping}: must be a number >= 0")
    _check(i.feature_dtype in FEATURE_DTYPES, f"influence.feature_dtype={i.feature_dtype!r}: unknown (known: {', '.join(FEATURE_DTYPES)})")
    _check(
        i.query_ids is None or (isinstance(i.query_ids, tuple) and len(i.query_ids) > 0 and all(_is_int(q) and q >= 0 for q in i.query_ids)),
        f"influence.query_ids={i.query_ids}: must be a non-empty list of non-negative integers or null",
    )
    _check(i.query_ids is None or len(set(i.query_ids)) == len(i.query_ids), f"influence.query_ids={list(i.query_ids or ())}: contains duplicates")
    _check(i.query_ids is None or i.queries != "mean", "influence.query_ids: needs influence.queries=per_sample, per_class or groups")
    _check(_is_int(i.query_batch) and i.query_batch > 0, f"influence.query_batch={i.query_batch}: must be a positive integer")
    _check(_is_int(i.query_top_k) and i.query_top_k > 0, f"influence.query_top_k={i.query_top_k}: must be a positive integer")
    _check(
        i.state_memory is None or parse_size(i.state_memory) is not None,
        f"influence.state_memory={i.state_memory!r}: must be a size such as 2GB, 512MiB or a number of bytes, or null",
    )
    _check(
        i.output_weights is None or (isinstance(i.output_weights, tuple) and len(i.output_weights) > 0 and all(_is_number(w) for w in i.output_weights)),
        f"influence.output_weights={i.output_weights}: must be a non-empty list of numbers or null",
    )

    _check(_is_int(v.n_gradcheck) and v.n_gradcheck >= 0, f"verify.n_gradcheck={v.n_gradcheck}: must be a non-negative integer")
    _check(_is_int(v.n_loo) and v.n_loo >= 0, f"verify.n_loo={v.n_loo}: must be a non-negative integer")
    _check(v.fd_step is None or (_is_number(v.fd_step) and v.fd_step > 0), f"verify.fd_step={v.fd_step}: must be positive or null")
    _check(_is_int(v.n_smooth) and v.n_smooth >= 1, f"verify.n_smooth={v.n_smooth}: must be a positive integer")
    _check(_is_int(v.n_groups) and v.n_groups >= 0, f"verify.n_groups={v.n_groups}: must be a non-negative integer")
    _check(
        isinstance(v.ladder, tuple) and len(v.ladder) > 0 and all(_is_number(x) and 0 < x <= 1 for x in v.ladder) and list(v.ladder) == sorted(v.ladder),
        f"verify.ladder={v.ladder}: must be increasing numbers in (0, 1]",
    )
    _check(isinstance(v.group_fractions, tuple) and all(_is_number(f) and 0 < f < 1 for f in v.group_fractions), f"verify.group_fractions={v.group_fractions}: must be numbers in (0, 1)")
    _check(v.perturbation is None or (_is_number(v.perturbation) and v.perturbation > 0), f"verify.perturbation={v.perturbation}: must be positive or null")
    _check(_is_int(v.n_float64) and v.n_float64 >= 1, f"verify.n_float64={v.n_float64}: must be a positive integer")

    _check(_is_number(c.cpus_per_task) and c.cpus_per_task > 0, f"cluster.cpus_per_task={c.cpus_per_task}: must be positive")
    _check(_is_number(c.gpus_per_task) and c.gpus_per_task >= 0, f"cluster.gpus_per_task={c.gpus_per_task}: must be >= 0")
    _check(c.num_cpus is None or (_is_int(c.num_cpus) and c.num_cpus > 0), f"cluster.num_cpus={c.num_cpus}: must be a positive integer or null")
    _check(_is_int(c.tf_threads) and c.tf_threads > 0, f"cluster.tf_threads={c.tf_threads}: must be a positive integer")
    _check(_is_int(c.max_retries) and c.max_retries >= 0, f"cluster.max_retries={c.max_retries}: must be a non-negative integer")
    _check(bool(s.output.dir), "output.dir: must not be empty")
    ensemble = s.aggregate.ensemble
    _check(ensemble in ENSEMBLES, f"aggregate.ensemble={ensemble!r}: unknown (known: {', '.join(ENSEMBLES)})")
