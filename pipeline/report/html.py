"""Assemble RUN/report/index.html: one self-contained page (inline CSS, figures as base64 PNG, no scripts).

Every piece of text that comes from the run (config values, labels, methods) goes through `_e`
(html.escape); markup is only ever built here.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.io.files import atomic_path
from pipeline.report import figures
from pipeline.report.inputs import Ranking, Verify, mean_input_grads, read_manifest, read_rankings, read_verify

TOP_K = 12
STAGE_ORDER = ("train", "score", "aggregate", "verify", "report")
HARMFUL_FRACTION = 0.10
SIGN_CONVENTION = (
    "Positive influence = harmful: more weight on the sample raises validation error; "
    "removing it changes validation error by about -influence."
)
TABLE_COLUMNS = ("rank", "sample_id", "label", "influence_mean", "influence_std", "input_grad_norm_mean", "train_loss_mean")
GRADCHECK_KINDS = {
    "eps": "weight eps_i: influence vs finite difference of retraining",
    "x": "features x_i along a random direction: input_grad . u vs finite difference",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 20px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 21px; border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 17px; margin: 22px 0 6px; }
.sub { color: #666; margin-top: 0; }
.sign { background: #fff7e6; border-left: 5px solid #e67e22; padding: 10px 14px; font-size: 16px; margin: 16px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.cards > div { flex: 1 1 330px; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 10px; text-align: left; }
th { background: #f4f4f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
table.kv th { background: none; color: #555; font-weight: 500; width: 1%; white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; }
figure { margin: 8px 0 16px; }
figcaption { color: #555; font-size: 14px; max-width: 900px; margin-top: 4px; }
.ids { font-size: 13px; color: #555; font-family: ui-monospace, Menlo, Consolas, monospace; margin: 2px 0 12px; }
.status-succeeded { color: #1e8449; font-weight: 600; }
.status-failed, .status-running { color: #c0392b; font-weight: 600; }
.pos { color: #b03a2e; } .neg { color: #1f618d; }
.muted { color: #777; font-size: 13px; }
"""


def write_report(run_dir: Path, x_train: np.ndarray, input_shape: tuple[int, ...]) -> Path:
    """Write RUN/report/index.html for the finished run in run_dir and return its path.

    x_train: [N, d] float32 training features (row = sample_id), not stored in the run's outputs;
    input_shape: one sample's shape, e.g. (8, 8, 1); three dimensions mean images.
    """
    run_dir = Path(run_dir)
    input_shape = tuple(int(s) for s in input_shape)
    x_train = np.asarray(x_train)
    x_train = x_train.reshape(x_train.shape[0], -1)
    if x_train.shape[1] != math.prod(input_shape):
        raise ValueError(f"x_train has {x_train.shape[1]} features per sample, input_shape {input_shape} needs {math.prod(input_shape)}")
    manifest = read_manifest(run_dir)
    rankings = read_rankings(run_dir)
    largest = max((int(r.columns["sample_id"].max()) for r in rankings if len(r)), default=-1)
    if largest >= x_train.shape[0]:
        raise ValueError(f"x_train has {x_train.shape[0]} rows but {run_dir / 'ranking.parquet'} has sample_id {largest}")
    verify = read_verify(run_dir, manifest)
    page = _page(manifest, rankings, verify, run_dir, x_train, input_shape)
    path = run_dir / "report" / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- pieces


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Numbers for tables: integers as is, floats to 4 significant digits (scientific when small/large)."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "–"
        if v == 0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(value)


def _score(value: float) -> str:
    """An influence value with its sign and a colour class (red = harmful, blue = helpful)."""
    css = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<span class="{css}">{_e(f"{value:+.3e}")}</span>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _figure(png: bytes, alt: str, caption: str) -> str:
    """caption is trusted markup built in this module (its variable parts already escaped)."""
    return f"<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """rows hold markup (escape beforehand); columns listed in numeric are right-aligned."""
    right = set(numeric)
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in right else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in right else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column key/value table; values are markup (escape beforehand)."""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------- header


def _model_text(model: dict[str, Any]) -> str:
    name = model.get("name", "?")
    details = {
        "mlp": ("hidden", "activation", "dropout", "batch_norm"),
        "cnn": ("filters", "kernel_size", "dropout", "batch_norm"),
        "custom": ("builder", "from_logits"),
    }.get(name, ())
    parts = [f"{key}={model[key]}" for key in details if key in model and model[key] not in (None, False, 0, 0.0)]
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def _optimizer_text(opt: dict[str, Any]) -> str:
    name = opt.get("name", "?")
    parts = [f"lr={_fmt(opt.get('lr'))}"]
    if name == "momentum":
        parts.append(f"momentum={_fmt(opt.get('momentum'))}" + (", nesterov" if opt.get("nesterov") else ""))
    elif name == "adam":
        parts += [f"beta_1={_fmt(opt.get('beta_1'))}", f"beta_2={_fmt(opt.get('beta_2'))}", f"epsilon={_fmt(opt.get('epsilon'))}"]
    return f"{name} ({', '.join(parts)})"


def _header(manifest: dict[str, Any], run_dir: Path) -> str:
    config = manifest.get("config") or {}
    section = lambda name: config.get(name) or {}  # noqa: E731
    data, train, influence = manifest.get("data") or {}, section("train"), section("influence")
    stages = manifest.get("stages") or {}
    dataset = data.get("name") or section("data").get("source", "?")
    if section("data").get("path"):
        dataset = f"{dataset} ({section('data')['path']})"
    seeds = train.get("seeds")
    settings = [
        ("dataset", dataset),
        ("model", _model_text(section("model"))),
        ("optimizer", _optimizer_text(section("optimizer"))),
        ("epochs", train.get("epochs")),
        ("batch size", train.get("batch_size")),
        ("seeds", ", ".join(str(s) for s in seeds) if isinstance(seeds, (list, tuple)) else seeds),
        ("dtype", train.get("dtype")),
        ("training loss", train.get("loss")),
        ("method", influence.get("method")),
        ("objective E", influence.get("objective")),
    ]
    sizes = [
        ("training samples", data.get("n_train")),
        ("validation samples", data.get("n_val")),
        ("features", data.get("n_features")),
        ("input shape", " x ".join(str(s) for s in data.get("input_shape") or []) or None),
        ("classes", data.get("num_classes")),
    ]
    status = str(manifest.get("status", "unknown"))
    status_html = f'<span class="status-{_e(status)}">{_e(status)}</span>'
    if manifest.get("error"):
        status_html += f" &mdash; {_e(manifest['error'])}"
    run_rows = [("status", status_html), ("config hash", _e(manifest.get("config_hash", "–")))]
    order = [s for s in STAGE_ORDER if s in stages] + sorted(s for s in stages if s not in STAGE_ORDER)
    timed = [(name, stages[name].get("seconds")) for name in order if isinstance(stages[name], dict)]
    run_rows += [(f"{name} stage", _e(f"{seconds:.1f} s" if seconds is not None else "–")) for name, seconds in timed]
    if timed:
        run_rows.append(("stages total", _e(f"{sum(s for _, s in timed if s is not None):.1f} s")))
    trained = (stages.get("train") or {}).get("seeds") or {}
    train_rows = [
        (_e(seed), _e(_fmt(s.get("val_loss"))), _e(_fmt(s.get("val_accuracy"))), _e(_fmt(s.get("n_steps"))), _e(f"{s.get('seconds', float('nan')):.1f}"))
        for seed, s in trained.items()
    ]
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())
    parts = [
        "<h1>Influence report</h1>",
        f'<p class="sub">Run directory: <code>{_e(run_dir.resolve())}</code></p>',
        f'<p class="sign"><strong>{_e(SIGN_CONVENTION)}</strong></p>',
        '<div class="cards">',
        f"<div><h3>Run settings</h3>{_kv((k, _e(_fmt(v))) for k, v in settings)}</div>",
        f"<div><h3>Data</h3>{_kv((k, _e(_fmt(v))) for k, v in sizes)}"
        f"<h3>Run</h3>{_kv(run_rows)}</div>",
        "</div>",
    ]
    if train_rows:
        parts.append("<h3>Training result per seed</h3>" + _table(("seed", "val_loss", "val_accuracy", "steps", "seconds"), train_rows, numeric=range(5)))
    if versions:
        parts.append(f'<p class="muted">Versions: {_e(versions)}</p>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- per method


def _titles(rows: dict[str, np.ndarray]) -> list[str]:
    return [
        f"#{rank}  id {sid}  label {label}\ninfluence {score:+.2e}"
        for rank, sid, label, score in zip(rows["rank"], rows["sample_id"], rows["label"], rows["influence_mean"])
    ]


def _id_list(rows: dict[str, np.ndarray], role: str, method: str) -> str:
    ids = ", ".join(str(int(s)) for s in rows["sample_id"])
    order = "most harmful first" if role == "harmful" else "most helpful first"
    return f'<p class="ids" data-list="{_e(role)}-{_e(method)}">sample_id, {order}: {ids}</p>'


def _sample_table(rows: dict[str, np.ndarray]) -> str:
    columns = [c for c in TABLE_COLUMNS if c in rows]
    body = []
    for i in range(len(rows["sample_id"])):
        body.append([_score(rows[c][i]) if c == "influence_mean" else _e(f"{rows[c][i]:.3e}") if c == "influence_std"
                     else _e(_fmt(rows[c][i])) for c in columns])
    return _table(columns, body, numeric=range(len(columns)))


def _samples(ranking: Ranking, run_dir: Path, x_train: np.ndarray, input_shape: tuple[int, ...]) -> str:
    """The most harmful and most helpful samples: image grids with dE/dx maps, or tables."""
    groups = [("harmful", "Most harmful", ranking.head(TOP_K)), ("helpful", "Most helpful", ranking.tail(TOP_K))]
    is_image = len(input_shape) == 3
    out = []
    if is_image:
        grads = {role: mean_input_grads(run_dir, ranking.method, rows["sample_id"]) for role, _, rows in groups}
        maps = np.concatenate([g.reshape(len(g), *input_shape).sum(axis=-1).ravel() for g in grads.values()])
        limit = float(np.quantile(np.abs(maps), 0.99)) if maps.size else 1.0
        gray = input_shape[-1] == 1
        image_range = (float(x_train.min()), float(x_train.max())) if gray else (0.0, 1.0)
        look = "gray, one scale for all images" if gray else "colour, contrast stretched per image"
    for role, title, rows in groups:
        word = "raise" if role == "harmful" else "lower"
        out.append(f"<h3>{title} training samples (top {len(rows['sample_id'])} by rank)</h3>")
        out.append(f'<p class="muted">Giving these samples more weight would {word} validation error the most.</p>')
        if is_image:
            png = figures.sample_grid(
                x_train[rows["sample_id"]], grads[role], input_shape, _titles(rows), image_range, limit
            )
            caption = (
                f"Each sample: the training image ({look}; title: rank, sample_id, label, influence_mean) and, to its right, "
                f"its input gradient dE/dx (mean over seeds). <strong>Red = validation error rises if these pixels get "
                f"brighter</strong>; blue = it falls; white = no effect. One colour scale for every map of this method "
                f"(&plusmn;{_e(f'{limit:.2e}')}, stronger values saturate)."
            )
            out.append(_figure(png, f"{title} samples, method {ranking.method}", caption))
        else:
            out.append(_sample_table(rows))
        out.append(_id_list(rows, role, ranking.method))
    return "\n".join(out)


def _per_class(ranking: Ranking) -> tuple[str, float | None]:
    """Per-class table and the influence value where the 10% most harmful begin.

    A class whose share of the 10% most harmful is at least 1.5x its share of the training set is bold.
    """
    cols = ranking.columns
    n = len(ranking)
    k = max(1, math.ceil(HARMFUL_FRACTION * n)) if n else 0
    top = cols["rank"] <= k
    threshold = float(cols["influence_mean"][top].min()) if k else None
    rows = []
    for label in np.unique(cols["label"]):
        mine = cols["label"] == label
        share_all, share_top = mine.sum() / n, (mine & top).sum() / k
        cells = [
            _e(int(label)),
            _e(int(mine.sum())),
            _score(float(cols["influence_mean"][mine].mean())),
            _e(f"{100 * share_all:.1f}%"),
            _e(f"{100 * share_top:.1f}%"),
            _e(int((mine & top).sum())),
        ]
        if share_top >= 1.5 * share_all:
            cells = [f"<strong>{c}</strong>" for c in cells]
        rows.append(cells)
    header = ("label", "count", "mean influence", "share of training set", "share of 10% most harmful", f"samples in 10% most harmful (top {k})")
    return _table(header, rows, numeric=range(6)), threshold


def _method_section(ranking: Ranking, run_dir: Path, x_train: np.ndarray, input_shape: tuple[int, ...]) -> str:
    values = ranking.columns["influence_mean"]
    table, threshold = _per_class(ranking)
    n_seeds = int(ranking.columns["n_seeds"].max()) if "n_seeds" in ranking.columns and len(ranking) else 1
    stats = (
        f"{len(ranking)} samples, mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}; "
        f"{int((values > 0).sum())} harmful (&gt; 0), {int((values < 0).sum())} helpful (&lt; 0); "
        f"median {_e(f'{np.median(values):+.2e}')}, range {_e(f'{values.min():+.2e}')} to {_e(f'{values.max():+.2e}')}."
    )
    histogram = _figure(
        figures.histogram(values, threshold),
        f"histogram of influence_mean, method {ranking.method}",
        f"Distribution of influence_mean over all training samples ({stats}) "
        "The dashed red line marks where the 10% most harmful samples start.",
    )
    return "\n".join([
        f"<h2>Method: {_e(ranking.method)}</h2>",
        _samples(ranking, run_dir, x_train, input_shape),
        "<h3>Score distribution</h3>",
        histogram,
        "<h3>Per class</h3>",
        '<p class="muted">Bold: classes whose share of the 10% most harmful samples is at least 1.5 times their share '
        "of the training set, i.e. they hold more than their part of the harmful samples (mislabelled or atypical "
        "examples often show up this way).</p>",
        table,
    ])


def _seed_agreement(manifest: dict[str, Any], rankings: list[Ranking]) -> str:
    recorded = ((manifest.get("stages") or {}).get("aggregate") or {}).get("seed_agreement")
    rows = []
    for ranking in rankings:
        n_seeds = int(ranking.columns["n_seeds"].max()) if "n_seeds" in ranking.columns and len(ranking) else 1
        value = (recorded or {}).get(ranking.method)
        if n_seeds <= 1:
            text = "one seed: nothing to compare"
        elif value is None:
            text = "not recorded (the aggregate stage did not run or gave no value)"
        else:
            text = _e(_fmt(value))
        rows.append([_e(ranking.method), _e(n_seeds), text])
    return "\n".join([
        "<h2>Agreement between seeds</h2>",
        '<p class="muted">Spearman rank correlation of influence between independently trained seeds: near 1 means '
        "the ranking reflects the data rather than the randomness of one training run.</p>",
        _table(("method", "seeds", "Spearman between seeds"), rows, numeric=(1,)),
    ])


# ---------------------------------------------------------------------------------------------- verify


def _verify_section(verify: Verify, method: str | None) -> str:
    """Leave-one-out scatter and gradient-check table/plot; method: the one the verify stage checked."""
    whose = f" of method {_e(method)}" if method else ""
    out = [
        "<h2>Checks against real retraining (verify stage)</h2>",
        '<p class="muted">The model was retrained with one sample changed, on the same batches, and the measured '
        f"change of the validation objective E compared with what the scores{whose} predict.</p>",
    ]
    if verify.loo is not None and len(verify.loo["sample_id"]):
        corr = verify.loo_correlations()
        n = len(verify.loo["sample_id"])
        text = ", ".join(f"{name} {corr[name]:.4f}" if not math.isnan(corr[name]) else f"{name} –" for name in ("pearson", "spearman", "kendall"))
        png = figures.loo_scatter(verify.loo["predicted_change"], verify.loo["actual_change"], verify.loo["seed"])
        caption = (
            f"<strong>Leave-one-out (n={n}): {_e(text)}.</strong> Each point is one training sample removed and the model "
            "retrained: x = predicted change of E (-influence), y = measured change. Points on the dashed y = x line "
            "are predicted exactly; above 0 means removing the sample made validation error worse."
        )
        out += ["<h3>Leave-one-out</h3>", _figure(png, "leave-one-out predicted vs actual change", caption)]
    if verify.gradcheck is not None and len(verify.gradcheck["sample_id"]):
        step = verify.summary.get("fd_step")
        rows = [
            [_e(kind), _e(GRADCHECK_KINDS.get(kind, "")), _e(n), _e(f"{median:.2e}"), _e(f"{high:.2e}")]
            for kind, n, median, high in verify.gradcheck_rows()
        ]
        step_text = f" with step h = {_e(_fmt(step))}" if step is not None else ""
        png = figures.relative_errors(verify.gradcheck["kind"], verify.gradcheck["relative_error"])
        out += [
            "<h3>Gradient check</h3>",
            f'<p class="muted">Central finite differences of retraining{step_text}; relative error '
            "|predicted - measured| / max(|predicted|, |measured|). In float32 rounding limits agreement to about 1e-2; "
            "float64 runs agree to about 1e-6 or better.</p>",
            '<div class="cards"><div>',
            _table(("kind", "what is checked", "n", "median relative error", "max relative error"), rows, numeric=(2, 3, 4)),
            "</div><div>",
            _figure(png, "gradcheck relative errors", "Relative error of each checked sample (log scale); bar = median."),
            "</div></div>",
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- page


def _page(
    manifest: dict[str, Any],
    rankings: list[Ranking],
    verify: Verify | None,
    run_dir: Path,
    x_train: np.ndarray,
    input_shape: tuple[int, ...],
) -> str:
    sections = [_header(manifest, run_dir)]
    sections += [_method_section(r, run_dir, x_train, input_shape) for r in rankings]
    sections.append(_seed_agreement(manifest, rankings))
    if verify is not None:
        sections.append(_verify_section(verify, ((manifest.get("config") or {}).get("influence") or {}).get("method")))
    title = f"Influence report: {(manifest.get('data') or {}).get('name', run_dir.name)}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
