"""Stage `score`: every seed's scores for influence.method, as Parquet parts under
scores/method=<m>/seed=<s>/. Sweep methods (trajectory, truncated) write one part per seed from one Ray
task; sharded methods (stages.score_sharded) one part per training-set shard from a pool of actors.

Resume checks what it skips: every expected part must read back with the current scores key and exactly
its shard's sample_ids. A bad part is renamed aside (.part-<n>.parquet.corrupt) and recomputed; parts that belong to no
shard of the current layout are renamed aside too. A good part whose input gradients do not match
influence.input_grad (held when false, absent when true) is recomputed in place: the setting is not part of the
scores key (its influence column is the same either way). _summary.json only records timings.

Driver side; the sweep's task body is runtime.sweep.score_seed.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from pipeline import cluster, runtime
from pipeline.errors import ConfigError, DataError
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.parts import Shard, parts_to_compute, split, whole
from pipeline.io.tables import has_input_grads
from pipeline.methods import REGISTRY, Method
from pipeline.results import ScoreResult, SeedScore
from pipeline.stages import queries, score_sharded, score_trak
from pipeline.stages.context import RunContext


def run(context: RunContext) -> ScoreResult:
    """Score every seed's missing or bad parts; returns every seed's summary (and the features and queries runs)."""
    settings, layout = context.settings, context.layout
    method = REGISTRY[settings.influence.method]
    for seed in settings.train.seeds:
        if not layout.train_summary(seed).exists():
            raise ConfigError(
                f"stages: score needs the trained trajectory of seed {seed} in {layout.root}; add train to stages"
            )
    shards = (
        whole(context.dataset.n_train)
        if method.sweep
        else split(context.dataset.n_train, settings.influence.shard_size)
    )
    wanted = settings.influence.input_grad or not method.optional_input_grad
    todo = []
    for seed in settings.train.seeds:
        bad = parts_to_compute(layout, method.name, seed, shards, context.score_key)
        todo += [(seed, shard) for shard in bad + other_input_grads(layout, method, seed, shards, bad, wanted)]
    features = None
    if method.sweep:
        calls = [(settings, context.dataset_ref, seed, context.score_key) for seed, _ in todo]
        cluster.run_tasks(runtime.score_seed, calls, context.task_options, desc=f"score {method.name} (seeds)")
    elif method.features:
        features = score_trak.run(context, todo, shards) if todo else None
    elif todo:
        score_sharded.score_shards(context, todo)
    summaries = {}
    for seed in settings.train.seeds:
        missing = parts_to_compute(layout, method.name, seed, shards, context.score_key, repair=False)
        if missing:
            raise DataError(
                f"{layout.scores_dir(method.name, seed)}: parts {[s[0] for s in missing]} still missing after scoring"
            )
        summary_path = layout.score_summary(method.name, seed)
        summary = read_json(summary_path) if summary_path.exists() else {}
        summary.update({"seed": seed, "n_samples": context.dataset.n_train, "parts": len(shards)})
        write_json(summary_path, summary)
        summaries[str(seed)] = SeedScore.from_json(summary)
    return ScoreResult(
        method.name,
        summaries,
        features=features,
        queries=queries.run(context) if settings.influence.queries != "mean" else None,
    )


def other_input_grads(
    layout: RunLayout, method: Method, seed: int, shards: list[Shard], bad: list[Shard], wanted: bool
) -> list[Shard]:
    """The good parts of `seed` (shards not in `bad`) that hold input gradients when `wanted` is False or lack them
    when it is True (influence.input_grad changed since they were written), one line for the seed when any."""
    other = [
        shard
        for shard in shards
        if shard not in bad
        and has_input_grads(pq.read_schema(layout.score_part(method.name, seed, shard[0]))) != wanted
    ]
    if other:
        one = len(other) == 1
        held = ("lacks" if one else "lack") if wanted else ("holds" if one else "hold")
        print(
            f"[score] seed={seed}: {len(other)} {method.name} part{'' if one else 's'} {held} input gradients; "
            f"recomputing (influence.input_grad={'true' if wanted else 'false'})"
        )
    return other
