"""Benchmark of per-query attribution: how Q objectives carried by one reverse sweep
(ReverseSweep.run_queries) compare with one objective, and which way of taking the Q vector-Jacobian
products of a step is faster:

- batched: tf.vectorized_map over the cotangents through one persistent tape (what the kernel does);
- loop: a Python loop over the Q cotangents on the same persistent tape (Q backward graphs, stacked).

    python scripts/bench_queries.py            # digits, MLP 64-64-10, SGD, 10 epochs, float32
    python scripts/bench_queries.py --quick    # 2 epochs, Q up to 16

Kernels only (checkpoints in memory, no Ray, no disk); each time is the best of `--repeats` runs after a
warm-up call, whose time is reported as trace seconds. Writes docs/benchmarks/queries.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "benchmarks"


def loop_sweep(recipe):
    """A ReverseSweep whose Q VJPs are a Python loop over the persistent tape (the alternative measured)."""
    import tensorflow as tf

    from pipeline.kernels.trajectory import ReverseSweep

    class LoopSweep(ReverseSweep):
        def _vjps(self, tape, target, sources, cotangents):
            q = tf.nest.flatten(cotangents)[0].shape[0]
            per_query = [
                tape.gradient(target, sources, output_gradients=tf.nest.map_structure(lambda c: c[i], cotangents), unconnected_gradients=tf.UnconnectedGradients.ZERO)
                for i in range(q)
            ]
            return tf.nest.map_structure(lambda *g: tf.stack([tf.convert_to_tensor(x) for x in g]), *per_query)

    return LoopSweep(recipe)


def _best(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, best of `repeats` later calls)."""
    began = time.perf_counter()
    fn()
    first = time.perf_counter() - began
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return first, min(times)


def measure(epochs: int, sizes: list[int], loop_sizes: list[int], repeats: int) -> dict:
    import tensorflow as tf

    from pipeline.config import DataSettings, ModelSettings, OptimizerSettings
    from pipeline.data import load_dataset
    from pipeline.kernels.schedule import checkpoint_steps, make_schedule
    from pipeline.kernels.task import make_task
    from pipeline.kernels.training import Recipe, as_inputs, as_targets, make_batches, train
    from pipeline.kernels.trajectory import ReverseSweep
    from pipeline.models import build_model
    from pipeline.stages.recipes import functional_optimizer

    data = load_dataset(DataSettings())
    task = make_task("classification", "cross_entropy", "cross_entropy")
    model = build_model(ModelSettings(hidden=(64,)), data.input_shapes, "classification", data.num_classes, "float32", seed=0)
    recipe = Recipe(model, functional_optimizer(OptimizerSettings(name="sgd", lr=0.1)), task)
    schedule = make_schedule(data.n_train, 32, epochs, shuffle=True, seed=0, lr=0.1)
    batches = make_batches(data.x_train["x"], data.y_train, schedule, "float32", task)
    stored, steps = {}, checkpoint_steps(schedule.n_steps, None)
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__)

    def validation(q: int):
        rows = np.arange(q)
        return as_inputs(data.x_val["x"][rows], "float32"), as_targets(data.y_val[rows], task, "float32"), tf.eye(q, dtype=tf.float32)

    x_val, y_val = as_inputs(data.x_val["x"], "float32"), as_targets(data.y_val, task, "float32")
    sweep = ReverseSweep(recipe)
    trace, mean_seconds = _best(lambda: sweep.run(stored, steps, batches, x_val, y_val), repeats)
    rows = [{"variant": "mean (run)", "q": 1, "seconds": round(mean_seconds, 3), "trace_seconds": round(trace - mean_seconds, 2)}]
    print(json.dumps(rows[-1]), flush=True)
    for variant, make, qs in (("batched", ReverseSweep, sizes), ("loop", loop_sweep, loop_sizes)):
        for q in qs:
            sweep, (xq, yq, weights) = make(recipe), validation(q)
            first, seconds = _best(lambda: sweep.run_queries(stored, steps, batches, xq, yq, weights), repeats)
            rows.append({"variant": variant, "q": q, "seconds": round(seconds, 3), "trace_seconds": round(first - seconds, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return {"n_train": data.n_train, "steps": schedule.n_steps, "k": steps[1] - steps[0], "rows": rows}


def machine() -> dict:
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_intra_op_threads": os.environ["TF_NUM_INTRAOP_THREADS"],
        "date": time.strftime("%Y-%m-%d"),
    }


def write_markdown(results: dict, path: Path) -> None:
    m, r = results["machine"], results["case"]
    one = next(row["seconds"] for row in r["rows"] if row["variant"] == "batched" and row["q"] == 1)
    lines = [
        "# Per-query attribution benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, TensorFlow {m['tensorflow']} "
        f"({m['tf_intra_op_threads']} intra-op threads), {m['date']}. Reproduce: `{results['command']}`.",
        "",
        f"digits (N = {r['n_train']}), MLP 64-64-10, SGD, float32, T = {r['steps']} steps, k = {r['k']}; no input gradients. "
        "Q per-sample queries in one sweep; time = best of the warm runs, trace = first call minus that.",
        "",
        "| variant | Q | sweep s | s per query | vs. batched Q=1 | trace s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['variant']} | {row['q']} | {row['seconds']} | {row['seconds'] / row['q']:.4f} | {row['seconds'] / one:.2f}x | {row['trace_seconds']} |"
        )
    lines += ["", results["reading"], ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        case = measure(2, [1, 4, 16], [4, 16], args.repeats)
    else:
        case = measure(10, [1, 8, 64], [8, 64], args.repeats)
    by = {(row["variant"], row["q"]): row["seconds"] for row in case["rows"]}
    q_max = max(q for v, q in by if v == "loop")
    reading = (
        f"Reading: at Q = {q_max} the batched VJP takes {by[('batched', q_max)]}s and the loop {by[('loop', q_max)]}s "
        f"({by[('loop', q_max)] / by[('batched', q_max)]:.2f}x); one sweep with Q = {q_max} queries costs "
        f"{by[('batched', q_max)] / by[('batched', 1)]:.1f}x the sweep of one query, against {q_max}x for separate sweeps. "
        "The replay and the recomputed step are shared; the rest grows with Q. This machine is shared and noisy: compare ratios within one run."
    )
    print(reading)
    results = {"command": "python scripts/bench_queries.py" + (" --quick" if args.quick else ""), "machine": machine(), "case": case, "reading": reading}
    suffix = "_quick" if args.quick else ""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"queries{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, OUT / f"queries{suffix}.md")


if __name__ == "__main__":
    main()
