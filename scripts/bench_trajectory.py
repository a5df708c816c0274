"""Benchmark of the exact trajectory method: training time, reverse-sweep times (replaying segments from
checkpoints, or reading every state kept from training), their ratios, and the peak memory of the sweep
for several checkpoint intervals k and for kept states.

    python scripts/bench_trajectory.py            # digits MLP + synthetic 50,000 x 784, MLP 784-256-10
    python scripts/bench_trajectory.py --quick    # smaller synthetic set, for a smoke run
    python scripts/bench_trajectory.py --input-grad [--n N]   # only the dE/dx section (influence.input_grad)

--input-grad measures what dE/dx costs on the synthetic case: the mean sweep with and without input gradients
(replayed and with kept states) over training, the reverse step alone with x watched and not on the same state,
the products with the first layer's weight per step (counted in the traced graphs), each such product alone, and
the O(N x d) accumulator. It adds the "input_grad" section to trajectory.json and .md and keeps every other figure.

Times are the best of three interleaved rounds of the compiled loops after a warm-up call (tracing reported
separately); kernels only, no Ray: checkpoints are kept in memory, kept states in RAM or in a states.npy
memory map in a temporary directory. Peak memory is measured per k in a fresh subprocess by sampling the
resident set size during the sweep, minus the size just before it. Writes docs/benchmarks/trajectory.json
and docs/benchmarks/trajectory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "benchmarks"


def _problem(name: str, n_synthetic: int, optimizer_name: str):
    """(dataset, recipe, schedule, batches, (x_val, y_val)) of one benchmark case."""
    from pipeline.config import DataSettings, ModelSettings, OptimizerSettings
    from pipeline.data import load_dataset
    from pipeline.kernels.schedule import make_schedule
    from pipeline.kernels.task import make_task
    from pipeline.kernels.training import Recipe, as_inputs, as_targets, make_batches
    from pipeline.models import build_model
    from pipeline.runtime.recipes import functional_optimizer

    if name == "digits":
        data = load_dataset(DataSettings())
        model, batch_size, epochs = ModelSettings(hidden=(64,)), 32, 10
    else:
        data = load_dataset(
            DataSettings(
                source="synthetic", n_samples=int(n_synthetic / 0.8) + 1, n_features=784, n_classes=10, n_informative=50
            )
        )
        model, batch_size, epochs = ModelSettings(hidden=(256,), activation="relu"), 128, 1
    lr = {"sgd": 0.1, "adam": 0.001}[optimizer_name]
    optimizer = functional_optimizer(OptimizerSettings(name=optimizer_name, lr=lr))
    task = make_task("classification", "cross_entropy", "cross_entropy")
    recipe = Recipe(
        build_model(model, data.input_shapes, "classification", data.num_classes, "float32", seed=0), optimizer, task
    )
    schedule = make_schedule(data.n_train, batch_size, epochs, shuffle=True, seed=0, lr=lr)
    validation = (as_inputs(list(data.x_val.values()), "float32"), as_targets(data.y_val, task, "float32"))
    return (
        data,
        recipe,
        schedule,
        make_batches(list(data.x_train.values()), data.y_train, schedule, "float32", task),
        validation,
    )


def _timed(fn):
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def _cpu(fn) -> float:
    """Process CPU seconds of fn() (every thread): what the sweep costs, less exposed than wall time to the other jobs
    of a loaded machine."""
    began = time.process_time()
    fn()
    return time.process_time() - began


def time_case(name: str, n_synthetic: int, optimizer_name: str, rounds: int = 3) -> dict:
    """Warm times (best of `rounds` interleaved rounds) of training and of the sweeps, with and without
    the replay, for the mean objective (with dE/dx) and for one query (Q = 1, no dE/dx)."""
    import tempfile

    import tensorflow as tf

    from pipeline.io.states import StateWriter, open_states, state_bytes
    from pipeline.kernels.schedule import checkpoint_steps
    from pipeline.kernels.training import train
    from pipeline.kernels.trajectory import ReverseSweep

    data, recipe, schedule, batches, validation = _problem(name, n_synthetic, optimizer_name)
    steps = checkpoint_steps(schedule.n_steps, None)
    stored: dict = {}
    kept: dict = {}
    layout = recipe.state_layout()
    dtypes = recipe.state_dtypes()
    spill = Path(tempfile.mkdtemp()) / "states.npy"

    def train_to_file() -> None:
        writer = StateWriter(spill, layout, dtypes, schedule.n_steps)
        train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__, on_segment=writer.write)
        writer.commit()

    every_state_ram = lambda start, stop: kept[start]  # noqa: E731
    sweep = ReverseSweep(recipe)
    x_val, y_val = validation
    one_query = tf.constant(
        np.full((1, int(y_val.shape[0])), 1.0 / int(y_val.shape[0])), recipe.dtype
    )  # E_1 = the mean objective
    runs = {
        "train": lambda: train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__),
        "train_keep_ram": lambda: train(
            recipe, recipe.initial_state(), batches, steps, stored.__setitem__, on_segment=kept.__setitem__
        ),
        "train_keep_file": train_to_file,
        "sweep_replay": lambda: sweep.run(stored, steps, batches, *validation),
        "sweep_kept": lambda: sweep.run(stored, steps, batches, *validation, every_state=every_state_ram),
        "query_replay": lambda: sweep.run_queries(stored, steps, batches, x_val, y_val, one_query),
        "query_kept": lambda: sweep.run_queries(
            stored, steps, batches, x_val, y_val, one_query, every_state=every_state_ram
        ),
        "query_kept_file": lambda: sweep.run_queries(
            stored,
            steps,
            batches,
            x_val,
            y_val,
            one_query,
            every_state=open_states(spill, layout, dtypes, schedule.n_steps)[0],
        ),
    }
    cold = {key: _timed(run)[1] for key, run in runs.items()}  # traces every compiled loop once
    warm = {key: float("inf") for key in runs}
    for _ in range(rounds):  # interleaved: a slow spell of the shared machine hits every variant alike
        for key, run in runs.items():
            warm[key] = min(warm[key], _timed(run)[1])
    kept_state_error = sweep.run(stored, steps, batches, *validation, every_state=every_state_ram).replay_error
    spill.unlink()
    spill.parent.rmdir()
    n_params = sum(int(v.shape.num_elements()) for v in recipe.initial_state().trainable)
    one_state = state_bytes(layout, dtypes)
    train_seconds = warm["train"]
    return {
        "case": name,
        "optimizer": optimizer_name,
        "n_train": data.n_train,
        "n_features": int(sum(np.prod(shape) for shape in data.input_shapes.values())),
        "n_params": n_params,
        "steps": schedule.n_steps,
        "k": steps[1] - steps[0],
        "state_mib": round(one_state / 2**20, 3),
        "kept_states_mib": round(schedule.n_steps * one_state / 2**20, 1),
        "seconds": {key: round(value, 3) for key, value in warm.items()},
        "over_train": {key: round(value / train_seconds, 2) for key, value in warm.items() if key != "train"},
        "trace_seconds": {key: round(cold[key] - warm[key], 2) for key in ("train", "sweep_replay", "query_replay")},
        "kept_state_error": kept_state_error,
    }


def _products(graph, batch: int, wide: int) -> dict:
    """MatMul ops of a traced graph: their number, MFLOP per call (batch dimensions taken as `batch`) and how many
    are products with the first layer's weight (the largest: `wide` multiply-adds per sample)."""
    count, flops, widest = 0, 0, 0
    for op in graph.get_operations():
        if op.type != "MatMul":
            continue
        a, b = ([batch if d is None else int(d) for d in t.shape] for t in op.inputs[:2])
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
        n = b[0] if op.get_attr("transpose_b") else b[1]
        count, flops = count + 1, flops + 2 * m * k * n
        widest += m * k * n == batch * wide
    return {"matmuls": count, "mflop": round(flops / 1e6, 1), "first_layer_products": widest}


def _op_ms(run, calls: int) -> dict:
    """ms per call of every TensorFlow op that `run()` executes (tf.profiler trace of `calls` calls, read from its
    XPlane: events named "<op name>:<op type>" on the host's compute threads)."""
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    folder = tempfile.mkdtemp()
    tf.profiler.experimental.start(folder)
    for _ in range(calls):
        out = run()
    out[1].numpy()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))[-1]).read_bytes())
    totals: dict = {}
    for plane in (p for p in space.planes if p.name == "/host:CPU"):
        for line in (line for line in plane.lines if line.name.startswith("tf_")):
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name:  # an op, not the executor's own bookkeeping
                    totals[name] = totals.get(name, 0.0) + event.duration_ps / 1e9 / calls
    shutil.rmtree(folder, ignore_errors=True)
    return totals


def time_input_grad(n_synthetic: int, optimizer_name: str, rounds: int = 7) -> dict:
    """dE/dx on the synthetic case: warm times of training and of the mean sweep with and without input gradients
    (replay and kept states; influence.input_grad), the reverse step alone on one state, the first-layer products
    per step in the traced graphs, each such product alone, and the fixed O(N x d) cost of the accumulator. Times
    are process CPU seconds of `rounds` interleaved rounds: the least of them, and ratios as the median over rounds of
    the ratio within a round; the sweeps' wall seconds are kept too."""
    import tensorflow as tf

    from pipeline.kernels.schedule import checkpoint_steps
    from pipeline.kernels.training import train
    from pipeline.kernels.trajectory import ReverseSweep

    data, recipe, schedule, batches, validation = _problem("synthetic", n_synthetic, optimizer_name)
    steps = checkpoint_steps(schedule.n_steps, None)
    stored: dict = {}
    kept: dict = {}
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__, on_segment=kept.__setitem__)
    every_state = lambda start, stop: kept[start]  # noqa: E731
    sweep = ReverseSweep(recipe)

    @tf.function(reduce_retracing=True)
    def discarding_segment(states, adjoint, start, influence):
        """The sweep's segment with dE/dx_B computed in every step (x watched) but accumulated nowhere."""
        sink = tf.zeros((), recipe.dtype)
        for i in tf.range(tf.shape(states[0])[0] - 1, -1, -1):
            state_i = recipe.unflatten([a[i] for a in states])
            adjoint, grad_eps, grad_x, ids = sweep._reverse_step(state_i, adjoint, batches, start + i, True)
            influence.scatter_add(tf.IndexedSlices(grad_eps, ids))
            sink += grad_x[0][0, 0]  # one entry, so that dE/dx_B is computed
        return adjoint

    def kept_dx_discarded() -> None:
        _, adjoint = sweep._objective_grad(stored[steps[-1]], *validation)
        influence = tf.Variable(tf.zeros(batches.eps.shape, recipe.dtype))
        segment = lambda states, adj, start: discarding_segment(states, adj, tf.constant(start), influence)  # noqa: E731
        sweep._over_segments(stored, steps, 0, batches, every_state, adjoint, segment, influence, None)

    runs = {
        "train": lambda: train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__),
        "replay_dx": lambda: sweep.run(stored, steps, batches, *validation),
        "replay": lambda: sweep.run(stored, steps, batches, *validation, input_grad=False),
        "kept_dx": lambda: sweep.run(stored, steps, batches, *validation, every_state=every_state),
        "kept_dx_discarded": kept_dx_discarded,
        "kept": lambda: sweep.run(stored, steps, batches, *validation, every_state=every_state, input_grad=False),
    }
    results = {key: _timed(run)[0] for key, run in runs.items()}  # traces every compiled loop once
    identical = all(
        np.array_equal(results[f"{way}_dx"].influence, results[way].influence) for way in ("replay", "kept")
    )
    del results
    cpu: dict = {key: [] for key in runs}
    wall: dict = {key: [] for key in runs}
    for _ in range(rounds):  # interleaved: a slow spell of the shared machine hits every variant of a round alike
        for key, run in runs.items():
            began = time.perf_counter()
            cpu[key].append(_cpu(run))
            wall[key].append(time.perf_counter() - began)

    def over_train(times: dict) -> dict:
        """key -> the median over rounds of its time over training's in the same round."""
        return {
            key: round(float(np.median(np.array(times[key]) / np.array(times["train"]))), 2)
            for key in times
            if key != "train"
        }

    # the reverse step alone, x watched or not, on the same stored state (the last segment's first)
    start = steps[-2]
    state = recipe.unflatten([tf.constant(a[0]) for a in kept[start]])
    adjoint = recipe.differentiable(state)
    t = tf.constant(start)
    batch = int(schedule.batch(start).size)

    def step_ms(dx: bool, calls: int = 50) -> float:
        def repeated() -> None:
            for _ in range(calls):
                out = sweep._reverse_step(state, adjoint, batches, t, dx)
            out[1].numpy()

        return _cpu(repeated) / calls * 1e3

    step: dict = {"with_dx": [], "without_dx": []}
    for dx in (True, False):
        step_ms(dx, 2)  # traced already; warms the caches
    for _ in range(rounds + 2):
        for dx, key in ((True, "with_dx"), (False, "without_dx")):
            step[key].append(step_ms(dx))
    step_ratio = float(np.median(np.array(step["with_dx"]) / np.array(step["without_dx"])))

    # per op, from tf.profiler traces of the same calls (the least over interleaved rounds, op by op): what dE/dx adds
    ops: dict = {True: {}, False: {}}
    for _ in range(rounds):
        for dx in (True, False):
            for name, ms in _op_ms(lambda dx=dx: sweep._reverse_step(state, adjoint, batches, t, dx), 20).items():
                ops[dx][name] = min(ops[dx].get(name, float("inf")), ms)
    added = {
        name: round(ms, 3) for name, ms in sorted(ops[True].items(), key=lambda i: -i[1]) if name not in ops[False]
    }
    op_ms = {
        "total_with_dx": round(sum(ops[True].values()), 3),
        "total_without_dx": round(sum(ops[False].values()), 3),
        "only_with_dx": added,
    }

    # products counted in the traced graphs: one training step and one reverse step with and without dE/dx
    weight = max(recipe.initial_state().trainable, key=lambda v: int(v.shape.num_elements()))
    d_in, d_out = (int(n) for n in weight.shape)
    x, y, eps = (tf.gather(a, schedule.batch(start)) for a in (batches.x[0], batches.y, batches.eps))
    one_step = tf.function(lambda s, x, y, e: recipe.step(s, (x,), y, e, batches.lr[start], t))
    products = {
        "train": _products(one_step.get_concrete_function(state, x, y, eps).graph, batch, d_in * d_out),
        **{
            key: _products(
                sweep._reverse_step.get_concrete_function(state, adjoint, batches, t, dx).graph, batch, d_in * d_out
            )
            for dx, key in ((False, "reverse"), (True, "reverse_dx"))
        },
    }

    # each first-layer product alone ([batch, d_in] x [d_in, d_out] and its transposes), 200 calls per compiled loop
    xb, w = tf.random.normal((batch, d_in)), tf.random.normal((d_in, d_out))
    hb, aw = tf.random.normal((batch, d_out)), tf.random.normal((d_in, d_out))
    shapes = {
        "x W1 (forward)": (xb, w, False, False),
        "x^T dh (dL/dW1: training)": (xb, hb, True, False),
        "x a_W1 (second order, into dh)": (xb, aw, False, False),
        "dh W1^T (dE/dx: forward path)": (hb, w, False, True),
        "dh a_W1^T (dE/dx: through the backward pass)": (hb, aw, False, True),
    }

    @tf.function
    def repeat(a, b, ta, tb):
        total = tf.zeros((), a.dtype)
        for _ in tf.range(200):
            total += tf.matmul(a, b, transpose_a=ta, transpose_b=tb)[0, 0]
        return total

    def product(args: tuple) -> float:
        return _cpu(lambda: repeat(*args).numpy()) / 200 * 1e3

    product_ms = {name: float("inf") for name in shapes}
    for args in shapes.values():
        product(args)  # traces
    for _ in range(rounds + 2):
        for name, args in shapes.items():
            product_ms[name] = min(product_ms[name], product(args))

    # the accumulator: N x d zeros made, and read back to NumPy, once per sweep; one row-wise scatter per step
    def accumulator() -> object:
        return tf.Variable(tf.zeros(batches.x[0].shape, recipe.dtype)).numpy()

    accumulator()
    accumulator_seconds = min(_cpu(accumulator) for _ in range(rounds))
    full = [schedule.batch(s) for s in range(schedule.n_steps) if schedule.batch(s).size == batch]
    rows = tf.constant(np.stack(full))
    grad = tf.random.normal((batch, *batches.x[0].shape[1:]), dtype=recipe.dtype)
    target = tf.Variable(tf.zeros(batches.x[0].shape, recipe.dtype))

    @tf.function
    def scatter(rows):
        for i in tf.range(tf.shape(rows)[0]):
            target.scatter_add(tf.IndexedSlices(grad, rows[i]))

    scatter(rows)
    scatter_ms = min(_cpu(lambda: (scatter(rows), target.value().numpy()[0, 0])) for _ in range(rounds))
    scatter_ms = scatter_ms / int(rows.shape[0]) * 1e3
    train_seconds = min(cpu["train"])
    return {
        "case": "synthetic",
        "optimizer": optimizer_name,
        "n_train": data.n_train,
        "n_features": d_in,
        "first_layer": [d_in, d_out],
        "batch": batch,
        "steps": schedule.n_steps,
        "k": steps[1] - steps[0],
        "seconds": {key: round(min(values), 3) for key, values in cpu.items()},
        "over_train": over_train(cpu),
        "rounds": {key: [round(v, 3) for v in values] for key, values in cpu.items()},
        "wall_seconds": {key: round(min(values), 3) for key, values in wall.items()},
        "wall_over_train": over_train(wall),
        "influence_bit_identical": identical,
        "train_step_ms": round(train_seconds / schedule.n_steps * 1e3, 3),
        "reverse_step_ms": {key: round(min(values), 3) for key, values in step.items()},
        "reverse_step_ratio": round(step_ratio, 2),
        "op_ms": op_ms,
        "products": products,
        "product_ms": {key: round(value, 3) for key, value in product_ms.items()},
        "accumulator_seconds": round(accumulator_seconds, 3),
        "scatter_ms_per_step": round(scatter_ms, 3),
    }


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_case(k: int, n_synthetic: int) -> dict:
    """Run in a subprocess: peak RSS growth of training + sweep with checkpoints every k steps kept in
    memory (Adam), over the size after a warm-up that traced both compiled loops. k = 0: checkpoints at
    the default interval and every state kept from training (influence.state_memory), no replay."""
    from pipeline.kernels.schedule import checkpoint_steps
    from pipeline.kernels.training import train
    from pipeline.kernels.trajectory import ReverseSweep

    data, recipe, schedule, batches, validation = _problem("synthetic", n_synthetic, "adam")
    steps = checkpoint_steps(schedule.n_steps, k or None)
    sweep = ReverseSweep(recipe)
    warm: dict = {}  # one step: traces both loops (segment length is a tensor) at almost no memory
    warm_kept: dict = {}
    train(
        recipe,
        recipe.initial_state(),
        batches,
        [0, 1],
        warm.__setitem__,
        on_segment=warm_kept.__setitem__ if k == 0 else None,
    )
    sweep.run(warm, [0, 1], batches, *validation, every_state=(lambda a, b: warm_kept[a]) if k == 0 else None)
    state_mib = sum(int(t.shape.num_elements()) * 4 for t in recipe.flatten(warm[0])) / 2**20
    del warm
    baseline, peak, running = _rss_mib(), [0.0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stored: dict = {}
    kept: dict = {}
    train(
        recipe,
        recipe.initial_state(),
        batches,
        steps,
        stored.__setitem__,
        on_segment=kept.__setitem__ if k == 0 else None,
    )
    every_state = (lambda start, stop: kept[start]) if k == 0 else None
    _, seconds = _timed(lambda: sweep.run(stored, steps, batches, *validation, every_state=every_state))
    running[0] = False
    sampler.join()
    segment = max(b - a for a, b in zip(steps[:-1], steps[1:]))
    held = len(steps) + (schedule.n_steps if k == 0 else segment)  # kept states replace the replayed segment
    return {
        "k": "kept" if k == 0 else k,
        "steps": schedule.n_steps,
        "stored_checkpoints": len(steps),
        "segment_states": schedule.n_steps if k == 0 else segment,
        "state_mib": round(state_mib, 2),
        "model_states_mib": round(held * state_mib, 1),
        "peak_rss_growth_mib": round(peak[0] - baseline, 1),
        "sweep_seconds": round(seconds, 2),
    }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import tensorflow as tf

    mem = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**20, 1),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_intra_op_threads": os.environ["TF_NUM_INTRAOP_THREADS"],
        "date": time.strftime("%Y-%m-%d"),
    }


def _kept_text(results: dict) -> str:
    return ", ".join(
        f"{r['case']} {r['optimizer']}: {r['steps']} x {r['state_mib']} MiB = {r['kept_states_mib']} MiB"
        for r in results["timing"]
    )


def write_markdown(results: dict, path: Path) -> None:
    m = results["machine"]
    lines = [
        "# Trajectory benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, TensorFlow "
        f"{m['tensorflow']} "
        f"({m['tf_intra_op_threads']} intra-op threads), {m['date']}. Reproduce: `{results['command']}`.",
        "",
        "## Time: reverse sweeps vs. training (float32, warm compiled loops, k = ceil(sqrt(T)))",
        "",
        "Every figure is the best of three interleaved rounds, divided by the training time of the same round set. "
        "*replay*: each segment is recomputed from its checkpoint before its reverse pass (the default). *kept*: every "
        "state was kept from training (influence.state_memory), in RAM (a dict) or in the pipeline's states.npy memory "
        "map (*file*), and the sweep reads them. *mean*: the one objective E with dE/dx_i for every sample (stage "
        "score); "
        "*one query*: run_queries with Q = 1 and no dE/dx (a query batch of influence.queries).",
        "",
        "| case | optimizer | N | d | params | T | k | train s | keeping states: RAM, file | mean: replay | mean: "
        "kept | one query: replay | one query: kept | one query: kept, file |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["timing"]:
        o = r["over_train"]
        lines.append(
            f"| {r['case']} | {r['optimizer']} | {r['n_train']} | {r['n_features']} | {r['n_params']} | {r['steps']} "
            f"| {r['k']} | "
            f"{r['seconds']['train']} | {o['train_keep_ram']}x, {o['train_keep_file']}x | {o['sweep_replay']}x | "
            f"{o['sweep_kept']}x | "
            f"{o['query_replay']}x | **{o['query_kept']}x** | {o['query_kept_file']}x |"
        )
    lines += [
        "",
        "Target: one query's sweep at most 3x training on the 50,000 x 784 case. Reading the numbers: training is a "
        "forward and a backward pass per step, two products with the wide first layer. A reverse step recomputes that "
        "step inside a tape and back-propagates through it: two more products for the second-order backward, and two "
        "more for dE/dx_B, which only the mean sweep computes. By that count a kept-state sweep costs about 2x "
        "training "
        "for one query (measured: close to it) and 3x for the mean with input gradients, and the replay adds 1x. The "
        "mean sweep measures well above its count: dE/dx_B roughly doubles a sweep on the wide case instead of adding "
        "1x training (explained in the dE/dx section below, which also measures the mean sweep without it). Tiny "
        "models (digits) are "
        "dominated by per-op overhead instead. Keeping states costs training the copy of each state (RAM) or its write "
        "to states.npy (file: a background copy through the page cache), paid once per seed and saved again by every "
        "sweep of it (each query batch is one). Runs on this shared machine vary by up to 40% from one invocation to "
        "the next; the ratios are measured within one run.",
        "",
        "Memory rule: kept states take T x state bytes (kept_states_mib in trajectory.json; "
        + _kept_text(results)
        + "); "
        "the run keeps them when that fits influence.state_memory, and otherwise replays from checkpoints.",
        "",
        "## Memory of the sweep vs. checkpoint interval k (synthetic, Adam, one subprocess per k)",
        "",
        "Held model states = stored checkpoints (T/k + 1) + one segment (k); each state is weights + Adam m and v. "
        "Row *kept*: checkpoints at the default k plus every state kept from training (in RAM here; the pipeline "
        "maps states.npy, which the page cache holds where memory allows), and no replay. "
        "The peak also holds a fixed part that does not depend on k: the dE/dx accumulator and its NumPy copy "
        "(2 x N x d x 4 bytes = "
        + str(round(2 * results["timing"][-1]["n_train"] * results["timing"][-1]["n_features"] * 4 / 2**20))
        + " MiB here).",
        "",
        "| k | checkpoints | segment states | state MiB | held states MiB | peak RSS growth MiB | sweep s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["memory"]:
        lines.append(
            f"| {r['k']} | {r['stored_checkpoints']} | {r['segment_states']} | {r['state_mib']} | "
            f"{r['model_states_mib']} | "
            f"{r['peak_rss_growth_mib']} | {r['sweep_seconds']} |"
        )
    if "input_grad" in results:
        lines += ["", *input_grad_markdown(results["input_grad"])]
    path.write_text("\n".join(lines) + "\n")


def input_grad_markdown(section: dict) -> list[str]:
    """The dE/dx section: its tables from the rows of time_input_grad and the explanation, with their numbers."""
    m, rows = section["machine"], section["rows"]
    lines = [
        "## dE/dx: what it costs (influence.input_grad)",
        "",
        f"Measured {m['date']} on the same machine, loaded by two other jobs, so every time here is process CPU "
        "time (all threads), less exposed to them than wall time; ratios are the median over seven interleaved rounds "
        "of the ratio within a round, seconds the least of the rounds "
        f"(trajectory.json keeps the wall seconds too); ratios within one run matter. `{section['command']}`. The "
        "mean sweep (`ReverseSweep.run`) with dE/dx_i (*dx*, influence.input_grad=true, the default) and without it "
        "(input_grad=false: x is never watched, no N x d accumulator), replayed and with kept states, over the "
        "training time of the same run; the influence is bit-identical either way (*identical*). *dx computed, not "
        "accumulated*: the kept-state sweep with x watched in every step but dE/dx_B "
        "added nowhere (no N x d accumulator; a variant of the segment loop in this script), which splits the cost of "
        "dE/dx into computing it and accumulating it.",
        "",
        "| optimizer | N | d | T | train CPU s | replay: dx | replay | kept: dx | kept: dx computed, not accumulated "
        "| kept | dx / no dx (kept) | identical |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        o = r["over_train"]
        lines.append(
            f"| {r['optimizer']} | {r['n_train']} | {r['n_features']} | {r['steps']} | {r['seconds']['train']} | "
            f"{o['replay_dx']}x | {o['replay']}x | {o['kept_dx']}x | {o['kept_dx_discarded']}x | **{o['kept']}x** | "
            f"{round(o['kept_dx'] / o['kept'], 2)} | {r['influence_bit_identical']} |"
        )
    lines += [
        "",
        "Per step, on one stored state (batch of 128; *products*: MatMul ops in the traced graph, and among them "
        "the products with the first layer's 784 x 256 weight; MFLOP of all MatMuls per step):",
        "",
        "| optimizer | training step ms | reverse step ms | reverse step with dx ms | ratio | products: training | "
        "reverse | reverse with dx |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        step = r["reverse_step_ms"]
        counts = [
            f"{c['first_layer_products']} of {c['matmuls']} ({c['mflop']} MFLOP)"
            for c in (r["products"][key] for key in ("train", "reverse", "reverse_dx"))
        ]
        lines.append(
            f"| {r['optimizer']} | {r['train_step_ms']} | {step['without_dx']} | {step['with_dx']} | "
            f"{r['reverse_step_ratio']} | {' | '.join(counts)} |"
        )
    first = rows[0]
    ops = first["op_ms"]
    lines += [
        "",
        f"Per op ({first['optimizer']} run; tf.profiler traces of the same reverse step, ms per step, the least of "
        "interleaved rounds op by op): the ops summed, and the ops that only the step with dE/dx runs.",
        "",
        "| op | ms |",
        "| --- | --- |",
        f"| all ops, without dx | {ops['total_without_dx']} |",
        f"| all ops, with dx | {ops['total_with_dx']} |",
        *(f"| only with dx: `{name}` | {ms} |" for name, ms in ops["only_with_dx"].items()),
    ]
    lines += [
        "",
        "Each first-layer product alone ([128, 784] x [784, 256] and its transposes, ms per product, "
        + first["optimizer"]
        + " run), and the fixed cost of the dE/dx accumulator:",
        "",
        "| product | ms |",
        "| --- | --- |",
        *(f"| {name} | {ms} |" for name, ms in first["product_ms"].items()),
        f"| N x d accumulator: zeros, variable, NumPy copy (once per sweep) | {first['accumulator_seconds'] * 1e3:.0f} "
        "|",
        f"| row-wise scatter of one step's dE/dx_B into it (per step) | {first['scatter_ms_per_step']} |",
        "",
        *_input_grad_explanation(rows),
    ]
    return lines


def _input_grad_explanation(rows: list[dict]) -> list[str]:
    """Why dE/dx about doubles the mean sweep, in a few sentences with this run's numbers (its first row)."""
    r = rows[0]
    p, o, pm, step = r["products"], r["over_train"], r["product_ms"], r["reverse_step_ms"]
    forward, weight_grad, _, to_x, to_x_second = pm.values()
    train_pair, extra = forward + weight_grad, to_x + to_x_second
    fixed = r["accumulator_seconds"] + r["scatter_ms_per_step"] * r["steps"] / 1e3
    compute, accumulate = o["kept_dx_discarded"] - o["kept"], o["kept_dx"] - o["kept_dx_discarded"]
    size = f"{r['n_train'] * r['n_features'] * 4 / 2**20:.0f} MiB"
    slower = (
        ": transposed-weight products writing [128, 784] are the slower form here"
        if min(to_x, to_x_second) > forward
        else ""
    )
    return [
        f"Why dE/dx about doubles the mean sweep ({r['optimizer']}, kept states: {o['kept']}x -> {o['kept_dx']}x "
        f"training; replay {o['replay']}x -> {o['replay_dx']}x) instead of adding the counted 1x training. The "
        f"hypothesis holds for computing it: training never back-propagates into the input layer (x is not a "
        "variable), so neither training nor the reverse step without dE/dx multiplies by the transposed first-layer "
        f"weight. The traced graphs hold {p['train']['first_layer_products']} products with the 784 x 256 weight per "
        f"training step (x W1, x^T dh) and {p['reverse']['first_layer_products']} per reverse step (those two "
        "recomputed, then x a_W1 and x^T a_h for the second-order VJP); with dE/dx the VJP also needs dh W1^T on the "
        f"forward path and dh a_W1^T through the backward pass: {p['reverse_dx']['first_layer_products']} products, "
        f"{p['reverse_dx']['mflop']} against {p['reverse']['mflop']} MFLOP per step, +50%, which is the counted 1x "
        f"training. Measured: computing dE/dx_B and discarding it adds {compute:.2f}x training ({o['kept']}x -> "
        f"{o['kept_dx_discarded']}x); on one state the step goes from {step['without_dx']} to {step['with_dx']} ms "
        f"({r['reverse_step_ratio']}x), the profiler finds exactly the two new products and an AddN of their "
        "[128, 784] results as the only new "
        f"ops, and those products alone take {to_x} and {to_x_second} ms against {forward} ms for the forward "
        f"product (together {extra / train_pair:.2f}x training's pair{slower}). Accumulating it adds the rest, "
        f"{accumulate:.2f}x training ({o['kept_dx_discarded']}x -> {o['kept_dx']}x), which the per-step count leaves "
        "out. dE/dx needs an N x d "
        f"array ({r['n_train']} x {r['n_features']} float32, {size}): "
        f"made and read back once ({r['accumulator_seconds']} s) and scattered into 128 random rows every step "
        f"({r['scatter_ms_per_step']} ms), {fixed:.2f} s alone, {fixed / r['seconds']['train']:.2f}x training; the "
        f"rest is those scatters' cost inside the sweep beyond that, where their rows of a {size} array compete "
        "with the step's weights for the cache (inferred from the difference, not measured op by op). It grows with "
        "N x d while training does not. influence.input_grad=false removes both parts and leaves every influence "
        "value as it was.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="synthetic N = 5,000 instead of 50,000")
    parser.add_argument(
        "--input-grad", action="store_true", help="only the dE/dx section (keeps every other figure of the files)"
    )
    parser.add_argument("--memory-k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help="synthetic N (default 50,000; --quick: 5,000)")
    args = parser.parse_args()
    n_synthetic = args.n or (5000 if args.quick else 50000)
    if args.memory_k is not None:
        print(json.dumps(memory_case(args.memory_k, n_synthetic)))
        return
    suffix = "-quick" if args.quick else ""
    if args.input_grad:
        command = "python scripts/bench_trajectory.py --input-grad" + (f" --n {args.n}" if args.n else "")
        rows = []
        for optimizer_name in ("sgd", "adam"):
            row = time_input_grad(n_synthetic, optimizer_name)
            print(json.dumps(row), flush=True)
            rows.append(row)
        path = OUT / f"trajectory{suffix}.json"
        results = json.loads(path.read_text()) if path.is_file() else {}
        results["input_grad"] = {"command": command, "machine": machine(), "rows": rows}
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        if results.get("timing"):
            write_markdown(results, OUT / f"trajectory{suffix}.md")
        else:
            (OUT / f"trajectory{suffix}.md").write_text("\n".join(input_grad_markdown(results["input_grad"])) + "\n")
        print(f"wrote {OUT / f'trajectory{suffix}.md'}")
        return

    command = "python scripts/bench_trajectory.py" + (" --quick" if args.quick else "")
    results = {"command": command, "machine": machine(), "timing": [], "memory": []}
    for case in ("digits", "synthetic"):
        for optimizer_name in ("sgd", "adam"):
            row = time_case(case, n_synthetic, optimizer_name)
            print(json.dumps(row), flush=True)
            results["timing"].append(row)
    steps = results["timing"][-1]["steps"]
    for k in [*sorted(k for k in {1, 5, max(1, round(steps**0.5)), 50, 150, steps} if k <= steps), 0]:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-k", str(k), "--n", str(n_synthetic)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        results["memory"].append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    previous = OUT / f"trajectory{suffix}.json"
    if previous.is_file() and "input_grad" in json.loads(previous.read_text()):  # its own run (--input-grad)
        results["input_grad"] = json.loads(previous.read_text())["input_grad"]
    (OUT / f"trajectory{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, OUT / f"trajectory{suffix}.md")
    print(f"wrote {OUT / f'trajectory{suffix}.md'}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
