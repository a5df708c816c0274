"""Typed stage results (pipeline.results): every result round-trips through to_json/from_json (and through
manifest.json), writes exactly the keys the stage drivers wrote as dicts, and reads partial records tolerantly.
No TensorFlow, no Ray: the results are built as the drivers build them, from hand-written worker summaries."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from pipeline import ensembles, metrics, smoothness
from pipeline.io.files import read_json, write_json
from pipeline.results import (
    AggregateResult,
    ErrorSummary,
    Float64Replay,
    Ladder,
    LooSummary,
    QueryChecks,
    QuerySeed,
    QueryTop,
    ReportResult,
    ScoreQueries,
    ScoreResult,
    SeedPair,
    SeedScore,
    SeedTraining,
    SmoothnessCheck,
    StageResult,
    TrainResult,
    TrakFeatures,
    VerifyResult,
    VerifySeed,
    stage_record,
    stage_seconds,
)
from pipeline.stage_registry import STAGES, Stage

# the keys each driver (and the worker summaries it reads back) wrote before the results were typed
TRAIN_SEED = {
    "seed",
    "key",
    "n_steps",
    "checkpoint_steps",
    "seconds",
    "compute_seconds",
    "cpu_seconds",
    "val_objective_initial",
    "val_objective",
    "val_loss",
    "val_accuracy",
    "states",
}
SCORED = {"seed", "n_samples", "parts"}  # stages.score adds these to every seed's summary
SWEEP_SEED = SCORED | {
    "objective",
    "objective_value",
    "seconds",
    "cpu_seconds",
    "seconds_over_training",
    "replayed",
    "replay_max_abs_error",
    "horizon",
}
SHARDED_SEED = SCORED | {"actors", "seconds", "cpu_seconds"}
FEATURES_SEED = SCORED | {"seconds", "cpu_seconds"}
QUERY_SEED = {"seed", "queries", "n_queries", "parts", "parts_computed", "seconds", "queries_per_second", "replayed"}
ERRORS = {"n", "median_relative_error", "max_relative_error"}
LOO = {"n", "pearson", "spearman", "kendall"}
LADDER = {"steps", "median_deviation", "linear_up_to"}
SMOOTHNESS = {
    "seed",
    "single",
    "groups",
    "initial_perturbation",
    "perturbation_growth",
    "rounding_floor",
    "float64_replay",
    "verdict",
    "explanation",
}
AGGREGATE = {"rows", "methods", "ensemble", "seed_agreement", "seed_agreement_pairs", "seed_scale"}


def train_summary(seed: int, regression: bool = False, states: bool = True) -> dict:
    """trajectory/seed=<s>/_summary.json as runtime.train writes it (accuracy NaN, so null, for regression)."""
    return {
        "seed": seed,
        "key": "3f2a9c",
        "n_steps": 12,
        "checkpoint_steps": [0, 4, 8, 12],
        "seconds": 1.2345,
        "compute_seconds": 1.1,
        "cpu_seconds": 2.5,
        "val_objective_initial": 2.31,
        "val_objective": 0.42,
        "val_loss": 0.41,
        "val_accuracy": None if regression else 0.875,
        "states": {"kept": True, "bytes": 1 << 20, "budget": 1 << 30} if states else None,
    }


def train_result() -> TrainResult:
    """As stages.train.run: every seed's summary read back from disk."""
    return TrainResult(
        {
            "0": SeedTraining.from_json(train_summary(0)),
            "1": SeedTraining.from_json(train_summary(1, regression=True, states=False)),
        }
    )


def sweep_summary(seed: int) -> dict:
    """A sweep's score summary (runtime.sweep) after stages.score added seed, n_samples and parts."""
    return {
        "seed": seed,
        "objective": "cross_entropy",
        "objective_value": 0.4321,
        "seconds": 3.5,
        "cpu_seconds": 6.25,
        "seconds_over_training": 2.84,
        "replayed": False,
        "replay_max_abs_error": None,
        "horizon": None,
        "n_samples": 50,
        "parts": 1,
    }


def query_seed(seed: int, computed: bool = True) -> QuerySeed:
    """As stages.queries.run; queries_per_second and replayed are None when no part was computed."""
    return QuerySeed(
        seed=seed,
        queries="per_sample",
        n_queries=10,
        parts=3,
        parts_computed=3 if computed else 0,
        seconds=4.5 if computed else 0,
        queries_per_second=2.2222 if computed else None,
        replayed=False if computed else None,
    )


def score_results() -> dict[str, ScoreResult]:
    """As stages.score.run, for a sweep, a sharded, a features method with queries and a resume without summary."""
    sharded = {"actors": 2, "seconds": 7.5, "cpu_seconds": 9.0, "seed": 0, "n_samples": 50, "parts": 4}
    trak = {"seconds": 7.5, "cpu_seconds": 9.0, "seed": 0, "n_samples": 50, "parts": 4}
    queries = ScoreQueries("per_sample", 10, 3, 5.1234, {"0": query_seed(0), "1": query_seed(1, computed=False)})
    return {
        "sweep": ScoreResult("trajectory", {"0": SeedScore.from_json(sweep_summary(0))}),
        "sharded": ScoreResult("tracin", {"0": SeedScore.from_json(sharded)}),
        "features": ScoreResult(
            "trak",
            {"0": SeedScore.from_json(trak)},
            features=TrakFeatures(8, {"0": (8, 12)}, 12.345),
            queries=queries,
        ),
        "resumed": ScoreResult("loss", {"0": SeedScore.from_json({"seed": 0, "n_samples": 50, "parts": 4})}),
    }


def ladder(steps: tuple[float, ...], deviations: np.ndarray) -> Ladder:
    return Ladder.from_json(smoothness.ladder_summary(steps, deviations))


def verify_results() -> dict[str, VerifyResult]:
    """As stages.verify.run: the mean checks alone, then with queries and a float32 smoothness check."""
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=6)
    c = metrics.correlations(predicted, predicted * 1.1 + 0.01 * rng.normal(size=6))
    loo = LooSummary(6, c["pearson"], c["spearman"], c["kendall"])
    gradcheck = {"eps": ErrorSummary(2, 1.5e-8, 2.0e-8), "x": ErrorSummary(2, 3.0e-7, 4.0e-7)}
    plain = VerifyResult(1e-4, gradcheck, loo, {"0": VerifySeed(0.4321)})
    steps = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    single = ladder(steps, np.array([[0.01, 0.02, 0.6, 0.8, 0.9], [np.nan, 0.01, 0.7, 0.9, 1.0]]))
    groups = {"group 0.05": ladder(steps, np.array([[0.01, 0.02, 0.05, 0.2, 0.4]]))}
    check = SmoothnessCheck(
        seed=0,
        single=single,
        groups=groups,
        initial_perturbation=1e-3,
        perturbation_growth=3.5,
        rounding_floor=2.4e-5,
        float64_replay=Float64Replay(150, 2e-6, 1e-4, 0.9999),
        verdict=smoothness.verdict(single.to_json(), {k: v.to_json() for k, v in groups.items()}),
        explanation="The derivative predicts what removing a single training sample does.",
    )
    queries = QueryChecks(
        "per_class",
        (0, 2, 3),
        {"eps": ErrorSummary(6, 1e-8, 3e-8)},
        LooSummary(9, 0.97, 0.95, 0.88, sign_agreement=0.8889),
    )
    return {
        "plain": plain,
        "full": VerifyResult(1e-2, gradcheck, loo, {"0": VerifySeed(0.4321)}, queries=queries, smoothness=check),
    }


def aggregate_results() -> dict[str, AggregateResult]:
    """As stages.aggregate.run: two seeds of two methods (with query_top), and one seed of one method."""
    scores = np.random.default_rng(1).normal(size=(2, 30))
    pairs = tuple(SeedPair.from_json(p) for p in ensembles.pairwise_spearman(scores, [0, 1]))
    scale = {str(s): float(v) for s, v in zip((0, 1), ensembles.scale(scores))}
    two = AggregateResult(
        rows=60,
        methods=("trajectory", "loss"),
        ensemble="standardized",
        seed_agreement={"trajectory": metrics.mean_pairwise_spearman(scores), "loss": 0.5},
        seed_agreement_pairs={"trajectory": pairs, "loss": (SeedPair((0, 1), 0.5),)},
        seed_scale={"trajectory": scale, "loss": {"0": 1.0, "1": 2.0}},
        query_top=QueryTop(400, 20),
    )
    one = AggregateResult(
        rows=30,
        methods=("trajectory",),
        ensemble="mean",
        seed_agreement={"trajectory": metrics.mean_pairwise_spearman(scores[:1])},
        seed_agreement_pairs={"trajectory": ()},
        seed_scale={"trajectory": {"0": 1.0}},
    )
    return {"two": two, "one": one}


def all_results() -> list[StageResult]:
    return [
        train_result(),
        *score_results().values(),
        *verify_results().values(),
        *aggregate_results().values(),
        ReportResult("/runs/a/report/index.html"),
    ]


@pytest.mark.parametrize("result", all_results(), ids=lambda r: type(r).__name__)
def test_round_trip(result, tmp_path):
    record = result.to_json()
    assert type(result).from_json(record) == result
    # through manifest.json as the manifest writes it: the record, next to the stage's seconds
    write_json(tmp_path / "manifest.json", {"stages": {"x": stage_record(result, 1.23456)}})
    stored = read_json(tmp_path / "manifest.json")["stages"]["x"]
    assert stage_seconds(stored) == 1.235
    assert type(result).from_json(stored) == result
    assert {k: v for k, v in stored.items() if k != "seconds"} == json.loads(json.dumps(record))


def test_train_keys():
    record = train_result().to_json()
    assert set(record) == {"seeds"} and set(record["seeds"]) == {"0", "1"}
    assert record["seeds"]["0"] == train_summary(0)  # the summary on disk, as it was
    assert set(record["seeds"]["1"]) == TRAIN_SEED
    assert record["seeds"]["1"]["val_accuracy"] is None and record["seeds"]["1"]["states"] is None
    assert set(record["seeds"]["0"]["states"]) == {"kept", "bytes", "budget"}


def test_score_keys():
    results = {name: r.to_json() for name, r in score_results().items()}
    assert {name: set(r) for name, r in results.items()} == {
        "sweep": {"method", "seeds"},
        "sharded": {"method", "seeds"},
        "features": {"method", "seeds", "features", "queries"},
        "resumed": {"method", "seeds"},
    }
    assert results["sweep"]["seeds"]["0"] == sweep_summary(0)
    assert set(results["sharded"]["seeds"]["0"]) == SHARDED_SEED
    assert set(results["features"]["seeds"]["0"]) == FEATURES_SEED
    assert set(results["resumed"]["seeds"]["0"]) == SCORED
    features, queries = results["features"]["features"], results["features"]["queries"]
    assert features == {"computed_shards": 8, "checkpoints": {"0": [8, 12]}, "wall_seconds": 12.345}
    assert set(queries) == {"queries", "n_queries", "parts", "wall_seconds", "seeds"}
    assert all(set(s) == QUERY_SEED for s in queries["seeds"].values())
    assert queries["seeds"]["1"]["queries_per_second"] is None and queries["seeds"]["1"]["replayed"] is None
    assert set(SWEEP_SEED) == set(results["sweep"]["seeds"]["0"])


def test_verify_keys():
    plain, full = (r.to_json() for r in verify_results().values())
    assert set(plain) == {"fd_step", "gradcheck", "loo", "seeds"}
    assert set(full) == {"fd_step", "gradcheck", "loo", "seeds", "queries", "smoothness"}
    assert all(set(g) == ERRORS for g in plain["gradcheck"].values()) and set(plain["loo"]) == LOO
    assert plain["seeds"] == {"0": {"objective": 0.4321}}
    queries = full["queries"]
    assert set(queries) == {"queries", "query_ids", "gradcheck", "loo"} and queries["query_ids"] == [0, 2, 3]
    assert set(queries["loo"]) == LOO | {"sign_agreement"}
    smooth = full["smoothness"]
    assert set(smooth) == SMOOTHNESS and set(smooth["single"]) == LADDER and set(smooth["groups"]) == {"group 0.05"}
    assert smooth["single"]["median_deviation"][0] == pytest.approx(0.01)  # NaN rows are left out of the median
    assert set(smooth["float64_replay"]) == {"n", "median_relative_error", "max_relative_error", "spearman"}
    float64 = VerifyResult.from_json({**full, "smoothness": {**smooth, "float64_replay": None}}).to_json()
    assert "float64_replay" in float64["smoothness"] and float64["smoothness"]["float64_replay"] is None


def test_aggregate_keys():
    two, one = (r.to_json() for r in aggregate_results().values())
    assert set(two) == AGGREGATE | {"query_top"} and set(one) == AGGREGATE
    assert two["methods"] == ["trajectory", "loss"] and two["query_top"] == {"rows": 400, "k": 20}
    assert two["seed_agreement_pairs"]["trajectory"][0]["seeds"] == [0, 1]
    assert set(two["seed_agreement_pairs"]["trajectory"][0]) == {"seeds", "spearman"}
    assert one["seed_agreement"] == {"trajectory": None} and one["seed_agreement_pairs"] == {"trajectory": []}
    assert ReportResult("/r/report/index.html").to_json() == {"path": "/r/report/index.html"}


def test_partial_records_read_as_not_recorded():
    """Records of older versions or written by hand lack keys; they read as None or empty, and unknown keys (the
    record's seconds) are ignored."""
    train = TrainResult.from_json({"seconds": 3.2, "seeds": {"0": {"val_loss": 0.25, "n_steps": 20}}})
    assert train.seeds["0"].val_loss == 0.25 and train.seeds["0"].seed is None and train.seeds["0"].states is None
    aggregate = AggregateResult.from_json({"seconds": 0.1, "seed_agreement": {"trajectory": 0.8765}})
    assert aggregate.seed_agreement == {"trajectory": 0.8765} and aggregate.ensemble is None
    assert aggregate.seed_scale == {} and aggregate.query_top is None
    verify = VerifyResult.from_json({"fd_step": 0.01, "smoothness": {"verdict": "smooth"}})
    assert verify.seeds == {} and verify.loo is None and verify.queries is None
    assert verify.smoothness is not None and verify.smoothness.single is None and verify.smoothness.groups == {}
    assert ScoreResult.from_json({"seconds": 1.5}) == ScoreResult()
    assert stage_seconds({"path": "x"}) is None and stage_seconds(None) is None


def test_nan_is_written_null_and_read_as_none(tmp_path):
    """Undefined correlations are NaN in the driver's result; manifest.json holds null, which reads back as None."""
    result = VerifyResult(1e-4, {}, LooSummary(2, math.nan, math.nan, math.nan), {})
    write_json(tmp_path / "m.json", result.to_json())
    assert VerifyResult.from_json(read_json(tmp_path / "m.json")).loo == LooSummary(2, None, None, None)


def test_console_lines():
    """The registry's console lines, from the typed results, read as they did from the dicts."""
    assert STAGES["train"].lines(train_result()) == [
        "[train] seed=0: 12 steps in 1.2s, val_loss=0.41, val_accuracy=0.875",
        "[train] seed=1: 12 steps in 1.2s, val_loss=0.41",
    ]
    scores = score_results()
    assert STAGES["score"].lines(scores["sweep"]) == [
        "[score] seed=0: trajectory on 50 samples in 1 parts in 3.5s (2.84x training), E=0.4321, "
        "states kept from training (no replay)"
    ]
    assert STAGES["score"].lines(scores["sharded"]) == [
        "[score] seed=0: tracin on 50 samples in 4 parts in 7.5 worker-seconds"
    ]
    assert STAGES["score"].lines(scores["resumed"]) == ["[score] seed=0: loss on 50 samples in 4 parts"]
    assert STAGES["score"].lines(scores["features"])[1:] == [
        "[queries] seed=0: 10 per_sample queries in 3 parts (3 computed in 4.5s, 2.22 queries/s per worker)",
        "[queries] seed=1: 10 per_sample queries in 3 parts (0 computed in 0.0s)",
    ]
    lines = STAGES["verify"].lines(verify_results()["full"])
    assert lines[0] == "[verify] gradcheck eps: median relative error 1.50e-08, max 2.00e-08 (n=2, h=0.01)"
    assert lines[2].startswith("[verify] leave-one-out (n=6): pearson ")
    assert lines[3] == (
        "[verify] per_class queries [0, 2, 3]: gradcheck median relative error 1.00e-08 (n=6), "
        "leave-one-out pearson 0.9700, sign agreement 0.889 (n=9)"
    )
    assert lines[4] == (
        "[verify] smoothness: groups-only (linear single up to s=0.001, group 0.05 up to s=1.0; "
        "initial perturbation grew 3.5x)"
    )
    assert lines[5] == "[verify] float32 vs a float64 replay (n=150): median relative error 2.00e-06, spearman 0.9999"
    assert len(STAGES["verify"].lines(verify_results()["plain"])) == 3
    two, one = aggregate_results().values()
    assert STAGES["aggregate"].lines(one) == [
        "[aggregate] 30 ranked rows; seed agreement (Spearman) trajectory: one seed"
    ]
    assert STAGES["aggregate"].lines(two)[1] == (
        "[aggregate] query_top.parquet: 400 rows (top 20 harmful and helpful per query)"
    )
    assert STAGES["report"].lines(ReportResult("/r/report/index.html")) == ["[report] /r/report/index.html"]


def test_a_driver_returning_another_type_is_refused():
    stage = Stage("odd", False, "builtins:dict", TrainResult, lambda result: [], "returns a dict")
    with pytest.raises(TypeError, match="builtins:dict returned dict, not TrainResult"):
        stage.run({})


def test_results_import_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import pipeline.results; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before} - {'pipeline'}; "
        "other = {m for m in new if m not in sys.stdlib_module_names and not m.startswith('_')}; "
        "assert not other, other; "
        "assert {m for m in sys.modules if m.startswith('pipeline')} == {'pipeline', 'pipeline.results'}"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
