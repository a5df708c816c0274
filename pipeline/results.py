"""Typed stage results: what a stage driver (`pipeline.stages.<name>.run(context)`) returns, the console prints
(stage_registry) and manifest.json records under "stages" -> <name>, next to the stage's "seconds".

One frozen dataclass per stage (TrainResult, ScoreResult, VerifyResult, AggregateResult, ReportResult) and one per
part of them. Field names are the JSON keys: `to_json()` is the record as manifest.json holds it (plain dicts, lists,
numbers, strings), `from_json(record)` reads one back, and from_json(r.to_json()) == r.

- A key whose field says "only when ..." is written only then (the field is None otherwise); every other key is
  always written, null where the field is None (e.g. val_accuracy of a regression, the agreement of one seed).
- Reading is tolerant: a record of an older version, or one written by hand, may lack keys; what it lacks reads
  as None (a value) or empty (a mapping, a list): not recorded. Unknown keys (the record's "seconds") are ignored.
- Undefined numbers (a correlation of constant scores) are NaN in a driver's result; write_json writes them as
  null, which reads back as None.
Standard library only: config, the stages and the report import it on the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

Json = dict[str, Any]
T = TypeVar("T")


def _present(record: Json, *optional: str) -> Json:
    """record without the keys of `optional` whose value is None (keys written only when they apply)."""
    return {k: v for k, v in record.items() if not (k in optional and v is None)}


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _one(data: Mapping[str, Any], key: str, read: Callable[[Mapping[str, Any]], T]) -> T | None:
    """data[key] read by `read` when it is a mapping; None when absent or null."""
    value = data.get(key)
    return read(value) if isinstance(value, Mapping) else None


def _each(data: Mapping[str, Any], key: str, read: Callable[[Mapping[str, Any]], T]) -> dict[str, T]:
    """{name: read(record)} of the mapping data[key] (entries that are not mappings are skipped)."""
    return {str(k): read(v) for k, v in _mapping(data, key).items() if isinstance(v, Mapping)}


def _tuple(value: Any) -> tuple[Any, ...]:
    """A JSON list as a tuple; () when absent or not a list."""
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def _json_each(values: Mapping[str, Any]) -> Json:
    return {k: v.to_json() for k, v in values.items()}


class StageResult:
    """Base of every stage's result: what its driver returns and the manifest records (`to_json`)."""

    def to_json(self) -> Json:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class StateBudget:
    """What training recorded about keeping every state (influence.state_memory): kept, bytes needed, the budget;
    with influence.state_memory=auto also the figures the budget came from (memory available and free disk of
    output.dir when training started, in bytes; only then recorded)."""

    kept: bool | None = None
    bytes: int | None = None
    budget: int | None = None
    memory: int | None = None  # auto only
    disk: int | None = None  # auto only

    def to_json(self) -> Json:
        record = {"kept": self.kept, "bytes": self.bytes, "budget": self.budget}
        return {**record, **({"memory": self.memory, "disk": self.disk} if self.auto else {})}

    @property
    def auto(self) -> bool:
        """Whether the budget was set by influence.state_memory=auto."""
        return self.memory is not None or self.disk is not None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StateBudget:
        return cls(data.get("kept"), data.get("bytes"), data.get("budget"), data.get("memory"), data.get("disk"))


@dataclass(frozen=True)
class SeedTraining:
    """One trained seed: its trajectory/seed=<s>/_summary.json (runtime.train writes it). Seconds are wall seconds
    of training (compute_seconds: without checkpoint I/O; cpu_seconds: process time); val_*: on the validation set
    before (initial) and after training."""

    seed: int | None = None
    key: str | None = None  # io.arguments key of the trajectory
    n_steps: int | None = None
    checkpoint_steps: tuple[int, ...] = ()
    seconds: float | None = None
    compute_seconds: float | None = None
    cpu_seconds: float | None = None
    val_objective_initial: float | None = None
    val_objective: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None  # None for regression
    states: StateBudget | None = None  # None: states not asked for (no influence.state_memory, or not a sweep)

    def to_json(self) -> Json:
        return {
            "seed": self.seed,
            "key": self.key,
            "n_steps": self.n_steps,
            "checkpoint_steps": list(self.checkpoint_steps),
            "seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            "cpu_seconds": self.cpu_seconds,
            "val_objective_initial": self.val_objective_initial,
            "val_objective": self.val_objective,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "states": self.states.to_json() if self.states is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeedTraining:
        return cls(
            seed=data.get("seed"),
            key=data.get("key"),
            n_steps=data.get("n_steps"),
            checkpoint_steps=_tuple(data.get("checkpoint_steps")),
            seconds=data.get("seconds"),
            compute_seconds=data.get("compute_seconds"),
            cpu_seconds=data.get("cpu_seconds"),
            val_objective_initial=data.get("val_objective_initial"),
            val_objective=data.get("val_objective"),
            val_loss=data.get("val_loss"),
            val_accuracy=data.get("val_accuracy"),
            states=_one(data, "states", StateBudget.from_json),
        )


@dataclass(frozen=True)
class TrainResult(StageResult):
    """Stage train: every seed of train.seeds, keyed by str(seed)."""

    seeds: dict[str, SeedTraining] = field(default_factory=dict)

    def to_json(self) -> Json:
        return {"seeds": _json_each(self.seeds)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainResult:
        return cls(_each(data, "seeds", SeedTraining.from_json))


# ---------------------------------------------------------------------------------------------- score


SWEEP_KEYS = ("objective", "objective_value", "seconds_over_training", "replayed", "replay_max_abs_error", "horizon")


@dataclass(frozen=True)
class SweepScore:
    """What a sweep method's seed (trajectory, truncated) adds to its score summary (runtime.sweep): the objective E
    and its value, the sweep's time over training's compute time, whether states were replayed from checkpoints (and
    the largest replay error), and the horizon (None: the whole run)."""

    objective: str | None = None
    objective_value: float | None = None
    seconds_over_training: float | None = None
    replayed: bool | None = None
    replay_max_abs_error: float | None = None
    horizon: int | None = None

    def to_json(self) -> Json:
        return {
            "objective": self.objective,
            "objective_value": self.objective_value,
            "seconds_over_training": self.seconds_over_training,
            "replayed": self.replayed,
            "replay_max_abs_error": self.replay_max_abs_error,
            "horizon": self.horizon,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepScore | None:
        """None when data holds none of its keys (a sharded or features method's summary)."""
        if not any(key in data for key in SWEEP_KEYS):
            return None
        return cls(
            data.get("objective"),
            data.get("objective_value"),
            data.get("seconds_over_training"),
            data.get("replayed"),
            data.get("replay_max_abs_error"),
            data.get("horizon"),
        )


@dataclass(frozen=True)
class SeedScore:
    """One seed's scores: its scores/method=<m>/seed=<s>/_summary.json. seconds, cpu_seconds: worker (and process)
    seconds of its tasks; only when a run recorded them. actors: the pool size, only for sharded methods. sweep: only
    for sweep methods, its keys written flat beside the others."""

    seed: int | None = None
    n_samples: int | None = None
    parts: int | None = None
    seconds: float | None = None  # only when recorded
    cpu_seconds: float | None = None  # only when recorded
    actors: int | None = None  # only for sharded methods
    sweep: SweepScore | None = None  # only for sweep methods

    def to_json(self) -> Json:
        record = {
            **(self.sweep.to_json() if self.sweep is not None else {}),
            "seed": self.seed,
            "n_samples": self.n_samples,
            "parts": self.parts,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "actors": self.actors,
        }
        return _present(record, "seconds", "cpu_seconds", "actors")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeedScore:
        return cls(
            seed=data.get("seed"),
            n_samples=data.get("n_samples"),
            parts=data.get("parts"),
            seconds=data.get("seconds"),
            cpu_seconds=data.get("cpu_seconds"),
            actors=data.get("actors"),
            sweep=SweepScore.from_json(data),
        )


@dataclass(frozen=True)
class TrakFeatures:
    """The features map-reduce of a run that scored parts (stages.score_trak): feature shards computed (not reused),
    the checkpoint steps featurized per seed, and the wall seconds of features, kernels and scores."""

    computed_shards: int | None = None
    checkpoints: dict[str, tuple[int, ...]] = field(default_factory=dict)
    wall_seconds: float | None = None

    def to_json(self) -> Json:
        return {
            "computed_shards": self.computed_shards,
            "checkpoints": {seed: list(steps) for seed, steps in self.checkpoints.items()},
            "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrakFeatures:
        checkpoints = {str(seed): _tuple(steps) for seed, steps in _mapping(data, "checkpoints").items()}
        return cls(data.get("computed_shards"), checkpoints, data.get("wall_seconds"))


@dataclass(frozen=True)
class QuerySeed:
    """One seed's per-query scores (also its queries/method=<m>/seed=<s>/_summary.json): parts in all and computed
    by this run, their summed sweep seconds, queries per second per worker and whether any replayed states (both
    None when this run computed no part)."""

    seed: int | None = None
    queries: str | None = None  # per_sample | per_class | groups
    n_queries: int | None = None
    parts: int | None = None
    parts_computed: int | None = None
    seconds: float | None = None
    queries_per_second: float | None = None
    replayed: bool | None = None

    def to_json(self) -> Json:
        return {
            "seed": self.seed,
            "queries": self.queries,
            "n_queries": self.n_queries,
            "parts": self.parts,
            "parts_computed": self.parts_computed,
            "seconds": self.seconds,
            "queries_per_second": self.queries_per_second,
            "replayed": self.replayed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QuerySeed:
        return cls(
            data.get("seed"),
            data.get("queries"),
            data.get("n_queries"),
            data.get("parts"),
            data.get("parts_computed"),
            data.get("seconds"),
            data.get("queries_per_second"),
            data.get("replayed"),
        )


@dataclass(frozen=True)
class ScoreQueries:
    """Per-query scores (stages.queries): the queries, their parts (batches) per seed, the wall seconds of all batch
    tasks (in parallel over the workers) and each seed's summary, keyed by str(seed)."""

    queries: str | None = None
    n_queries: int | None = None
    parts: int | None = None
    wall_seconds: float | None = None
    seeds: dict[str, QuerySeed] = field(default_factory=dict)

    def to_json(self) -> Json:
        return {
            "queries": self.queries,
            "n_queries": self.n_queries,
            "parts": self.parts,
            "wall_seconds": self.wall_seconds,
            "seeds": _json_each(self.seeds),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreQueries:
        return cls(
            data.get("queries"),
            data.get("n_queries"),
            data.get("parts"),
            data.get("wall_seconds"),
            _each(data, "seeds", QuerySeed.from_json),
        )


@dataclass(frozen=True)
class ScoreResult(StageResult):
    """Stage score: influence.method and every seed's summary, keyed by str(seed); features only when a features
    method (trak) scored parts in this run; queries only with influence.queries other than mean."""

    method: str | None = None
    seeds: dict[str, SeedScore] = field(default_factory=dict)
    features: TrakFeatures | None = None  # only when a features method scored parts
    queries: ScoreQueries | None = None  # only with influence.queries != mean

    def to_json(self) -> Json:
        record = {
            "method": self.method,
            "seeds": _json_each(self.seeds),
            "features": self.features.to_json() if self.features is not None else None,
            "queries": self.queries.to_json() if self.queries is not None else None,
        }
        return _present(record, "features", "queries")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreResult:
        return cls(
            data.get("method"),
            _each(data, "seeds", SeedScore.from_json),
            _one(data, "features", TrakFeatures.from_json),
            _one(data, "queries", ScoreQueries.from_json),
        )


# ---------------------------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class ErrorSummary:
    """Relative errors |predicted - finite difference| / scale of one gradcheck kind (eps, x, x.<input>)."""

    n: int | None = None
    median_relative_error: float | None = None
    max_relative_error: float | None = None

    def to_json(self) -> Json:
        return {
            "n": self.n,
            "median_relative_error": self.median_relative_error,
            "max_relative_error": self.max_relative_error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ErrorSummary:
        return cls(data.get("n"), data.get("median_relative_error"), data.get("max_relative_error"))


@dataclass(frozen=True)
class LooSummary:
    """Leave-one-out: correlations of the predicted change (-influence) with the retrained one over n samples;
    sign_agreement (share of equal signs) only for the per-query checks."""

    n: int | None = None
    pearson: float | None = None
    spearman: float | None = None
    kendall: float | None = None
    sign_agreement: float | None = None  # only for queries

    def to_json(self) -> Json:
        record = {
            "n": self.n,
            "pearson": self.pearson,
            "spearman": self.spearman,
            "kendall": self.kendall,
            "sign_agreement": self.sign_agreement,
        }
        return _present(record, "sign_agreement")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LooSummary:
        return cls(
            data.get("n"), data.get("pearson"), data.get("spearman"), data.get("kendall"), data.get("sign_agreement")
        )


@dataclass(frozen=True)
class VerifySeed:
    """One seed's unperturbed retraining: its validation objective E."""

    objective: float | None = None

    def to_json(self) -> Json:
        return {"objective": self.objective}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerifySeed:
        return cls(data.get("objective"))


@dataclass(frozen=True)
class QueryChecks:
    """The per-query checks: the queries verified (query_ids) and, over them, gradcheck in eps and leave-one-out."""

    queries: str | None = None
    query_ids: tuple[int, ...] = ()
    gradcheck: dict[str, ErrorSummary] = field(default_factory=dict)
    loo: LooSummary | None = None

    def to_json(self) -> Json:
        return {
            "queries": self.queries,
            "query_ids": list(self.query_ids),
            "gradcheck": _json_each(self.gradcheck),
            "loo": self.loo.to_json() if self.loo is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueryChecks:
        return cls(
            data.get("queries"),
            _tuple(data.get("query_ids")),
            _each(data, "gradcheck", ErrorSummary.from_json),
            _one(data, "loo", LooSummary.from_json),
        )


@dataclass(frozen=True)
class Ladder:
    """One unit of the smoothness ladder (pipeline.smoothness.ladder_summary): the median relative deviation of the
    linear prediction per step s (None: below rounding) and the largest s up to which it stays predictive (None:
    not even the smallest)."""

    steps: tuple[float, ...] = ()
    median_deviation: tuple[float | None, ...] = ()
    linear_up_to: float | None = None

    def to_json(self) -> Json:
        return {
            "steps": list(self.steps),
            "median_deviation": list(self.median_deviation),
            "linear_up_to": self.linear_up_to,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ladder:
        return cls(_tuple(data.get("steps")), _tuple(data.get("median_deviation")), data.get("linear_up_to"))


@dataclass(frozen=True)
class Float64Replay:
    """A float32 run's influence against a float64 replay of it, on n samples."""

    n: int | None = None
    median_relative_error: float | None = None
    max_relative_error: float | None = None
    spearman: float | None = None

    def to_json(self) -> Json:
        return {
            "n": self.n,
            "median_relative_error": self.median_relative_error,
            "max_relative_error": self.max_relative_error,
            "spearman": self.spearman,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Float64Replay:
        return cls(
            data.get("n"), data.get("median_relative_error"), data.get("max_relative_error"), data.get("spearman")
        )


@dataclass(frozen=True)
class SmoothnessCheck:
    """The smoothness diagnostics of the first seed (pipeline.smoothness): ladders of single samples and of random
    groups ("group <fraction>"), the growth of an initial-weight perturbation of relative size
    initial_perturbation, the rounding floor of the deviations, the float64 replay (None for a float64 run), and the
    verdict (smooth | groups-only | non-smooth) with its explanation."""

    seed: int | None = None
    single: Ladder | None = None
    groups: dict[str, Ladder] = field(default_factory=dict)
    initial_perturbation: float | None = None
    perturbation_growth: float | None = None
    rounding_floor: float | None = None
    float64_replay: Float64Replay | None = None  # written as null for a float64 run
    verdict: str | None = None
    explanation: str | None = None

    def to_json(self) -> Json:
        return {
            "seed": self.seed,
            "single": self.single.to_json() if self.single is not None else None,
            "groups": _json_each(self.groups),
            "initial_perturbation": self.initial_perturbation,
            "perturbation_growth": self.perturbation_growth,
            "rounding_floor": self.rounding_floor,
            "float64_replay": self.float64_replay.to_json() if self.float64_replay is not None else None,
            "verdict": self.verdict,
            "explanation": self.explanation,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SmoothnessCheck:
        return cls(
            seed=data.get("seed"),
            single=_one(data, "single", Ladder.from_json),
            groups=_each(data, "groups", Ladder.from_json),
            initial_perturbation=data.get("initial_perturbation"),
            perturbation_growth=data.get("perturbation_growth"),
            rounding_floor=data.get("rounding_floor"),
            float64_replay=_one(data, "float64_replay", Float64Replay.from_json),
            verdict=data.get("verdict"),
            explanation=data.get("explanation"),
        )


@dataclass(frozen=True)
class VerifyResult(StageResult):
    """Stage verify: the finite-difference step h, gradcheck per kind, leave-one-out and each seed's unperturbed
    objective (keyed by str(seed)); queries only with influence.queries != mean; smoothness only when
    verify.smoothness checked the exact method."""

    fd_step: float | None = None
    gradcheck: dict[str, ErrorSummary] = field(default_factory=dict)
    loo: LooSummary | None = None
    seeds: dict[str, VerifySeed] = field(default_factory=dict)
    queries: QueryChecks | None = None  # only with influence.queries != mean
    smoothness: SmoothnessCheck | None = None  # only with verify.smoothness and an exact method

    def to_json(self) -> Json:
        record = {
            "fd_step": self.fd_step,
            "gradcheck": _json_each(self.gradcheck),
            "loo": self.loo.to_json() if self.loo is not None else None,
            "seeds": _json_each(self.seeds),
            "queries": self.queries.to_json() if self.queries is not None else None,
            "smoothness": self.smoothness.to_json() if self.smoothness is not None else None,
        }
        return _present(record, "queries", "smoothness")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerifyResult:
        return cls(
            data.get("fd_step"),
            _each(data, "gradcheck", ErrorSummary.from_json),
            _one(data, "loo", LooSummary.from_json),
            _each(data, "seeds", VerifySeed.from_json),
            _one(data, "queries", QueryChecks.from_json),
            _one(data, "smoothness", SmoothnessCheck.from_json),
        )


# ---------------------------------------------------------------------------------------------- aggregate, report


@dataclass(frozen=True)
class SeedPair:
    """Spearman correlation of two seeds' scores (NaN, written null, when one is constant)."""

    seeds: tuple[int, ...] = ()  # (a, b)
    spearman: float | None = None

    def to_json(self) -> Json:
        return {"seeds": list(self.seeds), "spearman": self.spearman}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeedPair:
        return cls(_tuple(data.get("seeds")), data.get("spearman"))


@dataclass(frozen=True)
class QueryTop:
    """query_top.parquet: its rows and k (the most harmful and most helpful samples kept per query)."""

    rows: int | None = None
    k: int | None = None

    def to_json(self) -> Json:
        return {"rows": self.rows, "k": self.k}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueryTop:
        return cls(data.get("rows"), data.get("k"))


@dataclass(frozen=True)
class AggregateResult(StageResult):
    """Stage aggregate: ranking.parquet's rows over `methods`, the aggregate.ensemble rule and, per method, the mean
    Spearman between its seeds (None with one seed), the Spearman of every pair and each seed's scale (root mean
    square of its scores, keyed by str(seed)); query_top only with influence.queries != mean."""

    rows: int | None = None
    methods: tuple[str, ...] = ()
    ensemble: str | None = None
    seed_agreement: dict[str, float | None] = field(default_factory=dict)
    seed_agreement_pairs: dict[str, tuple[SeedPair, ...]] = field(default_factory=dict)
    seed_scale: dict[str, dict[str, float]] = field(default_factory=dict)
    query_top: QueryTop | None = None  # only with influence.queries != mean

    def to_json(self) -> Json:
        record = {
            "rows": self.rows,
            "methods": list(self.methods),
            "ensemble": self.ensemble,
            "seed_agreement": dict(self.seed_agreement),
            "seed_agreement_pairs": {m: [p.to_json() for p in pairs] for m, pairs in self.seed_agreement_pairs.items()},
            "seed_scale": {m: dict(scales) for m, scales in self.seed_scale.items()},
            "query_top": self.query_top.to_json() if self.query_top is not None else None,
        }
        return _present(record, "query_top")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AggregateResult:
        pairs = {
            str(m): tuple(SeedPair.from_json(p) for p in _tuple(ps) if isinstance(p, Mapping))
            for m, ps in _mapping(data, "seed_agreement_pairs").items()
        }
        return cls(
            rows=data.get("rows"),
            methods=_tuple(data.get("methods")),
            ensemble=data.get("ensemble"),
            seed_agreement={str(m): v for m, v in _mapping(data, "seed_agreement").items()},
            seed_agreement_pairs=pairs,
            seed_scale={str(m): dict(v) for m, v in _mapping(data, "seed_scale").items() if isinstance(v, Mapping)},
            query_top=_one(data, "query_top", QueryTop.from_json),
        )


@dataclass(frozen=True)
class ReportResult(StageResult):
    """Stage report: the path of report/index.html."""

    path: str | None = None

    def to_json(self) -> Json:
        return {"path": self.path}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportResult:
        return cls(data.get("path"))


# ---------------------------------------------------------------------------------------------- manifest records


def stage_record(result: StageResult, seconds: float) -> Json:
    """A stage's manifest record: its wall seconds (to the millisecond) and its result's keys."""
    return {"seconds": round(seconds, 3), **result.to_json()}


def stage_seconds(record: Any) -> float | None:
    """The wall seconds of a manifest stage record; None when not recorded."""
    seconds = record.get("seconds") if isinstance(record, Mapping) else None
    return float(seconds) if isinstance(seconds, (int, float)) else None
