"""Assemble RUN/report/index.html: one self-contained page (inline CSS, figures as base64 PNG, no scripts).

Every piece of text that comes from the run (config values, labels, targets, input names, methods) goes
through `_e` (html.escape); markup is only ever built here.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from pipeline import ensembles, smoothness
from pipeline.methods import REGISTRY
from pipeline.io.files import atomic_path
from pipeline.report import figures
from pipeline.report.inputs import Ranking, Verify, mean_input_grads, read_manifest, read_rankings, read_verify
from pipeline.report.queries import DIRECTIONS, Queries, Query, predictions, read_queries

if TYPE_CHECKING:
    from pipeline.data import Dataset

TOP_K = 12
STAGE_ORDER = ("train", "score", "aggregate", "verify", "report")
TOP_FRACTION = 0.10  # the "10% most harmful" (largest influence_mean) of the histogram and the group tables
QUANTILE_BINS = 5  # regression: equal-count bins of the target
VALUES_SHOWN = 16  # values of a non-image input shown per sample
SIGN_CONVENTION = (
    "Positive influence = harmful: more weight on the sample raises validation error; "
    "removing it changes validation error by about -influence."
)
SENSITIVITY = (
    "Method sensitivity: influence = w · model output and input_grad = d(w · output)/dx of the trained model "
    "(w: influence.output_weights, ones when unset). No validation error is involved: large means a large "
    "weighted output, not harmful."
)
TARGET_COLUMN = {"classification": "label", "regression": "target"}
TABLE_COLUMNS = ("rank", "sample_id", "label", "target", "influence_mean", "influence_std", "input_grad_norm_mean", "train_loss_mean")


@dataclass(frozen=True)
class End:
    """One end of a method's ranking, as the report names it."""

    role: str  # id of its sample_id list (data-list attribute): harmful | helpful | largest | smallest
    title: str  # heading of its samples
    first: str  # order of its sample_id list
    effect: str  # what its samples do


@dataclass(frozen=True)
class Wording:
    """How a method's scores read: dE/d eps methods (positive = harmful) or sensitivity (w . output)."""

    top: End
    bottom: End
    share: str  # the top TOP_FRACTION of samples, in table headers and the histogram
    positive: str  # what influence > 0 means
    negative: str
    axis: str  # histogram x label
    grad: str  # the input gradient up to the input's name ("dE/d" + "x")
    red: str  # what red means in a gradient map
    red_short: str  # the same for the colour bar


ERROR = Wording(
    top=End("harmful", "Most harmful training samples", "most harmful first",
            "Giving these samples more weight would raise validation error the most."),
    bottom=End("helpful", "Most helpful training samples", "most helpful first",
               "Giving these samples more weight would lower validation error the most."),
    share="10% most harmful",
    positive="harmful",
    negative="helpful",
    axis="influence_mean   (left of 0: helpful, right of 0: harmful)",
    grad="dE/d",
    red="validation error rises if these pixels get brighter",
    red_short="brighter pixel raises val. error",
)
SENSITIVE = Wording(
    top=End("largest", "Training samples with the largest weighted output", "largest first",
            "The trained model's weighted output w · output is largest for these samples."),
    bottom=End("smallest", "Training samples with the smallest weighted output", "smallest first",
               "The trained model's weighted output w · output is smallest for these samples."),
    share="10% largest",
    positive="positive",
    negative="negative",
    axis="influence_mean = w · model output",
    grad="d(w·out)/d",
    red="w · output rises if these pixels get brighter",
    red_short="brighter pixel raises w · output",
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 20px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 21px; border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 17px; margin: 22px 0 6px; }
.sub { color: #666; margin-top: 0; }
.sign { background: #fff7e6; border-left: 5px solid #e67e22; padding: 10px 14px; font-size: 16px; margin: 16px 0; }
.verdict { padding: 10px 14px; font-size: 16px; margin: 16px 0; border-left: 5px solid #888; background: #f4f4f4; }
.verdict-smooth { border-color: #1e8449; background: #eafaf1; }
.verdict-groups-only { border-color: #d68910; background: #fef5e7; }
.verdict-non-smooth { border-color: #c0392b; background: #fdedec; }
.cards { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.cards > div { flex: 1 1 330px; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 10px; text-align: left; }
td { vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
table.kv th { background: none; color: #555; font-weight: 500; width: 1%; white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; }
figure { margin: 8px 0 16px; }
figcaption { color: #555; font-size: 14px; max-width: 900px; margin-top: 4px; }
.ids { font-size: 13px; color: #555; font-family: ui-monospace, Menlo, Consolas, monospace; margin: 2px 0 12px; }
.status-succeeded { color: #1e8449; font-weight: 600; }
.status-failed, .status-running, .status-interrupted { color: #c0392b; font-weight: 600; }
.pos { color: #b03a2e; } .neg { color: #1f618d; }
.muted { color: #777; font-size: 13px; }
.vec { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
.grad { color: #888; }
"""


def write_report(run_dir: Path, dataset: Dataset, final_status: str | None = None) -> Path:
    """Write RUN/report/index.html for the run in run_dir and return its path.

    dataset: the run's data (task, targets and training inputs, row = sample_id); the inputs are not stored in
    the run's outputs. final_status: shown instead of the manifest's status, which still says "running" while
    the report stage runs (the pipeline passes "succeeded": the report is only written when all else succeeded).
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    rankings = read_rankings(run_dir)
    target = TARGET_COLUMN[dataset.task]
    if any(target not in r.columns for r in rankings):
        raise ValueError(f"{run_dir / 'ranking.parquet'}: no {target} column, which task={dataset.task} needs")
    largest = max((int(r.columns["sample_id"].max()) for r in rankings if len(r)), default=-1)
    if largest >= dataset.n_train:
        raise ValueError(f"the dataset has {dataset.n_train} training samples but {run_dir / 'ranking.parquet'} has sample_id {largest}")
    verify = read_verify(run_dir, manifest)
    queries = read_queries(run_dir, manifest, dataset)
    page = _page(manifest, rankings, verify, queries, run_dir, dataset, final_status)
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
    """An influence value with its sign and a colour class (red = positive, e.g. harmful; blue = negative)."""
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
        "saved": ("path", "from_logits"),
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


def _wording(method: str) -> Wording:
    return SENSITIVE if method == "sensitivity" else ERROR


def _shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def _target_text(value: Any) -> str:
    """A label or target for tables and titles: class id, float, or [a, b, ...] for a k-wide target."""
    if np.ndim(value):
        return "[" + ", ".join(_fmt(v) for v in np.asarray(value, np.float64)) + "]"
    return _fmt(value)


def _values_text(values: np.ndarray, fmt: Callable[[Any], str]) -> str:
    """The first VALUES_SHOWN values of one sample's input (C order), and how many it has when there are more."""
    flat = np.asarray(values).ravel()
    shown = ", ".join(fmt(v) for v in flat[:VALUES_SHOWN])
    return shown if flat.size <= VALUES_SHOWN else f"{shown}, … ({flat.size} values)"


def _grad_name(wording: Wording, name: str) -> str:
    """The input gradient of one input: dE/dx for a one-letter name, dE/d(name) otherwise."""
    return f"{wording.grad}{name}" if len(name) == 1 else f"{wording.grad}({name})"


def _header(
    manifest: dict[str, Any], run_dir: Path, dataset: Dataset, methods: Sequence[str], final_status: str | None
) -> str:
    config = manifest.get("config") or {}
    section = lambda name: config.get(name) or {}  # noqa: E731
    train, influence = section("train"), section("influence")
    stages = manifest.get("stages") or {}
    source = dataset.name
    if section("data").get("path"):
        source = f"{source} ({section('data')['path']})"
    seeds = train.get("seeds")
    settings = [
        ("dataset", source),
        ("model", _model_text(section("model"))),
        ("optimizer", _optimizer_text(section("optimizer"))),
        ("epochs", train.get("epochs")),
        ("batch size", train.get("batch_size")),
        ("seeds", ", ".join(str(s) for s in seeds) if isinstance(seeds, (list, tuple)) else seeds),
        ("dtype", train.get("dtype")),
        ("training loss", train.get("loss")),
        ("method", influence.get("method")),
    ]
    if influence.get("method") == "sensitivity":
        weights = influence.get("output_weights")
        settings.append(("output weights w", ", ".join(_fmt(w) for w in weights) if weights else "ones"))
    else:
        settings.append(("objective E", influence.get("objective")))
    if influence.get("queries", "mean") != "mean":
        ids = influence.get("query_ids")
        shown = "all" if not ids else ", ".join(map(str, ids[:10])) + (f", … ({len(ids)} ids)" if len(ids) > 10 else "")
        settings.append(("queries", f"{influence['queries']} ({shown})"))
    classification = dataset.task == "classification"
    inputs = "<br>".join(
        f"{_e(name)}: {_e(_shape_text(shape))}{' (image)' if figures.is_image(shape) else ''}" for name, shape in dataset.input_shapes.items()
    )
    sizes = [
        ("task", _e(dataset.task)),
        ("training samples", _e(dataset.n_train)),
        ("validation samples", _e(dataset.n_val)),
        ("inputs" if len(dataset.input_shapes) > 1 else "input", inputs),
        ("classes", _e(dataset.num_classes)) if classification else ("target width", _e(dataset.output_dim)),
    ]
    status = final_status or str(manifest.get("status", "unknown"))
    status_html = f'<span class="status-{_e(status)}">{_e(status)}</span>'
    if final_status is None and manifest.get("error"):
        status_html += f" &mdash; {_e(manifest['error'])}"
    run_rows = [("status", status_html), ("config hash", _e(manifest.get("config_hash", "–")))]
    order = [s for s in STAGE_ORDER if s in stages] + sorted(s for s in stages if s not in STAGE_ORDER)
    timed = [(name, stages[name].get("seconds")) for name in order if isinstance(stages[name], dict)]
    run_rows += [(f"{name} stage", _e(f"{seconds:.1f} s" if seconds is not None else "–")) for name, seconds in timed]
    if timed:
        run_rows.append(("stages total", _e(f"{sum(s for _, s in timed if s is not None):.1f} s")))
    trained = (stages.get("train") or {}).get("seeds") or {}
    train_header = ("seed", "val_loss", "val_accuracy", "steps", "seconds") if classification else ("seed", "val_loss", "steps", "seconds")
    train_rows = [
        [_e(seed), _e(_fmt(s.get("val_loss")))]
        + ([_e(_fmt(s.get("val_accuracy")))] if classification else [])
        + [_e(_fmt(s.get("n_steps"))), _e(f"{s.get('seconds', float('nan')):.1f}")]
        for seed, s in trained.items()
    ]
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())
    parts = [
        "<h1>Influence report</h1>",
        f'<p class="sub">Run directory: <code>{_e(run_dir.resolve())}</code></p>',
    ]
    if any(m in REGISTRY and REGISTRY[m].exact for m in methods):  # the verdict is about the exact derivative
        parts.append(_verdict_box(stages))
    if any(_wording(m) is ERROR for m in methods):
        parts.append(_trust_note(stages, methods))
    if any(_wording(m) is ERROR for m in methods):
        parts.append(f'<p class="sign"><strong>{_e(SIGN_CONVENTION)}</strong></p>')
    if any(_wording(m) is SENSITIVE for m in methods):
        parts.append(f'<p class="sign"><strong>{_e(SENSITIVITY)}</strong></p>')
    parts += [
        '<div class="cards">',
        f"<div><h3>Run settings</h3>{_kv((k, _e(_fmt(v))) for k, v in settings)}</div>",
        f"<div><h3>Data</h3>{_kv(sizes)}"
        f"<h3>Run</h3>{_kv(run_rows)}</div>",
        "</div>",
    ]
    if train_rows:
        parts.append("<h3>Training result per seed</h3>" + _table(train_header, train_rows, numeric=range(len(train_header))))
    if versions:
        parts.append(f'<p class="muted">Versions: {_e(versions)}</p>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- per method


def _titles(rows: dict[str, np.ndarray], target: str) -> list[str]:
    return [
        f"#{rank}  id {sid}  {target} {_target_text(value)}\ninfluence {score:+.2e}"
        for rank, sid, value, score in zip(rows["rank"], rows["sample_id"], rows[target], rows["influence_mean"])
    ]


def _id_list(rows: dict[str, np.ndarray], end: End, method: str) -> str:
    ids = ", ".join(str(int(s)) for s in rows["sample_id"])
    return f'<p class="ids" data-list="{_e(end.role)}-{_e(method)}">sample_id, {_e(end.first)}: {ids}</p>'


def _cell(column: str, value: Any) -> str:
    if column == "influence_mean":
        return _score(value)
    if column == "influence_std":
        return _e(f"{value:.3e}")
    if column in TARGET_COLUMN.values():
        return _e(_target_text(value))
    return _e(_fmt(value))


def _sample_table(rows: dict[str, np.ndarray], inputs: dict[str, np.ndarray], grads: dict[str, np.ndarray], wording: Wording) -> str:
    """The samples' scores and label or target and, per input in inputs (name -> [n, *shape]), one left-aligned column
    with its values and, below them in grey, its mean input gradient."""
    columns = [c for c in TABLE_COLUMNS if c in rows]
    body = []
    for i in range(len(rows["sample_id"])):
        cells = [_cell(c, rows[c][i]) for c in columns]
        cells += [
            f'<span class="vec">{_e(_values_text(inputs[name][i], _fmt))}</span><br>'
            f'<span class="vec grad">{_e(_values_text(grads[name][i], lambda v: f"{v:+.2e}"))}</span>'
            for name in inputs
        ]
        body.append(cells)
    header = columns + list(inputs)
    names = ", ".join(f"<code>{_e(name)}</code>" for name in inputs)
    gradients = ", ".join(_e(_grad_name(wording, name)) for name in inputs)
    note = (
        f'<p class="muted">Input{"s" if len(inputs) > 1 else ""} {names}: the sample\'s values (C order, the first {VALUES_SHOWN} '
        f"at most) and, in grey below them, its input gradient {gradients} (mean over seeds).</p>"
    )
    return note + _table(header, body, numeric=range(len(columns)))


def _image_grid(
    rows: dict[str, np.ndarray], target: str, name: str, dataset: Dataset, grads: np.ndarray, limit: float, wording: Wording, method: str
) -> str:
    """One image input of the samples in rows, each image next to its gradient map."""
    x = dataset.x_train[name]
    gray = x.ndim == 3 or x.shape[-1] == 1
    image_range = (float(x.min()), float(x.max())) if gray else (0.0, 1.0)
    look = "gray, one scale for all images" if gray else "colour, contrast stretched per image"
    grad = _grad_name(wording, name)
    png = figures.sample_grid(x[rows["sample_id"]], grads, _titles(rows, target), image_range, limit, grad, f"{grad}  (red: {wording.red_short})")
    several = len(dataset.input_shapes) > 1
    caption = (
        (f"Input <code>{_e(name)}</code> ({_e(_shape_text(x.shape[1:]))}). " if several else "")
        + f"Each sample: the training image ({look}; title: rank, sample_id, {_e(target)}, influence_mean) and, to its right, "
        f"its input gradient {_e(grad)} (mean over seeds). <strong>Red = {_e(wording.red)}</strong>; blue = it falls; "
        f"white = no effect. One colour scale for every map of this method{' and input' if several else ''} "
        f"(&plusmn;{_e(f'{limit:.2e}')}, stronger values saturate)."
    )
    return _figure(png, f"samples, input {name}, method {method}", caption)


def _samples(ranking: Ranking, run_dir: Path, dataset: Dataset) -> str:
    """Both ends of the ranking: image grids with gradient maps for image inputs, a table with the others' values."""
    wording, target, shapes = _wording(ranking.method), TARGET_COLUMN[dataset.task], dataset.input_shapes
    ends = [(wording.top, ranking.head(TOP_K)), (wording.bottom, ranking.tail(TOP_K))]
    grads = mean_input_grads(run_dir, ranking.method, np.concatenate([rows["sample_id"] for _, rows in ends]), shapes)
    images = [name for name, shape in shapes.items() if figures.is_image(shape)]
    others = [name for name in shapes if name not in images]
    limits = {name: float(np.quantile(np.abs(figures.channel_sum(grads[name])), 0.99)) for name in images}
    out, start = [], 0
    for end, rows in ends:
        n = len(rows["sample_id"])
        mine = {name: g[start:start + n] for name, g in grads.items()}
        start += n
        out.append(f"<h3>{_e(end.title)} ({'top' if end is wording.top else 'bottom'} {n} by rank)</h3>")
        out.append(f'<p class="muted">{_e(end.effect)}</p>')
        out += [_image_grid(rows, target, name, dataset, mine[name], limits[name], wording, ranking.method) for name in images]
        if others:
            inputs = {name: dataset.x_train[name][rows["sample_id"]] for name in others}
            out.append(_sample_table(rows, inputs, {name: mine[name] for name in others}, wording))
        out.append(_id_list(rows, end, ranking.method))
    return "\n".join(out)


def _top(ranking: Ranking) -> tuple[np.ndarray, int, float | None]:
    """Mask of the TOP_FRACTION largest influence_mean (at least one sample), their count and where they begin."""
    n = len(ranking)
    k = max(1, math.ceil(TOP_FRACTION * n)) if n else 0
    top = ranking.columns["rank"] <= k
    threshold = float(ranking.columns["influence_mean"][top].min()) if k else None
    return top, k, threshold


def _share_table(ranking: Ranking, keys: Sequence[str], groups: list[tuple[list[str], np.ndarray]], wording: Wording) -> str:
    """One row per group of samples (its leading cells, markup, and its mask): count, mean influence and shares.

    A group whose share of the top TOP_FRACTION is at least 1.5x its share of the training set is bold.
    """
    n = len(ranking)
    top, k, _ = _top(ranking)
    rows = []
    for lead, mine in groups:
        share_all, share_top = mine.sum() / n, (mine & top).sum() / k
        cells = [
            *lead,
            _e(int(mine.sum())),
            _score(float(ranking.columns["influence_mean"][mine].mean())),
            _e(f"{100 * share_all:.1f}%"),
            _e(f"{100 * share_top:.1f}%"),
            _e(int((mine & top).sum())),
        ]
        if share_top >= 1.5 * share_all:
            cells = [f"<strong>{c}</strong>" for c in cells]
        rows.append(cells)
    header = (*keys, "count", "mean influence", "share of training set", f"share of {wording.share}", f"samples in {wording.share} (top {k})")
    return _table(header, rows, numeric=range(len(header)))


def _per_class(ranking: Ranking, wording: Wording) -> str:
    labels = ranking.columns["label"]
    groups = [([_e(int(label))], labels == label) for label in np.unique(labels)]
    note = (
        f'<p class="muted">Bold: classes whose share of the {_e(wording.share)} samples is at least 1.5 times their share '
        "of the training set, i.e. they hold more than their part of them"
        + (" (mislabelled or atypical examples often show up this way)" if wording is ERROR else "")
        + ".</p>"
    )
    return "\n".join(["<h3>Per class</h3>", note, _share_table(ranking, ("label",), groups, wording)])


def _per_quantile(ranking: Ranking, wording: Wording) -> str:
    """Regression: the samples in QUANTILE_BINS equal-count bins of the target (of its Euclidean norm when k-wide)."""
    target = ranking.columns["target"]
    values = target if target.ndim == 1 else np.linalg.norm(target, axis=1)
    edges = np.quantile(values, np.linspace(0, 1, QUANTILE_BINS + 1))
    bins = np.searchsorted(edges[1:-1], values, side="right")
    groups = [
        ([_e(f"Q{b + 1}"), _e(f"{_fmt(values[bins == b].min())} to {_fmt(values[bins == b].max())}")], bins == b)
        for b in range(QUANTILE_BINS) if (bins == b).any()
    ]
    what = "target" if target.ndim == 1 else f"Euclidean norm |target| of the {target.shape[1]} target values"
    note = (
        f'<p class="muted">Training samples in {QUANTILE_BINS} bins of about equal count by {_e(what)} (Q1: smallest), '
        f"with their mean influence. Bold: bins whose share of the {_e(wording.share)} samples is at least 1.5 times "
        "their share of the training set.</p>"
    )
    name = "target" if target.ndim == 1 else "|target|"
    return "\n".join(["<h3>By target quantile</h3>", note, _share_table(ranking, ("quantile", f"{name} range"), groups, wording)])


def _method_section(ranking: Ranking, run_dir: Path, dataset: Dataset) -> str:
    wording = _wording(ranking.method)
    values = ranking.columns["influence_mean"]
    _, _, threshold = _top(ranking)
    n_seeds = int(ranking.columns["n_seeds"].max()) if "n_seeds" in ranking.columns and len(ranking) else 1
    stats = (
        f"{len(ranking)} samples, mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}; "
        f"{int((values > 0).sum())} {wording.positive} (&gt; 0), {int((values < 0).sum())} {wording.negative} (&lt; 0); "
        f"median {_e(f'{np.median(values):+.2e}')}, range {_e(f'{values.min():+.2e}')} to {_e(f'{values.max():+.2e}')}."
    )
    histogram = _figure(
        figures.histogram(values, threshold, wording.share, wording.axis),
        f"histogram of influence_mean, method {ranking.method}",
        f"Distribution of influence_mean over all training samples ({stats}) "
        f"The dashed red line marks where the {_e(wording.share)} samples start.",
    )
    groups = _per_class(ranking, wording) if dataset.task == "classification" else _per_quantile(ranking, wording)
    return "\n".join([
        f"<h2>Method: {_e(ranking.method)}</h2>",
        _samples(ranking, run_dir, dataset),
        "<h3>Score distribution</h3>",
        histogram,
        groups,
    ])


def _seed_agreement(manifest: dict[str, Any], rankings: list[Ranking]) -> str:
    aggregate = (manifest.get("stages") or {}).get("aggregate") or {}
    recorded, scales = aggregate.get("seed_agreement") or {}, aggregate.get("seed_scale") or {}
    rows, disagreeing = [], []
    for ranking in rankings:
        n_seeds = int(ranking.columns["n_seeds"].max()) if "n_seeds" in ranking.columns and len(ranking) else 1
        value = recorded.get(ranking.method)
        if n_seeds <= 1:
            text = "one seed: nothing to compare"
        elif value is None:
            text = "not recorded (the aggregate stage did not run or gave no value)"
        else:
            text = _e(_fmt(value))
            if value < ensembles.DISAGREE_BELOW:
                disagreeing.append(ranking.method)
        seed_scale = scales.get(ranking.method) or {}
        shown = ", ".join(f"{seed}: {_fmt(v)}" for seed, v in seed_scale.items()) if len(seed_scale) > 1 else "–"
        rows.append([_e(ranking.method), _e(n_seeds), text, _e(shown)])
    rule = aggregate.get("ensemble", "mean")
    note = ""
    if disagreeing:
        note = (
            f'<p class="verdict verdict-groups-only"><strong>Seeds disagree for {_e(", ".join(disagreeing))}.</strong> '
            f"Their rankings correlate below {ensembles.DISAGREE_BELOW:g}: one training run's scores mostly reflect "
            "that run's randomness. Trust the ensemble over seeds (more <code>train.seeds</code>), not any one seed"
            + ("; <code>aggregate.ensemble=standardized</code> keeps a seed with larger scores from dominating." if rule == "mean" else ".")
            + "</p>"
        )
    return "\n".join([
        "<h2>Agreement between seeds</h2>",
        '<p class="muted">Spearman rank correlation of influence between independently trained seeds: near 1 means '
        "the ranking reflects the data rather than the randomness of one training run. Scale: each seed's root mean "
        f"square score. The ranking combines seeds by <code>aggregate.ensemble={_e(rule)}</code>.</p>",
        note,
        _table(("method", "seeds", "Spearman between seeds", "scale per seed"), rows, numeric=(1,)),
    ])


# ---------------------------------------------------------------------------------------------- queries


QUERY_NOUN = {"per_sample": "validation sample", "per_class": "class", "groups": "group"}
QUERY_OBJECTIVE = {
    "per_sample": "one per validation sample; E_q is that sample's validation objective alone",
    "per_class": "one per class; E_q is the mean validation objective over the class's validation samples",
    "groups": "one per group of validation samples (the data's group ids); E_q is the mean validation objective over the group",
}
QUERY_ENDS = {  # direction -> (figure row label, table title, colour of the figure's titles, what its samples do)
    "harmful": ("most harmful\n(raise its error)", "Most harmful", "#b03a2e", "more weight raises the query's error"),
    "helpful": ("most helpful\n(lower its error)", "Most helpful", "#1f618d", "more weight lowers the query's error"),
}


def _query_result(queries: Queries, query: Query, dataset: Dataset) -> str:
    """A sentence (markup) with the query's label or target and the prediction, or with its class's or group's size
    and accuracy (regression: mean |error|)."""
    model = f"seed {queries.seed}'s trained model"
    if queries.kind == "per_sample":
        target = _target_text(dataset.y_val[query.query_id])
        predicted = _target_text(predictions(dataset.task, query.outputs)[0])
        if dataset.task == "classification":
            verdict = '<strong class="pos">misclassified</strong>' if query.errors[0] else "correct"
            return f"Label {_e(target)}, predicted {_e(predicted)} by {model}: {verdict}."
        return f"Target {_e(target)}, predicted {_e(predicted)} by {model}: |error| {_e(_fmt(query.error))}."
    n = query.rows.size
    members = f"{n} validation sample{'s' if n != 1 else ''}"
    if dataset.task == "classification":
        return (f"{_e(members)}; {model} classifies {_e(int(n - query.errors.sum()))} of them correctly "
                f"(accuracy {_e(f'{1 - query.error:.3f}')}).")
    return f"{_e(members)}; mean |error| of {model}: {_e(_fmt(query.error))}."


def _query_overview(queries: Queries, dataset: Dataset) -> str:
    """One row per shown query, in the order shown: its result and its strongest harmful and helpful samples."""
    classification, per_sample = dataset.task == "classification", queries.kind == "per_sample"
    strongest = lambda q, d: f"{int(q.top[d]['sample_id'][0])} ({_score(float(q.top[d]['influence'][0]))})" if len(q.top[d]["sample_id"]) else "–"  # noqa: E731
    rows = []
    for q in queries.shown:
        if per_sample:
            target, predicted = dataset.y_val[q.query_id], predictions(dataset.task, q.outputs)[0]
            result = ('<span class="pos">misclassified</span>' if q.errors[0] else "correct") if classification else _e(_fmt(q.error))
            cells = [_e(q.query_id), _e(_target_text(target)), _e(_target_text(predicted)), result]
        else:
            cells = [_e(q.query_id), _e(q.rows.size), _e(f"{1 - q.error:.3f}" if classification else _fmt(q.error))]
        rows.append([*cells, strongest(q, "harmful"), strongest(q, "helpful")])
    target = TARGET_COLUMN[dataset.task]
    if per_sample:
        header = ["query (validation sample)", target, "predicted", "result" if classification else "|error|"]
    else:
        header = [f"query ({QUERY_NOUN[queries.kind]})", "validation samples", "accuracy" if classification else "mean |error|"]
    header += ["most harmful sample_id (influence)", "most helpful sample_id (influence)"]
    numeric = range(1, 3) if per_sample and classification else range(1, len(header) - 2)
    return f'<div data-list="queries">{_table(header, rows, numeric=numeric)}</div>'


def _query_table(query: Query, direction: str, dataset: Dataset, others: Sequence[str]) -> str:
    """A query's top samples of one direction: rank, sample_id, label or target, influence and, per non-image input
    in others, its first values (for image inputs the figure shows the images)."""
    top, target = query.top[direction], TARGET_COLUMN[dataset.task]
    ids = top["sample_id"]
    rows = [
        [_e(rank), _e(sid), _e(_target_text(dataset.y_train[sid])), _score(float(value))]
        + [f'<span class="vec">{_e(_values_text(dataset.x_train[name][sid], _fmt))}</span>' for name in others]
        for rank, sid, value in zip(top["rank"], ids, top["influence"])
    ]
    _, title, _, effect = QUERY_ENDS[direction]
    table = _table(("rank", "sample_id", target, "influence", *others), rows, numeric=range(4))
    return (f'<div data-list="{_e(direction)}-query-{_e(query.query_id)}"><p class="muted"><strong>{_e(title)} training samples'
            f"</strong> ({_e(effect)}), strongest first</p>{table}</div>")


def _query_ids(query: Query, direction: str) -> str:
    """The sample_ids of a query's top samples of one direction, strongest first (for copying; the figure shows them)."""
    ids = ", ".join(str(int(s)) for s in query.top[direction]["sample_id"])
    title = QUERY_ENDS[direction][1].lower()
    return f'<p class="ids" data-list="{_e(direction)}-query-{_e(query.query_id)}">sample_id, {_e(title)} first: {ids}</p>'


def _query_figure(queries: Queries, query: Query, dataset: Dataset, name: str) -> str:
    """Image input `name`: the query's image (per_sample) left of its most harmful and most helpful training images."""
    x_train, x_val = dataset.x_train[name], dataset.x_val[name]
    gray = x_train.ndim == 3 or x_train.shape[-1] == 1
    image_range = (float(min(x_train.min(), x_val.min())), float(max(x_train.max(), x_val.max()))) if gray else (0.0, 1.0)
    target = TARGET_COLUMN[dataset.task]
    rows = []
    for direction in DIRECTIONS:
        label, _, color, _ = QUERY_ENDS[direction]
        ids, values = query.top[direction]["sample_id"], query.top[direction]["influence"]
        titles = [f"id {sid}  {target} {_target_text(dataset.y_train[sid])}\n{value:+.2e}" for sid, value in zip(ids, values)]
        rows.append((label, color, x_train[ids], titles))
    per_sample = queries.kind == "per_sample"
    predicted = _target_text(predictions(dataset.task, query.outputs)[0])
    title = f"query: val. {query.query_id}\n{target} {_target_text(dataset.y_val[query.query_id])}, pred. {predicted}"
    png = figures.query_samples(x_val[query.query_id] if per_sample else None, title, rows, image_range)
    several = len(dataset.input_shapes) > 1
    caption = (
        (f"Input <code>{_e(name)}</code>. " if several else "")
        + (f"Left: the query, validation sample {_e(query.query_id)}. " if per_sample else "")
        + f"Top row: its {len(rows[0][2])} most harmful training samples, bottom row: its {len(rows[1][2])} most helpful, "
        f"strongest first (title: sample_id, {_e(target)}, influence; "
        + ("gray, one scale for all images)." if gray else "colour, contrast stretched per image).")
    )
    return _figure(png, f"query {query.query_id}, input {name}: most harmful and most helpful training samples", caption)


def _query_block(queries: Queries, query: Query, dataset: Dataset) -> str:
    """One query: what it is and how the model does on it, its images or values, its top harmful and helpful samples."""
    shapes = dataset.input_shapes
    images = [name for name, shape in shapes.items() if figures.is_image(shape)]
    others = [name for name in shapes if name not in images]
    heading = f"Query {query.query_id}: {QUERY_NOUN[queries.kind]} {query.query_id}"
    lines = [_query_result(queries, query, dataset)]
    if queries.kind == "per_sample":
        lines += [f'Input <code>{_e(name)}</code>: <span class="vec">{_e(_values_text(dataset.x_val[name][query.query_id], _fmt))}</span>'
                  for name in others]
    out = [f'<h3 id="query-{_e(query.query_id)}">{_e(heading)}</h3>', f"<p>{'<br>'.join(lines)}</p>"]
    out += [_query_figure(queries, query, dataset, name) for name in images]
    if others:
        out += ['<div class="cards">', *(f"<div>{_query_table(query, d, dataset, others)}</div>" for d in DIRECTIONS), "</div>"]
    else:
        out += [_query_ids(query, d) for d in DIRECTIONS]
    return "\n".join(out)


def _queries_section(queries: Queries, dataset: Dataset) -> str:
    """influence.queries: which training samples drove a few single validation samples (or classes, or groups)."""
    kind, n, classification = queries.kind, len(queries.shown), dataset.task == "classification"
    if kind == "per_sample":
        worst = "misclassified first" if classification else "largest |error| first"
    else:
        worst = "lowest accuracy first" if classification else "largest mean |error| first"
    wrong = f"; {queries.n_wrong} of the {queries.n_queries} are misclassified" if queries.n_wrong is not None else ""
    seeds = queries.seeds.replace(",", ", ")
    intro = (
        f"<code>influence.queries={_e(kind)}</code>: {queries.n_queries} queries, {_e(QUERY_OBJECTIVE[kind])}. "
        f"Shown: {n} of them, {_e(worst)} (predictions of seed {_e(queries.seed)}'s trained model{_e(wrong)}), then by "
        "query id. Any query's samples: <code>python -m pipeline.top --run RUN --query ID</code>."
    )
    sign = (
        f"For query q, influence = dE_q/d eps_i (mean over seed{'s' if ',' in queries.seeds else ''} {_e(seeds)}). "
        "Harmful (&gt; 0): more weight on training sample i raises the query's validation error; removing it changes "
        "E_q by about -influence. Helpful (&lt; 0): more weight lowers the query's error."
    )
    return "\n".join([
        f"<h2>Queries: the most harmful and most helpful training samples per {_e(QUERY_NOUN[kind])}</h2>",
        f'<p class="muted">{intro}</p>',
        f'<p class="sign">{sign}</p>',
        _query_overview(queries, dataset),
        *(_query_block(queries, q, dataset) for q in queries.shown),
    ])


# ---------------------------------------------------------------------------------------------- verify


def _verdict_box(stages: dict[str, Any]) -> str:
    """At the top of the page: do these scores predict removing samples from this run (verify smoothness)?"""
    smooth = (stages.get("verify") or {}).get("smoothness")
    if not smooth:
        return (
            '<p class="verdict verdict-unknown"><strong>Predictive power not checked.</strong> The scores are exact '
            "derivatives of this training run; whether they predict what removing samples does depends on how smooth "
            "training is. Add <code>verify</code> to <code>stages</code> to find out.</p>"
        )
    kind = str(smooth.get("verdict"))
    title = {"smooth": "Scores predict removals (smooth run).", "groups-only": "Scores predict group removals only.", "non-smooth": "Scores do not predict removals (non-smooth run)."}
    return f'<p class="verdict verdict-{_e(kind)}"><strong>{_e(title.get(kind, kind))}</strong> {_e(smooth.get("explanation", ""))}</p>'


def _trust_note(stages: dict[str, Any], methods: Sequence[str]) -> str:
    """Which method's scores to trust for "what if I retrain without these samples", and why."""
    verdict = ((stages.get("verify") or {}).get("smoothness") or {}).get("verdict")
    agreement = ((stages.get("aggregate") or {}).get("seed_agreement") or {})
    if verdict == "smooth" and "trajectory" in methods:
        choice, why = "trajectory", "training is smooth here, so the exact derivative of this run predicts removals."
    elif "trak" in methods:
        why = "it estimates the effect over training randomness, which is what retraining measures"
        if verdict in ("groups-only", "non-smooth"):
            why += ", while training here is not smooth enough for the exact derivative to predict removals."
        elif "trajectory" in methods:
            why += "; the exact scores stay the derivative of this one run (add verify to check whether they predict removals)."
        else:
            why += "."
        choice = "trak"
    elif verdict in ("groups-only", "non-smooth"):
        choice = "an ensemble over seeds"
        why = "training here is not smooth, so one run's derivative mostly reflects its randomness; score several train.seeds with aggregate.ensemble=standardized, or add influence=trak."
    else:
        return ""
    seeds = agreement.get(choice)
    spread = f" Its seeds agree at Spearman {_fmt(seeds)}." if isinstance(seeds, (int, float)) else ""
    return f'<p class="verdict verdict-unknown"><strong>To predict retraining, trust {_e(choice)}:</strong> {_e(why)}{_e(spread)}</p>'


def _smoothness_section(smooth: dict[str, Any]) -> str:
    """The ladder: median relative deviation of the linear prediction from retraining, per unit and step."""
    groups = {f"random groups of {float(kind.split()[-1]):.0%}" if kind.startswith("group ") else kind: v for kind, v in smooth["groups"].items()}
    ladders = {"single samples": smooth["single"], **groups}
    steps = smooth["single"]["steps"]
    rows = [[_e(kind), *(_e(_fmt(m)) for m in ladder["median_deviation"]), _e(_fmt(ladder["linear_up_to"]))] for kind, ladder in ladders.items()]
    png = figures.smoothness_ladder(steps, {kind: ladder["median_deviation"] for kind, ladder in ladders.items()})
    caption = (
        "Weights of a sample (or a random group) moved from 1 to 1 - s and the model retrained on the same schedule: "
        "median of |actual - predicted| / max(|actual|, |predicted|) over the units, where predicted = -s &times; influence. "
        f"Below the dashed line ({smoothness.MAX_DEVIATION:g}) the derivative predicts the change; s = 1 is removal. "
        f"A relative perturbation of {_e(_fmt(smooth.get('initial_perturbation')))} of the initial weights grew "
        f"{_e(_fmt(smooth.get('perturbation_growth')))}x over training."
    )
    replay = smooth.get("float64_replay")
    if replay:
        caption += (
            f" This float32 run's influence against a float64 replay of the same run (n={_e(replay['n'])}): median relative "
            f"error {_e(_fmt(replay['median_relative_error']))}, Spearman {_e(_fmt(replay['spearman']))}."
        )
    header = ("unit", *(f"s={_fmt(s)}" for s in steps), "linear up to s")
    return (
        "<h3>Smoothness: does the derivative predict finite changes?</h3>"
        + _table(header, rows, numeric=range(1, len(header)))
        + _figure(png, "smoothness ladder", caption)
    )



def _gradcheck_text(kind: str) -> str:
    """What a gradcheck kind checks: eps, x (a single input) or x.<name> (one of several inputs)."""
    if kind == "eps":
        return "weight eps_i: influence vs finite difference of retraining"
    if kind == "x":
        return "features x_i along a random direction: input_grad . u vs finite difference"
    if kind.startswith("x."):
        return f"input {kind[2:]} along a random direction: input_grad.{kind[2:]} . u vs finite difference"
    return ""


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
    if verify.summary.get("smoothness"):
        out.append(_smoothness_section(verify.summary["smoothness"]))
    if verify.gradcheck is not None and len(verify.gradcheck["sample_id"]):
        step = verify.summary.get("fd_step")
        rows = [
            [_e(kind), _e(_gradcheck_text(kind)), _e(n), _e(f"{median:.2e}"), _e(f"{high:.2e}")]
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
    queries: Queries | None,
    run_dir: Path,
    dataset: Dataset,
    final_status: str | None,
) -> str:
    sections = [_header(manifest, run_dir, dataset, [r.method for r in rankings], final_status)]
    sections += [_method_section(r, run_dir, dataset) for r in rankings]
    if queries is not None:
        sections.append(_queries_section(queries, dataset))
    sections.append(_seed_agreement(manifest, rankings))
    if verify is not None:
        sections.append(_verify_section(verify, ((manifest.get("config") or {}).get("influence") or {}).get("method")))
    title = f"Influence report: {dataset.name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
