"""docs/results/<name>.md from an experiment's rows, and docs/results.md gathering every experiment."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Settings
from pipeline.methods import REGISTRY
from pipeline.models import MODELS

SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        (
            "part",
            pa.string(),
        ),  # context | same_seed | cross_seed | ensemble | ensemble_groups | peer_difference | equal_compute | ...
        ("method", pa.string()),  # "-" for figures of the ground truth itself
        ("ensemble", pa.int64()),  # K for part=ensemble, else 0
        ("fraction", pa.float64()),  # drop fraction, removed fraction k, or share inspected; NaN if none
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
# TRAK (dattri, 512-dim projection) on the seed 000 model, LDS at 50% kept against 25-seed targets
# (measured earlier on this machine with dattri, 512-dim projection, 25-seed targets): K final models -> LDS.
TRAK = {"mnist_seed000": {1: 0.41, 5: 0.54, 10: 0.60, 20: 0.67}}
OBJECTIVES = {
    "cross_entropy": "cross-entropy",
    "mse": "mean squared error",
    "margin": "margin loss",
    "mae": "mean absolute error",
    "huber": "Huber loss",
}
VALIDATION_BASED = tuple(name for name, method in REGISTRY.items() if method.measures == "validation")
PEER = "dattri TRAK"  # the outside reference (scripts/peers), when evaluation.peer_scores is set
PEER_TARGETS = {  # scripts/peers' settings.target: the function of the validation samples the reference attributes
    "margin": "the classification margin logit_y - logsumexp_{j != y} logit_j (TRAK's default)",
    "ce": "the per-sample cross-entropy, whose mean is E",
}


class Figures:
    """Lookup of one experiment's rows."""

    def __init__(self, table: pa.Table):
        self.rows = table.to_pylist()

    def get(self, part: str, method: str, metric: str, fraction: float | None = None, ensemble: int = 0) -> float:
        for r in self.rows:
            if (r["part"], r["method"], r["metric"], r["ensemble"]) == (part, method, metric, ensemble) and (
                fraction is None or (not math.isnan(r["fraction"]) and math.isclose(r["fraction"], fraction))
            ):
                return r["value"]
        return math.nan

    def values(self, key: str, **where: Any) -> list[Any]:
        """Distinct values of column `key` among the rows matching `where`, in order of appearance."""
        return list(dict.fromkeys(r[key] for r in self.rows if all(r[k] == v for k, v in where.items())))

    @property
    def experiment(self) -> str:
        return self.rows[0]["experiment"]


def fmt(value: float, digits: int = 3) -> str:
    return "" if value is None or math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.{digits}f}")


def pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def table(header: list[str], lines: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(line) + " |" for line in lines),
        "",
    ]


def describe(settings: Settings) -> str:
    m, o, t = settings.model, settings.optimizer, settings.train
    model = MODELS[m.name].describe(m)
    return (
        f"data={settings.data.source}, model={model}, {o.name} lr={o.lr:g}, {t.epochs} epochs of batch "
        f"{t.batch_size}, {t.dtype}"
    )


def experiment_section(rows: pa.Table, settings: Settings, command: str) -> str:
    """The markdown section of one experiment."""
    f = Figures(rows)
    c = lambda metric: f.get("context", "-", metric)  # noqa: E731
    objective = OBJECTIVES.get(str(settings.influence.objective), str(settings.influence.objective))
    r = int(c("R"))
    reused = ", read from the target cache" if c("targets_reused") == 1 else ""
    lines = [
        f"## {f.experiment}",
        "",
        f"{describe(settings)}; N = {int(c('N'))} training samples. Reproduce: `{command}` "
        f"({time.strftime('%Y-%m-%d')}; "
        f"{int(c('retrainings'))} retrainings in {c('retrain_seconds'):.0f} s{reused}; {c('wall_seconds') / 60:.1f} "
        "min in all).",
        "",
        f"E = validation {objective}. E of seed 0 = {c('E_seed0'):.4g}; over the R = {r} fresh seeds on all the data "
        f"E = {c('E_fresh_mean'):.4g} with sd {c('E_fresh_sd'):.2g} (the seed-to-seed noise floor of E); median "
        "|change of E| "
        f"when one sample is removed on seed 0's schedule: {c('median_abs_loo_change'):.2g}.",
        "",
    ]
    for target in f.values("method", part="context", metric="peer_target"):
        lines += [
            f"{PEER} (scripts/peers, evaluation.peer_scores): validation target = {PEER_TARGETS.get(target, target)} "
            f"(settings.target={target}); its scores are read as positive = harmful.",
            "",
        ]
    lines += (
        same_seed_lines(f)
        + cross_seed_lines(f, r)
        + ensemble_lines(f)
        + equal_compute_lines(f)
        + removal_lines(f, r)
        + flip_lines(f)
    )
    lines += goal_lines(f)
    return "\n".join(lines) + "\n"


def same_seed_lines(f: Figures) -> list[str]:
    drops = [x for x in f.values("fraction", part="same_seed", metric="lds")]
    methods = f.values("method", part="same_seed", metric="lds")
    body = [
        [m, fmt(f.get("same_seed", m, "loo_pearson")), fmt(f.get("same_seed", m, "loo_spearman"))]
        + [fmt(f.get("same_seed", m, "lds", d)) for d in drops]
        for m in methods
    ]
    body.append(
        ["sd of E across subsets", "", ""] + [f"{f.get('same_seed', '-', 'subset_sd_E', d):.2g}" for d in drops]
    )
    return [
        "### Same seed: seed 0's initial state and schedule, eps = 0/1",
        "",
        "Scores of seed 0 alone. LOO: correlation of -influence with the change of E when one sample is removed; "
        "LDS: Spearman correlation across random subsets between the summed scores of the kept samples and E.",
        "",
        *table(["method", "LOO Pearson", "LOO Spearman", *(f"LDS {pct(d)} removed" for d in drops)], body),
    ]


def cross_seed_lines(f: Figures, r: int) -> list[str]:
    drops = f.values("fraction", part="cross_seed", metric="reliability")
    methods = f.values("method", part="cross_seed", metric="lds")
    rel = {d: f.get("cross_seed", "-", "reliability", d) for d in drops}
    body = [
        [f"target reliability (split-half, Spearman-Brown to R = {r})"] + [fmt(rel[d]) for d in drops],
        ["R for reliability 0.8 (Spearman-Brown prophecy)"]
        + [fmt(f.get("cross_seed", "-", "seeds_for_0.8", d), 0) for d in drops],
        ["ceiling: sqrt(reliability)"] + [fmt(math.sqrt(rel[d]) if rel[d] > 0 else math.nan) for d in drops],
        ["sd of E across seeds within a subset / of the R-seed means across subsets"]
        + [
            f"{f.get('cross_seed', '-', 'E_sd_across_seeds', d):.2g} / "
            f"{f.get('cross_seed', '-', 'target_sd_across_subsets', d):.2g}"
            for d in drops
        ],
    ]
    body += [[m] + [f"{fmt(f.get('cross_seed', m, 'lds', d))} (rel. {fmt(rel[d], 2)})" for d in drops] for m in methods]
    return [
        f"### Cross seed: targets = mean E over R = {r} fresh seeds per subset",
        "",
        "Fresh seeds (new initialisation and data order, never scored) are the same R for every subset (common random "
        "numbers: the seed's own effect on E cancels between subsets). Reliability: Pearson correlation across subsets "
        "between the means of two random halves of the seeds, averaged over random splits and Spearman-Brown corrected "
        "from R/2 to R. A method's LDS cannot exceed about sqrt(reliability). Ensembles use the largest K.",
        "",
        *table(["", *(f"LDS {pct(d)} removed" for d in drops)], body),
    ]


def ensemble_lines(f: Figures) -> list[str]:
    drops = f.values("fraction", part="ensemble", metric="lds")
    labels = f.values("method", part="ensemble", metric="lds")
    sizes = f.values("ensemble", part="ensemble", metric="lds")
    trak = TRAK.get(f.experiment, {}) if not f.values("method", part="equal_compute") else {}
    lines = [
        "### Ensembles: cross-seed LDS of scores combined over seeds 0..K-1",
        "",
        "Each method uses K trainings, combined by the plain mean or `standardized` (each seed divided by its root "
        "mean "
        "square first, pipeline.ensembles). Seconds per model: worker seconds of one training plus the method's "
        "scoring "
        "(for an outside reference, its own training and attribution).",
        "",
    ]
    for drop in drops:
        header = ["method", *(f"K={k}" for k in sizes)] + (
            ["seconds per model"] if f.values("method", part="ensemble", metric="seconds_per_model") else []
        )
        body = []
        for label in labels:
            base = label.removesuffix(" standardized")
            per_model = f.get("ensemble", base, "seconds_per_model")
            body.append(
                [label, *(fmt(f.get("ensemble", label, "lds", drop, k)) for k in sizes)]
                + ([fmt(per_model, 1)] if len(header) > len(sizes) + 1 else [])
            )
        if trak and math.isclose(drop, 0.5):
            body.append(
                ["TRAK, 50% kept (earlier measurement)", *(fmt(trak.get(k, math.nan), 2) for k in sizes)]
                + ([""] if len(header) > len(sizes) + 1 else [])
            )
        lines += [f"LDS at {pct(drop)} removed:", "", *table(header, body)]
    groups = f.values("method", part="ensemble_groups", metric="lds_mean")
    if groups:
        for drop in drops:
            body = [
                [
                    m,
                    *(
                        f"{fmt(f.get('ensemble_groups', m, 'lds_mean', drop, k))} ± "
                        f"{fmt(f.get('ensemble_groups', m, 'lds_se', drop, k))} "
                        f"({int(f.get('ensemble_groups', m, 'groups', drop, k))})"
                        for k in sizes
                    ),
                ]
                for m in groups
            ]
            lines += [
                f"Disjoint groups of K seeds (mean rule), LDS at {pct(drop)} removed: mean ± standard error over the "
                "groups (number of groups):",
                "",
                *table(["method", *(f"K={k}" for k in sizes)], body),
            ]
    return lines


def equal_compute_lines(f: Figures) -> list[str]:
    budgets = f.values("ensemble", part="equal_compute", metric="lds")
    if not budgets:
        return []
    drops = f.values("fraction", part="equal_compute", metric="lds")
    labels = f.values("method", part="equal_compute", metric="lds")
    reference = next((m for m in labels if m.startswith("TRAK") or m.startswith("dattri")), labels[-1])
    body = []
    for label in labels:
        cells = []
        for k in budgets:
            for drop in drops:
                lds, size = f.get("equal_compute", label, "lds", drop, k), f.get("equal_compute", label, "k", drop, k)
                cells.append("" if math.isnan(lds) else f"{fmt(lds)} (K={int(size)})")
        body.append([label, *cells])
    return [
        f"### Equal compute: the best ensemble each method affords in the seconds {reference} takes for K models",
        "",
        "Budget = K x the reference's seconds per model; each method's K' = the largest ensemble size whose K' x its "
        "seconds per model fits, with the better of its two rules.",
        "",
        *table(["method", *(f"budget of K={k}, {pct(d)} removed" for k in budgets for d in drops)], body),
    ]


def removal_lines(f: Figures, r: int) -> list[str]:
    ks = f.values("fraction", part="removal", metric="delta_E_harmful")
    methods = f.values("method", part="removal", metric="delta_E_harmful")

    def cell(m: str, direction: str, k: float) -> str:
        mean, se = f.get("removal", m, f"delta_E_{direction}", k), f.get("removal", m, f"delta_E_{direction}_se", k)
        return "" if math.isnan(mean) else f"{mean:+.2e} ± {se:.1e}"

    body = [[m, *(cell(m, "harmful", k) for k in ks), *(cell(m, "helpful", k) for k in ks)] for m in methods]
    return [
        f"### Removal: change of E after removing k samples, mean ± se over R = {r} fresh seeds",
        "",
        "Paired with the same seeds on all the data. Harmful: the k highest scores (loss: highest training loss; "
        "random: "
        "k random samples); helpful: the k lowest scores (E should rise).",
        "",
        *table(["method", *(f"harmful {pct(k)}" for k in ks), *(f"helpful {pct(k)}" for k in ks)], body),
    ]


def flip_lines(f: Figures) -> list[str]:
    methods = f.values("method", part="flips", metric="auc")
    if not methods:
        return []
    shares = f.values("fraction", part="flips", metric="found")
    body = [[m, fmt(f.get("flips", m, "auc")), *(fmt(f.get("flips", m, "found", s)) for s in shares)] for m in methods]
    return [
        "### Flipped labels: scores on data with flipped labels",
        "",
        *table(["method", "AUC", *(f"found @{pct(s)}" for s in shares)], body),
    ]


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def goals(f: Figures) -> list[tuple[str, bool | None, str]]:
    """(goal, met, figures with margin) of the issue's goals for one experiment."""
    out = []
    smooth = f.get("same_seed", "trajectory", "loo_pearson")
    small = [d for d in (0.01, 0.05) if not math.isnan(f.get("same_seed", "trajectory", "lds", d))]
    worst = min((f.get("same_seed", "trajectory", "lds", d) for d in small), default=math.nan)
    detail = ", ".join(f"{pct(d)}: {fmt(f.get('same_seed', 'trajectory', 'lds', d))}" for d in small)
    out.append(
        (
            "same-seed LDS at 1-5% drops >= 0.9 (trajectory)",
            None if math.isnan(worst) else worst >= 0.9,
            f"{detail}; margin {worst - 0.9:+.3f}; run {'smooth' if smooth >= 0.9 else 'not smooth'} (LOO Pearson "
            f"{fmt(smooth)})",
        )
    )

    trak = TRAK.get(f.experiment, {})
    sizes = f.values("ensemble", part="ensemble", metric="lds")
    best = {
        k: max((f.get("ensemble", m, "lds", 0.5, k), m) for m in f.values("method", part="ensemble", metric="lds"))
        for k in sizes
    }
    rel = f.get("cross_seed", "-", "reliability", 0.5)
    if best and PEER not in f.values(
        "method", part="ensemble", metric="lds"
    ):  # else: measured side by side (peer_goals)
        common = [k for k in sizes if k in trak]
        if common:
            k = common[-1]
            text = "; ".join(f"K={c}: {fmt(best[c][0])} ({best[c][1]}) vs {trak[c]:.2f}" for c in common)
            out.append(
                (
                    "best ensemble's cross-seed LDS (50% removed) >= TRAK at equal K",
                    best[k][0] >= trak[k],
                    f"{text}; margin at K={k} {best[k][0] - trak[k]:+.3f}; target reliability {fmt(rel)}",
                )
            )
        else:
            k = sizes[-1]
            out.append(
                (
                    "best ensemble's cross-seed LDS (50% removed) vs TRAK",
                    None,
                    f"K={k}: {fmt(best[k][0])} ({best[k][1]}), target reliability {fmt(rel)}; no TRAK figure "
                    "measured on this model",
                )
            )

    out += peer_goals(f)
    flip = {m: f.get("flips", m, "auc") for m in f.values("method", part="flips", metric="auc")}
    validation = {m: v for m, v in flip.items() if m.split()[0] in VALIDATION_BASED}
    if validation and "loss" in flip:
        m = max(validation, key=lambda m: validation[m])
        out.append(
            (
                "best validation-based score finds flips at least as well as training loss (AUC)",
                validation[m] >= flip["loss"],
                f"{m} {fmt(validation[m])} vs loss {fmt(flip['loss'])}; margin {validation[m] - flip['loss']:+.3f}",
            )
        )

    removal = {
        m: f.get("removal", m, "delta_E_harmful", 0.05)
        for m in f.values("method", part="removal", metric="delta_E_harmful")
    }
    candidates = {m: v for m, v in removal.items() if m.split()[0] in VALIDATION_BASED and not math.isnan(v)}
    if candidates and "loss" in removal and "random" in removal:
        m = min(candidates, key=lambda m: candidates[m])
        se = f.get("removal", m, "delta_E_harmful_se", 0.05)
        met = candidates[m] < removal["loss"] and candidates[m] < removal["random"]
        out.append(
            (
                "removing the top 5% harmful lowers E more than 5% by loss or at random",
                met,
                f"{m} {candidates[m]:+.2e} (se {se:.1e}) vs loss {removal['loss']:+.2e}, random "
                f"{removal['random']:+.2e}",
            )
        )
    return out


def paired(f: Figures, method: str, drop: float, k: int) -> str:
    """Margin ± se: LDS of `method` minus the peer's (mean ensembles of seeds 0..K-1), its paired bootstrap se."""
    diff = f.get("peer_difference", method, "lds_difference", drop, k)
    return (
        ""
        if math.isnan(diff)
        else f"{diff:+.3f} ± {fmt(f.get('peer_difference', method, 'lds_difference_se', drop, k))}"
    )


def peer_goals(f: Figures) -> list[tuple[str, bool | None, str]]:
    """Issue 18's goals against the outside reference measured on the same targets, and the paired margins
    (LDS difference ± bootstrap se over the subsets) of each method at K = 1 and the largest K."""
    sizes = f.values("ensemble", part="ensemble", metric="lds")
    if PEER not in f.values("method", part="ensemble", metric="lds"):
        return []
    out: list[tuple[str, bool | None, str]] = []
    drop = 0.5
    rel = f.get("cross_seed", "-", "reliability", drop)
    close = [k for k in sizes if k in (10, 20)]
    if close:
        diffs = {k: f.get("ensemble", "trak", "lds", drop, k) - f.get("ensemble", PEER, "lds", drop, k) for k in close}
        text = "; ".join(
            f"K={k}: trak {fmt(f.get('ensemble', 'trak', 'lds', drop, k))} vs "
            f"{fmt(f.get('ensemble', PEER, 'lds', drop, k))} ({paired(f, 'trak', drop, k) or f'{d:+.3f}'})"
            for k, d in diffs.items()
        )
        out.append(
            (
                f"trak within 0.05 LDS of {PEER} at K = 10, 20 (50% kept)",
                all(d >= -0.05 for d in diffs.values()),
                f"{text}; reliability {fmt(rel)}",
            )
        )
    noisy = [k for k in sizes if k in (1, 5)]
    if noisy:
        met, parts = True, []
        for k in noisy:
            a, b = (
                f.get("ensemble_groups", "trak", "lds_mean", drop, k),
                f.get("ensemble_groups", PEER, "lds_mean", drop, k),
            )
            se = math.hypot(
                f.get("ensemble_groups", "trak", "lds_se", drop, k), f.get("ensemble_groups", PEER, "lds_se", drop, k)
            )
            met = met and a >= b - se
            margin = paired(f, "trak", drop, k)
            parts.append(
                f"K={k}: {fmt(a)} vs {fmt(b)} (se {fmt(se)})" + (f"; seeds 0..{k - 1}: {margin}" if margin else "")
            )
        out.append((f"trak within one standard error of {PEER} at K = 1, 5 (disjoint groups)", met, "; ".join(parts)))
    for d in f.values("fraction", part="equal_compute", metric="lds"):
        budgets = f.values("ensemble", part="equal_compute", metric="lds", fraction=d)
        labels = [m for m in f.values("method", part="equal_compute", metric="lds") if not m.startswith(PEER)]
        parts, met = [], True
        for k in budgets:
            best = max(
                ((v, m) for m in labels if not math.isnan(v := f.get("equal_compute", m, "lds", d, k))),
                default=(math.nan, ""),
            )
            peer = max(
                (
                    v
                    for m in (PEER, f"{PEER} standardized")
                    if not math.isnan(v := f.get("equal_compute", m, "lds", d, k))
                ),
                default=math.nan,
            )
            if math.isnan(peer) or math.isnan(best[0]):
                continue
            met = met and best[0] > peer
            parts.append(f"budget K={k}: {fmt(best[0])} ({best[1]}) vs {fmt(peer)}")
        out.append(
            (
                f"pipeline's best beats {PEER} at equal compute ({pct(d)} removed)",
                met if parts else None,
                "; ".join(parts),
            )
        )
    loss = {k: max(f.get("ensemble", m, "lds", drop, k) for m in ("loss", "loss standardized")) for k in sizes}
    exact = {
        k: max(f.get("ensemble", m, "lds", drop, k) for m in ("trajectory", "trajectory standardized")) for k in sizes
    }
    if not any(math.isnan(v) for v in loss.values()):
        text = "; ".join(f"K={k}: {fmt(exact[k])} vs {fmt(loss[k])}" for k in sizes)
        out.append(
            (
                "trajectory ensembles at least as good as loss at every K (50% kept, better rule)",
                all(exact[k] >= loss[k] for k in sizes),
                text,
            )
        )
    for d in f.values("fraction", part="peer_difference", metric="lds_difference"):
        methods = f.values("method", part="peer_difference", metric="lds_difference")
        text = "; ".join(
            f"{m} " + ", ".join(f"K={k} {paired(f, m, d, k)}" for k in (sizes[0], sizes[-1])) for m in methods
        )
        out.append((f"LDS margin over {PEER} ± paired se (bootstrap over the subsets), {pct(d)} removed", None, text))
    return out


def goal_lines(f: Figures) -> list[str]:
    body = [[goal, verdict(met), text] for goal, met, text in goals(f)]
    return ["### Goals", "", *table(["goal", "", "figures"], body)]


def gather(results: Path, experiments: Path) -> Path:
    """Write <results>.md: the summary, every experiment's section found in `results` (in the order of the
    experiment configs), the command of every experiment not run yet, and <results>/discussion.md."""
    names = sorted(p.stem for p in experiments.glob("*.yaml"))
    done = [n for n in names if (results / f"{n}.parquet").exists() and (results / f"{n}.md").exists()]
    lines = [
        "# Evaluation: how well the scores predict real retraining",
        "",
        "Written by `python -m pipeline.evaluate experiment=<name>` (conf/evaluate.yaml, conf/experiment/<name>.yaml); "
        f"rows in `{results}/<name>.parquet`. Each section gives the command that reproduces it.",
        "",
        "## Goals, per experiment",
        "",
    ]
    body = []
    for name in done:
        for goal, met, text in goals(Figures(pq.read_table(results / f"{name}.parquet"))):
            body.append([name, goal, verdict(met), text])
    lines += table(["experiment", "goal", "", "figures"], body)
    missing = [n for n in names if n not in done]
    if missing:
        lines += [
            "Not run yet (commands):",
            "",
            *(f"- `python -m pipeline.evaluate experiment={n}`" for n in missing),
            "",
        ]
    for name in done:
        lines += [(results / f"{name}.md").read_text()]
    notes = results / "discussion.md"
    if notes.exists():
        lines += [notes.read_text()]
    path = results.parent / f"{results.name}.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
