"""Entry point `python -m pipeline.evaluate experiment=<name> [overrides...]`: how well the scores predict
real retraining (conf/evaluate.yaml, conf/experiment/<name>.yaml; results in docs/results.md).

Scores come from the pipeline itself (train + score into <evaluation.scratch>/<name>/main, one training
scored by every method; trajectory and truncated on seeds 0..K-1 for the ensembles). Every retraining is a
Ray task in the one local Ray (cluster.num_cpus is the process-wide budget):

- same seed: seed 0's recorded initial state and schedule with eps = 0/1 masks (stages.verify.
  objective_after_training): leave-one-out, and LDS at each of evaluation.same_seed_drops;
- cross seed: R fresh seeds (new initialisation and data order, never scored), the same R for every
  subset; targets are the R-seed means, with their split-half reliability; LDS of every method and of
  the K-seed ensembles at each of evaluation.cross_seed_drops;
- removal: the k most harmful (and most helpful) samples by each method, the k highest-loss samples and
  k random ones removed, R fresh seeds each, change of E against the same seeds on all the data;
- flipped labels: a share of the labels flipped, every method run on that data, AUC and share found.
The retrainings' results are kept in <evaluation.scratch>/<name>/targets.npz under a key (target_key); a rerun
with the same key and the same masks reads them instead of retraining (delete the file to force a retraining).
Writes <evaluation.results>/<name>.parquet and <name>.md, and rebuilds <evaluation.results>.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig

from pipeline import cli, cluster, ensembles, metrics
from pipeline.config import DataSettings, EvaluationSettings, Settings, evaluation_from_config, settings_from_config
from pipeline.data import SINGLE_INPUT, Dataset, load_dataset
from pipeline.errors import DivergenceError, UserInputError
from pipeline.evaluation import markdown, stats
from pipeline.evaluation.retrain import fresh_objective
from pipeline.io.files import atomic_path, read_json
from pipeline.io.layout import RunLayout
from pipeline.io.tables import read_parts
from pipeline.methods import REGISTRY
from pipeline.run import CONFIG_DIR, INTERRUPTED, data_fingerprint, execute, one_line
from pipeline.runtime import objective_after_training

INSPECTED = (0.1, 0.2, 0.3)  # flipped labels: shares of the data inspected, highest scores first
TARGETS_FILE = "targets.npz"  # <scratch>/<name>/: the retrainings' results (retrain_or_reuse)
# Evaluation settings that change no retraining: names and places, the reference read afterwards, and what is drawn
# after the retrainings.
# ensemble_sizes: only the largest decides the removal sets, and the stored masks are compared anyway
NOT_RETRAINING = (
    "name",
    "scratch",
    "results",
    "peer_scores",
    "reliability_splits",
    "flip_fraction",
    "flip_seeds",
    "ensemble_sizes",
)
# scripts/peers' settings.target -> the factor that makes its `score` positive = harmful (margin: dattri's score is
# the rise of the validation margins, helpful; ce: the rise of the validation cross-entropy, harmful)
PEER_SIGN = {"margin": -1.0, "ce": 1.0}
BOOTSTRAP_DRAWS = 2000  # resamples of the subsets for the paired standard errors against the peer


class Rows:
    """The long-form result table: one row per (part, method, ensemble size, fraction, metric)."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.rows: list[dict[str, Any]] = []

    def add(
        self, part: str, method: str, metric: str, value: float, fraction: float = math.nan, ensemble: int = 0
    ) -> None:
        self.rows.append(
            {
                "experiment": self.experiment,
                "part": part,
                "method": method,
                "ensemble": ensemble,
                "fraction": fraction,
                "metric": metric,
                "value": float(value),
            }
        )

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=markdown.SCHEMA)


SELF_INFLUENCE = "self_influence"  # the column some methods (trak) add to their parts


def score_runs(
    settings: Settings, methods: tuple[str, ...], n_seeds: int, horizon: int, out: Path
) -> dict[str, np.ndarray]:
    """Train + score through the pipeline into `out`, every method on seeds 0..n_seeds-1; returns
    method -> influence [seeds, N], plus "<method> self-influence" for methods whose parts carry it."""
    layout, scores = RunLayout(out), {}
    seeds = tuple(range(n_seeds))
    for method in methods:
        influence = replace(
            settings.influence, method=method, horizon=horizon if "horizon" in REGISTRY[method].settings else None
        )
        run = replace(
            settings,
            influence=influence,
            train=replace(settings.train, seeds=seeds),
            output=replace(settings.output, dir=str(out), overwrite=True),
            stages=("train", "score"),
        )
        execute(run)
        tables = [read_parts(layout.score_parts(method, s)).sort_by("sample_id") for s in seeds]
        scores[method] = np.stack([t["influence"].to_numpy() for t in tables])
        if SELF_INFLUENCE in tables[0].column_names:
            scores[f"{method} self-influence"] = np.stack([t[SELF_INFLUENCE].to_numpy() for t in tables])
    return scores


def seconds_per_model(out: Path, method: str, n_seeds: int) -> np.ndarray:
    """[n_seeds] CPU seconds (process time, robust to a busy machine) of training plus the method's scoring, per
    seed (from the run's summaries)."""
    layout = RunLayout(out)
    return np.array(
        [
            read_json(layout.train_summary(s))["cpu_seconds"]
            + read_json(layout.score_summary(method, s))["cpu_seconds"]
            for s in range(n_seeds)
        ]
    )


def peer_scores(path: Path, n_train: int) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(name, validation target, influence [models, N] with positive = harmful, CPU seconds per model [models]) of
    the outside reference written by scripts/peers (TRAK by dattri). Its `score` is signed by its target (schema
    metadata settings.target; a file without one is margin): PEER_SIGN turns it to positive = harmful."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"peers", b"{}"))
    target = meta.get("settings", {}).get("target", "margin")
    if target not in PEER_SIGN:
        raise UserInputError(
            f"evaluation.peer_scores={path}: unknown settings.target {target!r} (known: {', '.join(PEER_SIGN)})"
        )
    models = np.unique(table["model"].to_numpy())
    scores = np.zeros((models.size, n_train))
    for row, model in enumerate(models):
        part = table.filter(pc.equal(table["model"], model)).sort_by("sample_id")
        if not np.array_equal(part["sample_id"].to_numpy(), np.arange(n_train)):
            raise UserInputError(
                f"evaluation.peer_scores={path}: model {model} does not score every one of the {n_train} training "
                "samples once"
            )
        scores[row] = PEER_SIGN[target] * part["score"].to_numpy()
    timing = pq.read_table(path.with_name(f"{path.stem}_models.parquet")).to_pandas().set_index("model").loc[models]
    seconds = (timing["cpu_seconds_train"] + timing["cpu_seconds_attribute"]).to_numpy()  # process time: load-proof
    return markdown.PEER, target, scores, seconds


def ranked_scores(scores: dict[str, np.ndarray], largest: int) -> dict[str, np.ndarray]:
    """Scores per method as compared on one target: seed 0 alone and, with several seeds, the standardized
    ensemble of seeds 0..largest-1 (pipeline.ensembles; a plain mean lets one seed's scale dominate)."""
    out = {}
    for method, values in scores.items():
        if largest > 1 and values.shape[0] >= largest:
            out[f"{method} K=1"] = values[0]
            out[f"{method} K={largest}"] = ensembles.combine(values[:largest], "standardized")
        else:
            out[method] = values[0]
    return out


def ensemble_rows(
    rows: Rows,
    name: str,
    values: np.ndarray,
    masks: np.ndarray,
    target: np.ndarray,
    drop: float,
    sizes: tuple[int, ...],
) -> None:
    """LDS of one method's ensembles of K = each size (mean and standardized rules, seeds 0..K-1), and over
    disjoint groups of K seeds (mean and standard error of the groups' LDS: single seeds are noisy)."""
    for k in (k for k in sizes if k <= values.shape[0]):
        for rule in ("mean", "standardized"):
            label = name if rule == "mean" else f"{name} standardized"
            rows.add("ensemble", label, "lds", stats.lds(masks, ensembles.combine(values[:k], rule), target), drop, k)
        groups = [
            stats.lds(masks, ensembles.combine(values[g * k : (g + 1) * k], "mean"), target)
            for g in range(values.shape[0] // k)
        ]
        rows.add("ensemble_groups", name, "lds_mean", float(np.mean(groups)), drop, k)
        rows.add(
            "ensemble_groups",
            name,
            "lds_se",
            float(np.std(groups, ddof=1) / math.sqrt(len(groups))) if len(groups) > 1 else math.nan,
            drop,
            k,
        )
        rows.add("ensemble_groups", name, "groups", len(groups), drop, k)


def peer_rows(
    rows: Rows,
    scores: dict[str, np.ndarray],
    peer: str,
    masks: np.ndarray,
    target: np.ndarray,
    drop: float,
    sizes: tuple[int, ...],
    seed: int,
) -> None:
    """LDS of each of our methods' K-seed mean ensembles minus the peer's at the same K (the `ensemble` rows'
    figures; positive = ours better), with its paired bootstrap standard error over the subsets (the same
    resamples for every method and K: stats.paired_lds_difference)."""
    for method, values in scores.items():
        if method == peer or method.endswith("self-influence"):
            continue
        for k in (k for k in sizes if k <= min(values.shape[0], scores[peer].shape[0])):
            diff, se = stats.paired_lds_difference(
                masks,
                ensembles.combine(values[:k], "mean"),
                ensembles.combine(scores[peer][:k], "mean"),
                target,
                BOOTSTRAP_DRAWS,
                np.random.default_rng(seed),
            )
            rows.add("peer_difference", method, "lds_difference", diff, drop, k)
            rows.add("peer_difference", method, "lds_difference_se", se, drop, k)


def equal_compute_rows(
    rows: Rows, seconds: dict[str, float], reference: str, drops: tuple[float, ...], sizes: tuple[int, ...]
) -> None:
    """For the compute of `reference` at each K: every method's best ensemble (either rule) within that many
    seconds, K' = floor(budget / its seconds per model), and its LDS (from the rows already recorded)."""
    f = markdown.Figures(rows.table())
    for k in sizes:
        budget = k * seconds[reference]
        for method, per_model in seconds.items():
            fits = [size for size in sizes if size * per_model <= budget * (1 + 1e-9)]
            if not fits:
                continue
            for drop in drops:
                best = max(
                    (f.get("ensemble", label, "lds", drop, fits[-1]), label)
                    for label in (method, f"{method} standardized")
                )
                rows.add("equal_compute", best[1], "lds", best[0], drop, k)
                rows.add("equal_compute", best[1], "k", fits[-1], drop, k)


class Retrainer:
    """Runs batches of retrainings as Ray tasks and keeps the count and the time spent."""

    def __init__(self, settings: Settings, dataset_ref: Any):
        self.settings, self.dataset_ref = settings, dataset_ref
        self.options = cluster.task_options(settings.cluster, cluster.gpus_in_cluster())
        self.count, self.seconds = 0, 0.0

    def same_seed(self, run: Settings, masks: list[np.ndarray], desc: str) -> np.ndarray:
        """E after retraining seed 0 of `run` on its recorded schedule with each mask as eps."""
        return self._run(objective_after_training, [(run, self.dataset_ref, 0, m) for m in masks], desc)

    def fresh(self, seeds: list[int], masks: list[np.ndarray], desc: str) -> np.ndarray:
        """[len(masks), len(seeds)] E after training each fresh seed with each mask as eps (grouped by
        seed, so a worker reuses the seed's compiled model)."""
        values = self._run(
            fresh_objective, [(self.settings, self.dataset_ref, s, m) for s in seeds for m in masks], desc
        )
        return values.reshape(len(seeds), len(masks)).T

    def _run(self, fn: Callable[..., float], calls: list[tuple], desc: str) -> np.ndarray:
        began = time.perf_counter()
        values = np.array(cluster.run_tasks(fn, calls, self.options, desc=desc), dtype=float)
        self.seconds += time.perf_counter() - began
        self.count += len(calls)
        return values


@dataclass(frozen=True)
class Retrained:
    """What the retrainings measured: E on seed 0's schedule per same-seed mask [P], E per fresh-seed mask and
    seed [Q, R], how many retrainings ran and their wall seconds, and whether it was read from the cache."""

    same: np.ndarray
    fresh: np.ndarray
    count: int
    seconds: float
    reused: bool


def target_key(settings: Settings, ev: EvaluationSettings, dataset: Dataset) -> str:
    """Hash of what decides the retrainings: the pipeline settings' result hash, the data fingerprint and every
    evaluation setting but NOT_RETRAINING."""
    decisive = {k: v for k, v in asdict(ev).items() if k not in NOT_RETRAINING}
    text = json.dumps([settings.result_hash(), data_fingerprint(dataset), decisive], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def retrain_or_reuse(
    path: Path, key: str, same_plan: np.ndarray, fresh_plan: np.ndarray, retrain: Callable[[], Retrained]
) -> Retrained:
    """The retrainings of the 0/1 masks same_plan [P, N] and fresh_plan [Q, N]: read from `path` when it holds
    them under `key` for the same masks, else retrain() and written to `path` (a temporary name, then renamed)."""
    same_masks, fresh_masks = same_plan.astype(bool), fresh_plan.astype(bool)
    if path.exists():
        with np.load(path) as c:
            if (
                str(c["key"]) == key
                and np.array_equal(c["same_masks"], same_masks)
                and np.array_equal(c["fresh_masks"], fresh_masks)
            ):
                print(f"[evaluate] targets: reusing the {int(c['count'])} retrainings in {path} (key {key})")
                return Retrained(c["same"], c["fresh"], int(c["count"]), float(c["seconds"]), True)
    out = retrain()
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(
            fh,
            key=key,
            same_masks=same_masks,
            fresh_masks=fresh_masks,
            same=out.same,
            fresh=out.fresh,
            count=out.count,
            seconds=out.seconds,
        )
    return out


def evaluate(settings: Settings, ev: EvaluationSettings) -> Rows:
    """Run one experiment (module docstring) and return its rows."""
    rows = Rows(ev.name)
    dataset = load_dataset(settings.data, settings.task.name)
    n, largest = dataset.n_train, ev.ensemble_sizes[-1]
    rng = np.random.default_rng(ev.seed)
    root = Path(ev.scratch) / ev.name
    steps_per_epoch = math.ceil(n / settings.train.batch_size)
    horizon = ev.truncated_epochs * steps_per_epoch

    scores = score_runs(settings, ev.methods, largest, horizon, root / "main")
    seconds = {m: float(seconds_per_model(root / "main", m, largest).mean()) for m in ev.methods}
    compared = ranked_scores({m: v for m, v in scores.items() if not m.endswith("self-influence")}, largest) | {
        "random": rng.normal(size=n)
    }
    e_seed0 = read_json(RunLayout(root / "main").train_summary(0))["val_objective"]

    # Every retraining's mask, drawn from rng in this order: leave-one-out ids, same-seed subsets, cross-seed
    # subsets, random removals. Same seed: seed 0's recorded schedule; cross seed: R fresh seeds, the same R for
    # every subset.
    loo_ids = rng.choice(n, min(ev.n_loo, n), replace=False)
    same_masks = {drop: stats.kept_masks(rng, n, drop, ev.n_subsets) for drop in ev.same_seed_drops}
    cross_masks = {drop: stats.kept_masks(rng, n, drop, ev.n_subsets) for drop in ev.cross_seed_drops}
    removals = removal_sets(compared, n, ev, rng)
    same_plan = np.stack(
        [np.ones(n)]
        + [stats.removal_mask(n, np.array([i])) for i in loo_ids]
        + [m for drop in ev.same_seed_drops for m in same_masks[drop]]
    )
    fresh_plan = np.stack(
        [np.ones(n)] + [m for drop in ev.cross_seed_drops for m in cross_masks[drop]] + [mask for *_, mask in removals]
    )

    def retrain() -> Retrained:
        import ray

        retrainer = Retrainer(settings, ray.put(dataset))
        main_run = replace(
            settings, train=replace(settings.train, seeds=(0,)), output=replace(settings.output, dir=str(root / "main"))
        )
        same = retrainer.same_seed(main_run, list(same_plan), f"{ev.name}: same-seed retrainings")
        fresh_seeds = [ev.first_retrain_seed + r for r in range(ev.retrain_seeds)]
        fresh = retrainer.fresh(fresh_seeds, list(fresh_plan), f"{ev.name}: fresh-seed retrainings")
        return Retrained(same, fresh, retrainer.count, retrainer.seconds, False)

    retrained = retrain_or_reuse(root / TARGETS_FILE, target_key(settings, ev, dataset), same_plan, fresh_plan, retrain)

    # Same seed: leave-one-out and LDS on seed 0's recorded schedule.
    measured = iter(retrained.same)
    base = next(measured)
    loo_change = np.array([next(measured) for _ in loo_ids]) - base
    same_e = {drop: np.array([next(measured) for _ in range(ev.n_subsets)]) for drop in ev.same_seed_drops}
    single = {m: v[0] for m, v in scores.items() if not m.endswith("self-influence")} | {"random": compared["random"]}
    for method, values in single.items():
        if loo_ids.size:
            for metric, value in metrics.correlations(-values[loo_ids], loo_change).items():
                rows.add("same_seed", method, f"loo_{metric}", value)
        for drop in ev.same_seed_drops:
            rows.add("same_seed", method, "lds", stats.lds(same_masks[drop], values, same_e[drop]), drop)
    for drop in ev.same_seed_drops:
        rows.add("same_seed", "-", "subset_sd_E", np.std(same_e[drop]), drop)
    rows.add("context", "-", "median_abs_loo_change", np.median(np.abs(loo_change)) if loo_ids.size else math.nan)

    # Cross seed: targets averaged over R fresh seeds.
    fresh = iter(retrained.fresh)
    full = next(fresh)
    cross_e = {drop: np.stack([next(fresh) for _ in range(ev.n_subsets)]) for drop in ev.cross_seed_drops}
    if ev.peer_scores:  # read only now: the outside reference is compared on the targets, not in the removals
        peer, peer_target, peer_values, peer_seconds = peer_scores(Path(ev.peer_scores), n)
        rows.add("context", peer_target, "peer_target", 1.0)
        scores[peer], seconds[peer] = peer_values[:largest], float(peer_seconds[:largest].mean())
        compared |= {
            f"{peer} K=1": peer_values[0],
            f"{peer} K={largest}": ensembles.combine(peer_values[:largest], "mean"),
        }
    for drop, values in cross_e.items():
        reliability = stats.split_half_reliability(values, ev.reliability_splits, rng)
        rows.add("cross_seed", "-", "reliability", reliability, drop)
        rows.add("cross_seed", "-", "seeds_for_0.8", stats.seeds_needed(reliability, ev.retrain_seeds), drop)
        rows.add("cross_seed", "-", "target_sd_across_subsets", values.mean(axis=1).std(), drop)
        rows.add("cross_seed", "-", "E_sd_across_seeds", values.std(axis=1, ddof=1).mean(), drop)
        for method, values_m in compared.items():
            rows.add("cross_seed", method, "lds", stats.lds(cross_masks[drop], values_m, values.mean(axis=1)), drop)
        for method, values_m in scores.items():
            if not method.endswith("self-influence"):
                ensemble_rows(rows, method, values_m, cross_masks[drop], values.mean(axis=1), drop, ev.ensemble_sizes)
        if ev.peer_scores:
            peer_rows(rows, scores, peer, cross_masks[drop], values.mean(axis=1), drop, ev.ensemble_sizes, ev.seed)
    for method, per_model in seconds.items():
        rows.add("ensemble", method, "seconds_per_model", per_model)
        for k in ev.ensemble_sizes:
            rows.add("ensemble", method, "seconds", k * per_model, ensemble=k)
    if ev.peer_scores:
        equal_compute_rows(rows, seconds, peer, ev.cross_seed_drops, ev.ensemble_sizes)
    for label, direction, fraction, _ in removals:
        mean, se = stats.paired_change(next(fresh), full)
        rows.add("removal", label, f"delta_E_{direction}", mean, fraction)
        rows.add("removal", label, f"delta_E_{direction}_se", se, fraction)

    if dataset.task == "classification":
        flip_rows(rows, settings, dataset, ev, horizon, root, rng)
    for metric, value in {
        "N": n,
        "E_seed0": e_seed0,
        "E_fresh_mean": full.mean(),
        "E_fresh_sd": full.std(ddof=1),
        "R": ev.retrain_seeds,
        "horizon_steps": horizon,
        "retrainings": retrained.count,
        "retrain_seconds": retrained.seconds,
        "targets_reused": retrained.reused,
    }.items():
        rows.add("context", "-", metric, value)
    return rows


def removal_sets(
    compared: dict[str, np.ndarray], n: int, ev: EvaluationSettings, rng: np.random.Generator
) -> list[tuple[str, str, float, np.ndarray]]:
    """(method, direction, k, kept mask) of every removal: the k highest scores of each method (for
    `loss` the highest training losses) as "harmful", the k lowest of each validation-based method as
    "helpful", and k random samples (listed as harmful)."""
    out = []
    for k in ev.removal_fractions:
        count = max(1, int(round(k * n)))
        for method, values in compared.items():
            if method == "random":
                out.append(("random", "harmful", k, stats.removal_mask(n, rng.choice(n, count, replace=False))))
                continue
            out.append((method, "harmful", k, stats.removal_mask(n, stats.top(values, count))))
            scored = REGISTRY.get(method.split()[0])  # "loss", "loss K=1", ...; None: an outside reference
            if scored is None or scored.signed:  # a ranking score (loss) has no helpful side
                out.append((method, "helpful", k, stats.removal_mask(n, stats.top(-values, count))))
    return out


def flip_rows(
    rows: Rows,
    settings: Settings,
    dataset: Dataset,
    ev: EvaluationSettings,
    horizon: int,
    root: Path,
    rng: np.random.Generator,
) -> None:
    """Flip evaluation.flip_fraction of the training labels, score every method on that data and record
    how well each finds the flips (AUC, share found among the top 10/20/30%)."""
    y, flipped = stats.flip_labels(rng, dataset.y_train, dataset.width, ev.flip_fraction)
    path = root / "flipped.npz"
    single = dataset.input_names == (SINGLE_INPUT,)
    arrays = {("x_train" if single else f"x_train.{k}"): v for k, v in dataset.x_train.items()} | {
        ("x_val" if single else f"x_val.{k}"): v for k, v in dataset.x_val.items()
    }
    np.savez(path, y_train=y, y_val=dataset.y_val, **arrays)  # type: ignore[arg-type]  # numpy stub: **arrays may not be allow_pickle
    data = DataSettings(source="npz", path=str(path), inputs=None if single else dataset.input_names)
    scores = score_runs(replace(settings, data=data), ev.methods, ev.flip_seeds, horizon, root / "flipped")
    compared = {m: ensembles.combine(v, "standardized") for m, v in scores.items()} | {
        "random": rng.normal(size=dataset.n_train)
    }
    for method, values in compared.items():
        rows.add("flips", method, "auc", metrics.roc_auc(values, flipped))
        for share in INSPECTED:
            rows.add("flips", method, "found", metrics.found_fraction(values, flipped, share), share)


def run(cfg: DictConfig, command: str) -> Path:
    """Compose -> evaluate -> write Parquet and markdown; returns the path of the gathered results file."""
    settings = settings_from_config(cfg)
    ev = evaluation_from_config(cfg)
    cluster.connect(settings.cluster)
    began = time.perf_counter()
    rows = evaluate(settings, ev)
    rows.add("context", "-", "wall_seconds", time.perf_counter() - began)
    results = Path(ev.results)
    results.mkdir(parents=True, exist_ok=True)
    table = rows.table()
    pq.write_table(table, results / f"{ev.name}.parquet")
    (results / f"{ev.name}.md").write_text(markdown.experiment_section(table, settings, command))
    return markdown.gather(results, Path(CONFIG_DIR) / "experiment")


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    command = " ".join(["python -m pipeline.evaluate", *HydraConfig.get().overrides.task])
    try:
        path = run(cfg, command)
    except (UserInputError, DivergenceError) as exc:
        print(f"error: {one_line(exc).split(': ', 1)[-1]}", file=sys.stderr)
        sys.exit(2)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    print(f"wrote {path}")


def main() -> None:
    try:
        cli.run_hydra(_hydra_main, CONFIG_DIR, "evaluate")
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
