"""Stage `train`: one Ray task per seed trains the model functionally and records its trajectory:
schedule.parquet, checkpoints/step=<t>.npz (t = 0, every train.checkpoint_every steps, and the last
step), then _summary.json, which carries the trajectory key. A rerun skips a seed only when its summary
has the current key and its schedule and every checkpoint read back; otherwise the seed is retrained.

With influence.state_memory, an exact sweep's seed also keeps every state (io.states, states.npy) when
they fit the budget, so the sweep skips its replay; over budget it says so and the sweep replays.

Driver side; the task body is runtime.train.train_seed."""

from __future__ import annotations

import pyarrow.parquet as pq

from pipeline import cluster, runtime
from pipeline.io.files import read_json
from pipeline.io.integrity import check_npz
from pipeline.io.layout import RunLayout
from pipeline.results import SeedTraining, TrainResult
from pipeline.stages.context import RunContext


def run(context: RunContext) -> TrainResult:
    """Train every seed that has no valid recorded trajectory; returns every seed's summary, as recorded."""
    layout, settings = context.layout, context.settings
    todo = []
    for seed in settings.train.seeds:
        problem = trajectory_problem(layout, seed, context.trajectory_key)
        if problem is not None:
            if layout.train_summary(seed).exists():
                print(f"[train] seed={seed}: {problem}; retraining")
            todo.append(seed)
    calls = [(settings, context.dataset_ref, s, context.trajectory_key) for s in todo]
    cluster.run_tasks(runtime.train_seed, calls, context.task_options, desc="train (seeds)")
    return TrainResult(
        {str(s): SeedTraining.from_json(read_json(layout.train_summary(s))) for s in settings.train.seeds}
    )


def trajectory_problem(layout: RunLayout, seed: int, key: str) -> str | None:
    """None if seed's trajectory is complete under `key`; else why not (one line)."""
    path = layout.train_summary(seed)
    if not path.exists():
        return "not trained"
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return f"{path.name} unreadable"
    if summary.get("key") != key:
        return "trained under another key"
    try:
        pq.read_table(layout.schedule(seed), page_checksum_verification=True)  # every page against its CRC
    except Exception:
        return f"{layout.schedule(seed).name} missing or unreadable"
    for step in summary.get("checkpoint_steps", []):
        problem = check_npz(layout.checkpoint(seed, step))
        if problem is not None:
            return f"checkpoint step={step}.npz {problem}"
    return None
