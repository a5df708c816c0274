"""The train stage's Ray task: one seed trained functionally and recorded (schedule, checkpoints, kept states,
summary). Runs in workers (imports TensorFlow)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.cluster import worker_bar
from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.io.checkpoints import StateLayout, save_state
from pipeline.io.files import write_json
from pipeline.io.layout import RunLayout
from pipeline.io.states import AUTO, StateWriter, auto_budget, discard_states, parse_size, state_bytes
from pipeline.io.tables import write_schedule
from pipeline.kernels.schedule import checkpoint_steps
from pipeline.kernels.training import as_inputs, as_targets, raise_if_exploded, train
from pipeline.methods import REGISTRY
from pipeline.runtime.recipes import recipe_for, schedule_for, training_batches


def train_seed(settings: Settings, dataset: Dataset, seed: int, key: str) -> dict[str, Any]:
    """Ray task body: train one seed, write its trajectory and summary."""
    layout = RunLayout(settings.output_dir)
    schedule = schedule_for(settings, dataset, seed)
    recipe = recipe_for(settings, dataset, seed)
    stored = checkpoint_steps(schedule.n_steps, settings.train.checkpoint_every)
    state_layout = recipe.state_layout()
    write_schedule(layout.schedule(seed), schedule)
    batches = training_batches(settings, dataset, recipe, schedule)
    x_val = as_inputs(list(dataset.x_val.values()), recipe.dtype)
    y_val = as_targets(dataset.y_val, recipe.task, recipe.dtype)

    io_seconds = 0.0

    def save(step: int, state: Any) -> None:
        nonlocal io_seconds
        began = time.perf_counter()
        save_state(layout.checkpoint(seed, step), state_layout, [np.asarray(t) for t in recipe.flatten(state)])
        io_seconds += time.perf_counter() - began

    initial = recipe.initial_state()
    before = {k: float(v) for k, v in recipe.evaluate(initial, x_val, y_val).items()}
    writer, states = state_writer(settings, layout, seed, state_layout, recipe.state_dtypes(), schedule.n_steps)

    def keep(start: int, segment: list[np.ndarray]) -> None:
        nonlocal io_seconds
        began = time.perf_counter()
        assert writer is not None  # keep is handed to train only with a writer
        writer.write(start, segment)
        io_seconds += time.perf_counter() - began

    bar = worker_bar(schedule.n_steps, f"train seed={seed}", "step")
    began, began_cpu = time.perf_counter(), time.process_time()
    try:
        final = train(recipe, initial, batches, stored, save, progress=bar.update, on_segment=keep if writer else None)
        if writer is not None:
            committing = time.perf_counter()
            writer.commit()  # waits for the last segment's copy
            io_seconds += time.perf_counter() - committing
    finally:
        if writer is not None and not layout.states(seed).exists():
            writer.discard()
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
    bar.close()
    after = {k: float(v) for k, v in recipe.evaluate(final, x_val, y_val).items()}
    raise_if_exploded(
        np.array([after["objective"]]), before["objective"], "validation objective", first_step=schedule.n_steps
    )
    summary = {
        "seed": seed,
        "key": key,
        "n_steps": schedule.n_steps,
        "checkpoint_steps": stored,
        "seconds": round(seconds, 4),
        "compute_seconds": round(seconds - io_seconds, 4),
        "cpu_seconds": round(cpu_seconds, 4),  # process time of training (all threads, I/O included): load-proof
        "val_objective_initial": before["objective"],
        "val_objective": after["objective"],
        "val_loss": after["loss"],
        "val_accuracy": after["accuracy"],
        "states": states,
    }
    write_json(layout.train_summary(seed), summary)
    return summary


def state_writer(
    settings: Settings, layout: RunLayout, seed: int, state_layout: StateLayout, dtypes: list[np.dtype], n_steps: int
) -> tuple[StateWriter | None, dict[str, Any] | None]:
    """(io.states.StateWriter or None, what the summary records about kept states). States are kept only
    for an exact sweep (trajectory, truncated, per-query) with influence.state_memory, within its budget: a size,
    or with `auto` a quarter of the memory available now and of the free disk under output.dir (io.states.auto_budget;
    the summary records both figures)."""
    influence = settings.influence
    discard_states(layout.states(seed))  # the states of an earlier training must never be read
    if influence.state_memory is None or not (REGISTRY[influence.method].sweep or influence.queries != "mean"):
        return None, None
    need = n_steps * state_bytes(state_layout, dtypes)
    measured: dict[str, Any] = {}
    if influence.state_memory == AUTO:
        budget, memory, disk = auto_budget(layout.root)
        measured = {"memory": memory, "disk": disk}
        within = (
            f"influence.state_memory=auto (a quarter of {_mib(memory)} available memory and {_mib(disk)} free disk: "
            f"{_mib(budget)})"
        )
    else:
        parsed = parse_size(influence.state_memory)
        assert parsed is not None  # influence.state_memory was validated as a size
        budget, within = parsed, f"influence.state_memory={influence.state_memory}"
    if need > budget:
        print(
            f"[train] seed={seed}: every state needs {need / 2**20:.0f} MiB, over {within}; the sweep will replay "
            "from checkpoints"
        )
        return None, {"kept": False, "bytes": need, "budget": budget, **measured}
    return StateWriter(layout.states(seed), state_layout, dtypes, n_steps), {
        "kept": True,
        "bytes": need,
        "budget": budget,
        **measured,
    }


def _mib(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**20:.0f} MiB"
