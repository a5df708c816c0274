"""How well each scoring method predicts real retraining, on digits (docs/design.md, "Ground truth").

    python scripts/evaluate.py                                  # the three experiments below
    python scripts/evaluate.py digits_mlp_adam                  # some of them (names of conf/experiment/*.yaml)

Each experiment (a Hydra config under conf/experiment/) is run through the pipeline itself, once per
method (trajectory, lookahead, tracin, loss; plus random scores), on seeds 0-3, and then checked
against retrainings run as parallel Ray tasks on the recorded schedules:
- leave-one-out: n_loo samples retrained with eps_i = 0 (seed 0); Pearson/Spearman/Kendall between
  -influence and the measured change of E; the noise floor is the spread of E over seeds 0-3;
- LDS: n_subsets random subsets keeping each fraction of keep_fractions, retrained; Spearman between
  the summed scores of the kept samples and the measured E, with the same seed as the scores (seed 0)
  and across seeds (scores averaged over scored_seeds, retraining with other_seed);
- mislabel detection: flip_fraction of the training labels flipped, every method run on that data, and
  the share of flipped samples among the top 10/20/30% by score, and the AUC;
- wall time of the score stage (4 seeds; for the sharded methods it includes starting the actors,
  which import TensorFlow).
Writes docs/results/evaluation.parquet and docs/results.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("digits_logistic_sgd", "digits_mlp_sgd", "digits_mlp_adam")
RESULTS = REPO / "docs" / "results"
INSPECTED = (0.1, 0.2, 0.3)


def compose(name: str) -> tuple[Any, dict[str, Any]]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import settings_from_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=[f"+experiment={name}"])
    return settings_from_config(cfg), OmegaConf.to_container(cfg.evaluation, resolve=True)


def run_method(base, method: str, seeds: tuple[int, ...], out: Path, data=None) -> tuple[np.ndarray, float, Any]:
    """Run train + score for one method through the pipeline; ([n_seeds, N] influence, score seconds, settings)."""
    from pipeline.run import execute

    settings = replace(
        base,
        data=data or base.data,
        influence=replace(base.influence, method=method),
        train=replace(base.train, seeds=seeds),
        output=replace(base.output, dir=str(out), overwrite=True),
        stages=("train", "score"),
    )
    payload = execute(settings)
    table = pads.dataset(out / "scores" / f"method={method}", format="parquet", partitioning="hive").to_table()
    influence = np.stack([table.filter(pads.field("seed") == s).sort_by("sample_id")["influence"].to_numpy() for s in seeds])
    return influence, payload["stages"]["score"]["seconds"], settings


def subsets(rng: np.random.Generator, n: int, keep: float, count: int) -> np.ndarray:
    """[count, n] 0/1 weights, each row keeping round(keep * n) samples chosen at random."""
    masks = np.zeros((count, n))
    for row in masks:
        row[rng.choice(n, int(round(keep * n)), replace=False)] = 1.0
    return masks


def evaluate(name: str, scratch: Path) -> list[dict[str, Any]]:
    import ray

    from pipeline import cluster, metrics
    from pipeline.data import load_dataset
    from pipeline.io.files import read_json
    from pipeline.io.layout import RunLayout
    from pipeline.stages.verify import objective_after_training

    base, ev = compose(name)
    shutil.rmtree(scratch / name, ignore_errors=True)  # fresh runs: a resumed run would report no score time
    (scratch / name).mkdir(parents=True)
    dataset = load_dataset(base.data)
    n, scored, other = dataset.n_train, tuple(ev["scored_seeds"]), ev["other_seed"]
    seeds = (*scored, other)
    rng = np.random.default_rng(ev["seed"])
    rows: list[dict[str, Any]] = []

    def record(method: str, metric: str, value: float) -> None:
        rows.append({"experiment": name, "method": method, "metric": metric, "value": float(value)})

    # Scores of every method, seeds 0-3.
    scores, seconds, trajectory_settings = {}, {}, None
    for method in (m for m in ev["methods"] if m != "random"):
        scores[method], seconds[method], settings = run_method(base, method, seeds, scratch / name / method)
        if method == "trajectory":
            trajectory_settings = settings
    scores["random"] = rng.normal(size=(len(seeds), n))
    for method, value in seconds.items():
        record(method, f"score_seconds_{len(seeds)}_seeds", value)

    # Ground truth: retrainings on the recorded schedules of seed 0 and of the other seed.
    loo_ids = rng.choice(n, ev["n_loo"], replace=False)
    masks = {keep: subsets(rng, n, keep, ev["n_subsets"]) for keep in ev["keep_fractions"]}
    weights = [(0, np.ones(n)), (other, np.ones(n))]
    for i in loo_ids:
        eps = np.ones(n)
        eps[i] = 0.0
        weights.append((0, eps))
    for keep in ev["keep_fractions"]:
        weights += [(0, m) for m in masks[keep]] + [(other, m) for m in masks[keep]]
    options = cluster.task_options(trajectory_settings.cluster, cluster.gpus_in_cluster())
    dataset_ref = ray.put(dataset)
    began = time.perf_counter()
    measured = iter(cluster.run_tasks(objective_after_training, [(trajectory_settings, dataset_ref, s, w) for s, w in weights], options, desc=f"{name}: retrainings"))
    retrain_seconds = time.perf_counter() - began
    full_same, full_other = next(measured), next(measured)
    loo_change = np.array([next(measured) for _ in loo_ids]) - full_same
    lds_measured = {keep: (np.array([next(measured) for _ in masks[keep]]), np.array([next(measured) for _ in masks[keep]])) for keep in ev["keep_fractions"]}

    layout = RunLayout(Path(trajectory_settings.output.dir))
    objectives = [read_json(layout.train_summary(s))["val_loss"] for s in seeds]
    record("-", "noise_floor_std_E_over_seeds", np.std(objectives))
    record("-", "median_abs_loo_change", np.median(np.abs(loo_change)))
    record("-", "retrainings", len(weights))
    record("-", "retrain_seconds", retrain_seconds)
    record("-", "E_seed0", full_same)
    record("-", f"E_seed{other}", full_other)

    for method, influence in scores.items():
        for metric, value in metrics.correlations(-influence[0][loo_ids], loo_change).items():
            record(method, f"loo_{metric}", value)
        averaged = influence[: len(scored)].mean(axis=0)
        for keep, (same, across) in lds_measured.items():
            record(method, f"lds_keep{int(keep * 100)}_same_seed", metrics.correlations(masks[keep] @ influence[0], same)["spearman"])
            record(method, f"lds_keep{int(keep * 100)}_cross_seed", metrics.correlations(masks[keep] @ averaged, across)["spearman"])

    # Mislabel detection: flip labels, score with every method on the flipped data (seed 0).
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, int(round(ev["flip_fraction"] * n)), replace=False)] = True
    y_flipped = dataset.y_train.copy()
    y_flipped[flipped] = (y_flipped[flipped] + rng.integers(1, dataset.num_classes, flipped.sum())) % dataset.num_classes
    path = scratch / name / "flipped.npz"
    np.savez(path, x_train=dataset.x_train, y_train=y_flipped, x_val=dataset.x_val, y_val=dataset.y_val)
    from pipeline.config import DataSettings

    flip_data = DataSettings(source="npz", path=str(path))
    flip_scores = {m: run_method(base, m, (0,), scratch / name / f"flipped_{m}", data=flip_data)[0][0] for m in scores if m != "random"}
    flip_scores["random"] = rng.normal(size=n)
    for method, values in flip_scores.items():
        for fraction in INSPECTED:
            record(method, f"flips_found_top{int(fraction * 100)}", metrics.found_fraction(values, flipped, fraction))
        record(method, "flips_auc", metrics.roc_auc(values, flipped))
    return rows


def write_markdown(rows: list[dict[str, Any]], path: Path, command: str) -> None:
    table: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        table.setdefault((r["experiment"], r["method"]), {})[r["metric"]] = r["value"]
    columns = [
        ("loo_pearson", "LOO Pearson"), ("loo_spearman", "LOO Spearman"), ("loo_kendall", "LOO Kendall"),
        ("lds_keep50_same_seed", "LDS 50% same seed"), ("lds_keep95_same_seed", "LDS 95% same seed"),
        ("lds_keep50_cross_seed", "LDS 50% cross-seed"), ("lds_keep95_cross_seed", "LDS 95% cross-seed"),
        ("flips_found_top10", "flips found @10%"), ("flips_found_top20", "@20%"), ("flips_found_top30", "@30%"),
        ("flips_auc", "flip AUC"), ("score_seconds_4_seeds", "score s (4 seeds)"),
    ]
    lines = ["# Evaluation: how well each method predicts real retraining", "", f"Reproduce: `{command}` (digits, float64; {time.strftime('%Y-%m-%d')}).", ""]
    for experiment in dict.fromkeys(r["experiment"] for r in rows):
        context = table[(experiment, "-")]
        lines += [
            f"## {experiment}",
            "",
            f"Validation cross-entropy E = {context['E_seed0']:.4f}; noise floor (std of E over seeds 0-3, nothing removed) "
            f"{context['noise_floor_std_E_over_seeds']:.2e}; median |change of E| when one sample is removed {context['median_abs_loo_change']:.2e}; "
            f"{int(context['retrainings'])} retrainings in {context['retrain_seconds']:.0f} s.",
            "",
            "| method | " + " | ".join(title for _, title in columns) + " |",
            "| --- | " + " | ".join("---" for _ in columns) + " |",
        ]
        for (exp, method), values in table.items():
            if exp == experiment and method != "-":
                cells = [("" if values.get(key) is None or np.isnan(values[key]) else f"{values[key]:.3f}") for key, _ in columns]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += REFERENCES
    path.write_text("\n".join(lines) + "\n")


REFERENCES = [
    "## How to read this, and published reference points",
    "",
    "- LOO and LDS compare -influence (or the summed scores of the kept samples) with retraining on the *same recorded",
    "  schedule*; `trajectory` is the exact derivative of that retraining, so its LOO correlation near 1 is the check",
    "  that the numbers are right. `loss` and `random` are ranking baselines, not estimates of a change in E. The noise",
    "  floor line puts one sample's effect in context: retraining under another seed moves E far more than removing",
    "  one sample does, so LOO effects are only measurable with the schedule held fixed, and the cross-seed LDS",
    "  columns measure something harder than the same-seed ones.",
    "- dattri (MNIST, logistic regression): LDS about 0.80 for exact influence functions, TracIn about 0.33; MLP: LDS",
    "  0.26 (CG influence), 0.45 (TRAK, 50 models). Their LDS retrains from scratch with random seeds, which corresponds",
    "  to our cross-seed columns, on 28x28 MNIST rather than 8x8 digits, so the comparison is indicative only.",
    "- Hara et al. 2019 (SGD-influence, linear models): Kendall tau about 0.93-0.95 between predicted and actual",
    "  leave-one-out on the same SGD schedule: compare with the LOO Kendall column of `trajectory`.",
    "- Koh and Liang 2017 (flipped labels, 10% flipped): about 0.62 of the flips found when checking 10% of the data",
    "  and 0.86 at 30%. Digits is easier than their setting; `loss` is a strong baseline here because a flipped digit",
    "  is usually a high-loss sample.",
    "- `lookahead` with K = 1 measures what a few more steps on one sample would do from the trained model; it does not",
    "  see how the sample shaped the run, hence its weak LOO and LDS agreement (it still finds flipped labels, which",
    "  pull the model hard). `tracin` sums first-order products over the stored checkpoints (about sqrt(T) of them)",
    "  and ignores how a change propagates through later steps, hence its LDS in the range dattri reports.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", default=list(EXPERIMENTS))
    parser.add_argument("--scratch", type=Path, default=REPO / "outputs" / "evaluation", help="where the runs go")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    rows = []
    for name in args.experiments:
        rows += evaluate(name, args.scratch)
    RESULTS.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), RESULTS / "evaluation.parquet")
    command = "python scripts/evaluate.py" + ("" if args.experiments == list(EXPERIMENTS) else " " + " ".join(args.experiments))
    write_markdown(rows, REPO / "docs" / "results.md", command)
    print(f"wrote {REPO / 'docs' / 'results.md'}")


if __name__ == "__main__":
    main()
