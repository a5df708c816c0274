"""The report's view model: what RUN/report/index.html shows, as small frozen dataclasses of formatted text.

`build_page` turns what write_report read (manifest, rankings, verify, queries, the Dataset) into a Page. Every
decision about what to show and how to word it (which end of a ranking is "harmful", which method to trust, the
verdict, number formats) is made here; the Jinja templates in templates/ only lay the Page out and escape it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from markupsafe import Markup

from pipeline import ensembles, smoothness
from pipeline.config import OPTIMIZER_COMMON, OPTIMIZER_KERNELS, OPTIMIZERS, SCHEDULE_SETTINGS
from pipeline.methods import REGISTRY, Method
from pipeline.models import MODELS
from pipeline.report import figures
from pipeline.report.inputs import Ranking, Verify, mean_input_grads
from pipeline.report.queries import DIRECTIONS, Queries, Query, predictions
from pipeline.results import AggregateResult, Ladder, SmoothnessCheck, TrainResult, VerifyResult, stage_seconds

if TYPE_CHECKING:
    from pipeline.data import Dataset

R = TypeVar("R")

TOP_K = 12
STAGE_ORDER = ("train", "score", "aggregate", "verify", "report")
TOP_FRACTION = 0.10  # the "10% most harmful" (largest influence_mean) of the histogram and the group tables
QUANTILE_BINS = 5  # regression: equal-count bins of the target
VALUES_SHOWN = 16  # values of a non-image input shown per sample
GRID_IMAGES = 6  # images per row of a grid without gradient maps
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
NO_INPUT_GRAD = "Input gradients were not computed (influence.input_grad=false)."
TABLE_COLUMNS = (
    "rank",
    "sample_id",
    "label",
    "target",
    "influence_mean",
    "influence_std",
    "input_grad_norm_mean",
    "train_loss_mean",
)
VERDICT_TITLES = {
    "smooth": "Scores predict removals (smooth run).",
    "groups-only": "Scores predict group removals only.",
    "non-smooth": "Scores do not predict removals (non-smooth run).",
}
QUERY_NOUN = {"per_sample": "validation sample", "per_class": "class", "groups": "group"}
QUERY_OBJECTIVE = {
    "per_sample": "one per validation sample; E_q is that sample's validation objective alone",
    "per_class": "one per class; E_q is the mean validation objective over the class's validation samples",
    "groups": "one per group of validation samples (the data's group ids); E_q is the mean validation objective over "
    "the group",
}


@dataclass(frozen=True)
class QueryEnd:
    """One direction of a query's samples, as the report names it."""

    label: str  # row label in the query figure
    title: str  # heading of its table
    color: str  # colour of its titles in the figure
    effect: str  # what its samples do


QUERY_ENDS = {
    "harmful": QueryEnd(
        "most harmful\n(raise its error)", "Most harmful", "#b03a2e", "more weight raises the query's error"
    ),
    "helpful": QueryEnd(
        "most helpful\n(lower its error)", "Most helpful", "#1f618d", "more weight lowers the query's error"
    ),
}


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
    top=End(
        "harmful",
        "Most harmful training samples",
        "most harmful first",
        "Giving these samples more weight would raise validation error the most.",
    ),
    bottom=End(
        "helpful",
        "Most helpful training samples",
        "most helpful first",
        "Giving these samples more weight would lower validation error the most.",
    ),
    share="10% most harmful",
    positive="harmful",
    negative="helpful",
    axis="influence_mean   (left of 0: helpful, right of 0: harmful)",
    grad="dE/d",
    red="validation error rises if these pixels get brighter",
    red_short="brighter pixel raises val. error",
)
SENSITIVE = Wording(
    top=End(
        "largest",
        "Training samples with the largest weighted output",
        "largest first",
        "The trained model's weighted output w · output is largest for these samples.",
    ),
    bottom=End(
        "smallest",
        "Training samples with the smallest weighted output",
        "smallest first",
        "The trained model's weighted output w · output is smallest for these samples.",
    ),
    share="10% largest",
    positive="positive",
    negative="negative",
    axis="influence_mean = w · model output",
    grad="d(w·out)/d",
    red="w · output rises if these pixels get brighter",
    red_short="brighter pixel raises w · output",
)


# ---------------------------------------------------------------------------------------------- building blocks


@dataclass(frozen=True)
class Span:
    """A piece of text; in a <span> of CSS class css unless css is None (e.g. "pos"/"neg": a score's sign)."""

    text: str
    css: str | None = None


@dataclass(frozen=True)
class Cell:
    """A table cell: lines (one below the other) of spans."""

    lines: tuple[tuple[Span, ...], ...]


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    strong: bool = False  # every cell in bold


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[Row, ...]
    numeric: frozenset[int] = frozenset()  # right-aligned columns


KeyValues = tuple[tuple[str, Cell], ...]  # a two-column key/value table


@dataclass(frozen=True)
class Image:
    """A PNG figure: src is its data URI (base64, so safe as it is in an attribute)."""

    src: Markup
    alt: str


@dataclass(frozen=True)
class IdList:
    """A copyable list of sample_ids: `sample_id, {order}: {ids}`, tagged data-list={key}."""

    key: str
    order: str
    ids: str


def _cell(*spans: Span | str) -> Cell:
    """A one-line cell; str parts are plain text."""
    return Cell((tuple(s if isinstance(s, Span) else Span(s) for s in spans),))


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[Cell | str]],
    numeric: Iterable[int] = (),
    strong: Sequence[bool] | None = None,
) -> Table:
    """A Table of rows of cells (str: a plain one-line cell); strong[i]: row i in bold."""
    built = [tuple(c if isinstance(c, Cell) else _cell(c) for c in row) for row in rows]
    bold = strong if strong is not None else [False] * len(built)
    return Table(tuple(header), tuple(Row(cells, b) for cells, b in zip(built, bold)), frozenset(numeric))


def _image(png: bytes, alt: str) -> Image:
    return Image(Markup("data:image/png;base64," + base64.b64encode(png).decode("ascii")), alt)


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


def _score(value: float) -> Span:
    """An influence value with its sign, coloured by it (pos: red, e.g. harmful; neg: blue)."""
    return Span(f"{value:+.3e}", "pos" if value > 0 else "neg" if value < 0 else "")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


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


def _method(name: Any) -> Method | None:
    """The registry's entry of a method named in the run's files; None for a name it does not know."""
    return REGISTRY.get(name) if isinstance(name, str) else None


def _wording(method: str) -> Wording:
    """SENSITIVE for a method whose scores are about the model's output (methods.Method.measures), else ERROR."""
    known = _method(method)
    return SENSITIVE if known is not None and known.measures == "output" else ERROR


def _grad_name(wording: Wording, name: str) -> str:
    """The input gradient of one input: dE/dx for a one-letter name, dE/d(name) otherwise."""
    return f"{wording.grad}{name}" if len(name) == 1 else f"{wording.grad}({name})"


def _look(gray: bool) -> str:
    """How the images of a figure are drawn."""
    return "gray, one scale for all images" if gray else "colour, contrast stretched per image"


def _n_seeds(ranking: Ranking) -> int:
    return int(ranking.columns["n_seeds"].max()) if "n_seeds" in ranking.columns and len(ranking) else 1


# ---------------------------------------------------------------------------------------------- header


@dataclass(frozen=True)
class Verdict:
    """The box at the top: do the exact scores predict removals? kind None: not checked (no smoothness result)."""

    kind: str | None  # smooth | groups-only | non-smooth (CSS class verdict-{kind})
    title: str = ""
    explanation: str = ""


@dataclass(frozen=True)
class Trust:
    """Which method's scores to trust for "what if I retrain without these samples", and why."""

    choice: str
    why: str
    spread: str  # how well its seeds agree, "" when not recorded


@dataclass(frozen=True)
class Header:
    run_dir: str
    verdict: Verdict | None  # None: no exact method, nothing to say
    trust: Trust | None
    signs: tuple[str, ...]  # what the sign of the scores means, per kind of method in the run
    settings: KeyValues
    data: KeyValues
    run: KeyValues
    training: Table | None  # per seed; None when no seed trained
    versions: str


def _model_text(model: dict[str, Any]) -> str:
    """'mlp (hidden=[64], activation=tanh)': the model.* settings the model reads (models.MODELS) that are set."""
    name = model.get("name", "?")
    reads = MODELS[name].settings if name in MODELS else ()
    unset: tuple[Any, ...] = (None, False, 0, 0.0, [], ())
    parts = [f"{key}={model[key]}" for key in reads if key in model and model[key] not in unset]
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def _optimizer_text(opt: dict[str, Any]) -> str:
    """'adamw (lr=0.001, beta_1=0.9, ...; weight_decay=0.004, global_clipnorm=1; schedule warmup_cosine
    (warmup_steps=45))': the optimizer's own hyperparameters (not those off by default and off), then the recipe
    parts that are set."""
    name = opt.get("name", "?")
    defaults = OPTIMIZER_KERNELS[name].hyper if name in OPTIMIZER_KERNELS else {}
    off = [k for k, v in defaults.items() if not v and not opt.get(k)]  # off by default and off: not worth a word
    own = [k for k in OPTIMIZERS.get(name, ()) if k not in OPTIMIZER_COMMON and k in opt and k not in off]
    parts = [f"lr={_fmt(opt.get('lr'))}"]
    parts += [k if opt[k] is True else f"{k}={_fmt(opt[k])}" for k in own]
    recipe = [f"{k}={_fmt(opt[k])}" for k in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm") if opt.get(k)]
    text = f"{name} ({', '.join(parts)}{'; ' + ', '.join(recipe) if recipe else ''})"
    if opt.get("schedule", "constant") != "constant":
        params = {k: opt.get(k) for k in SCHEDULE_SETTINGS if k != "schedule_args" and opt.get(k) is not None}
        params |= dict(opt.get("schedule_args") or {})
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        text += f"; schedule {opt['schedule']}" + (f" ({shown})" if shown else "")
    return text


def _settings(config: dict[str, Any], dataset: Dataset) -> KeyValues:
    """The run's configuration: data, model, optimizer, training and influence settings."""
    train, influence, data = (config.get(name) or {} for name in ("train", "influence", "data"))
    source = f"{dataset.name} ({data['path']})" if data.get("path") else dataset.name
    seeds = train.get("seeds")
    settings = [
        ("dataset", source),
        ("model", _model_text(config.get("model") or {})),
        ("optimizer", _optimizer_text(config.get("optimizer") or {})),
        ("epochs", train.get("epochs")),
        ("batch size", train.get("batch_size")),
        ("seeds", ", ".join(str(s) for s in seeds) if isinstance(seeds, (list, tuple)) else seeds),
        ("dtype", train.get("dtype")),
        ("training loss", train.get("loss")),
        *([("label smoothing", _fmt(train["label_smoothing"]))] if train.get("label_smoothing") else []),
        ("method", influence.get("method")),
    ]
    method = _method(influence.get("method"))
    if method is not None and "output_weights" in method.settings:
        weights = influence.get("output_weights")
        settings.append(("output weights w", ", ".join(_fmt(w) for w in weights) if weights else "ones"))
    else:
        settings.append(("objective E", influence.get("objective")))
    if influence.get("queries", "mean") != "mean":
        ids = influence.get("query_ids")
        more = f", … ({len(ids)} ids)" if ids and len(ids) > 10 else ""
        shown = ", ".join(map(str, ids[:10])) + more if ids else "all"
        settings.append(("queries", f"{influence['queries']} ({shown})"))
    return tuple((key, _cell(_fmt(value))) for key, value in settings)


def _data(dataset: Dataset) -> KeyValues:
    """Task, sizes, inputs (one line each) and classes or target width."""
    inputs = Cell(
        tuple(
            (Span(f"{name}: {_shape_text(shape)}{' (image)' if figures.is_image(shape) else ''}"),)
            for name, shape in dataset.input_shapes.items()
        )
    )
    classification = dataset.task == "classification"
    return (
        ("task", _cell(dataset.task)),
        ("training samples", _cell(str(dataset.n_train))),
        ("validation samples", _cell(str(dataset.n_val))),
        ("inputs" if len(dataset.input_shapes) > 1 else "input", inputs),
        ("classes", _cell(str(dataset.num_classes)))
        if classification
        else ("target width", _cell(str(dataset.output_dim))),
    )


def _stage(manifest: dict[str, Any], name: str, read: Callable[[Mapping[str, Any]], R]) -> R | None:
    """The manifest's record of stage `name` read by `read` (the from_json of its pipeline.results type); None when
    the stage has no record."""
    record = (manifest.get("stages") or {}).get(name)
    return read(record) if isinstance(record, Mapping) else None


def _run(manifest: dict[str, Any], final_status: str | None) -> KeyValues:
    """Status (with the manifest's error unless final_status overrides it), config hash and stage times."""
    stages = manifest.get("stages") or {}
    status = final_status or str(manifest.get("status", "unknown"))
    error = [f" — {manifest['error']}"] if final_status is None and manifest.get("error") else []
    rows = [
        ("status", _cell(Span(status, f"status-{status}"), *error)),
        ("config hash", _cell(str(manifest.get("config_hash", "–")))),
    ]
    order = [s for s in STAGE_ORDER if s in stages] + sorted(s for s in stages if s not in STAGE_ORDER)
    timed = [(name, stage_seconds(stages[name])) for name in order if isinstance(stages[name], Mapping)]
    rows += [(f"{name} stage", _cell(f"{seconds:.1f} s" if seconds is not None else "–")) for name, seconds in timed]
    if timed:
        rows.append(("stages total", _cell(f"{sum(s for _, s in timed if s is not None):.1f} s")))
    return tuple(rows)


def _training(train: TrainResult | None, classification: bool) -> Table | None:
    """Validation loss (and accuracy), steps and seconds of each trained seed."""
    trained = train.seeds if train is not None else {}
    if not trained:
        return None
    header = ("seed", "val_loss", *(("val_accuracy",) if classification else ()), "steps", "seconds")
    rows = [
        [str(seed), _fmt(s.val_loss)]
        + ([_fmt(s.val_accuracy)] if classification else [])
        + [_fmt(s.n_steps), f"{s.seconds if s.seconds is not None else float('nan'):.1f}"]
        for seed, s in trained.items()
    ]
    return _table(header, rows, numeric=range(len(header)))


def _verdict(smooth: SmoothnessCheck | None) -> Verdict:
    """Do these scores predict removing samples from this run (verify smoothness)?"""
    if smooth is None:
        return Verdict(None)
    kind = str(smooth.verdict)
    return Verdict(kind, VERDICT_TITLES.get(kind, kind), smooth.explanation or "")


def _trust(verdict: str | None, agreement: Mapping[str, float | None], methods: Sequence[str]) -> Trust | None:
    """Which method's scores to trust for "what if I retrain without these samples", and why (None: no advice).
    verdict: of verify's smoothness check; agreement: the seeds' mean Spearman per method (stage aggregate)."""
    known = {m: REGISTRY[m] for m in methods if m in REGISTRY}
    exact = [m for m, method in known.items() if method.exact]
    expected = [m for m, method in known.items() if method.over_retrainings]
    if verdict == "smooth" and exact:
        choice, why = exact[0], "training is smooth here, so the exact derivative of this run predicts removals."
    elif expected:
        why = "it estimates the effect over training randomness, which is what retraining measures"
        if verdict in ("groups-only", "non-smooth"):
            why += ", while training here is not smooth enough for the exact derivative to predict removals."
        elif exact:
            why += (
                "; the exact scores stay the derivative of this one run (add verify to check whether they predict "
                "removals)."
            )
        else:
            why += "."
        choice = expected[0]
    elif verdict in ("groups-only", "non-smooth"):
        choice = "an ensemble over seeds"
        alternatives = "".join(f", or add influence={m}" for m, method in REGISTRY.items() if method.over_retrainings)
        why = (
            "training here is not smooth, so one run's derivative mostly reflects its randomness; score several "
            f"train.seeds with aggregate.ensemble=standardized{alternatives}."
        )
    else:
        return None
    seeds = agreement.get(choice)
    spread = f" Its seeds agree at Spearman {_fmt(seeds)}." if isinstance(seeds, (int, float)) else ""
    return Trust(choice, why, spread)


def _header(
    manifest: dict[str, Any], run_dir: Path, dataset: Dataset, methods: Sequence[str], final_status: str | None
) -> Header:
    verify = _stage(manifest, "verify", VerifyResult.from_json)
    smooth = verify.smoothness if verify is not None else None
    aggregate = _stage(manifest, "aggregate", AggregateResult.from_json) or AggregateResult()
    wordings = {_wording(m) for m in methods}
    signs = ((SIGN_CONVENTION,) if ERROR in wordings else ()) + ((SENSITIVITY,) if SENSITIVE in wordings else ())
    verdict = smooth.verdict if smooth is not None else None
    return Header(
        run_dir=str(run_dir.resolve()),
        # the verdict is about the exact derivative
        verdict=_verdict(smooth) if any(m in REGISTRY and REGISTRY[m].exact for m in methods) else None,
        trust=_trust(verdict, aggregate.seed_agreement, methods) if ERROR in wordings else None,
        signs=signs,
        settings=_settings(manifest.get("config") or {}, dataset),
        data=_data(dataset),
        run=_run(manifest, final_status),
        training=_training(_stage(manifest, "train", TrainResult.from_json), dataset.task == "classification"),
        versions=", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items()),
    )


# ---------------------------------------------------------------------------------------------- per method


@dataclass(frozen=True)
class ImageGrid:
    """One image input of an end's samples, each image next to its gradient map."""

    image: Image
    name: str | None  # the input, when the run has several (the caption names it)
    shape: str
    look: str  # how the images are drawn
    target: str  # label | target
    grad: str | None  # the gradient's name, e.g. dE/dx; None: images only (no input gradients computed)
    red: str | None  # what red means
    limit: str | None  # the colour scale's end, e.g. 8.00e-04


@dataclass(frozen=True)
class ValueTable:
    """An end's samples as a table: scores, label or target and each non-image input's values and gradient."""

    inputs: str  # Input | Inputs
    names: tuple[str, ...]
    gradients: str | None  # their gradients' names, e.g. "dE/dx, dE/d(meta)"; None: values only (not computed)
    shown: int  # values shown per input at most
    table: Table


@dataclass(frozen=True)
class SampleEnd:
    """The top or bottom TOP_K samples of a ranking."""

    title: str
    position: str  # top | bottom
    n: int
    effect: str
    grids: tuple[ImageGrid, ...]
    values: ValueTable | None  # None when every input is an image
    ids: IdList


@dataclass(frozen=True)
class Histogram:
    """The distribution of influence_mean; its caption's numbers."""

    image: Image
    n: int
    seeds: str  # e.g. "2 seeds"
    n_positive: int
    positive: str
    n_negative: int
    negative: str
    median: str
    low: str
    high: str
    share: str


@dataclass(frozen=True)
class Shares:
    """Per class (classification) or per target quantile (regression): counts, mean influence, shares of the top."""

    per_class: bool
    share: str
    table: Table
    atypical: bool = False  # per class: mention mislabelled or atypical examples
    bins: int = 0  # per quantile: number of bins and what they bin
    binned: str = ""


@dataclass(frozen=True)
class MethodSection:
    method: str
    ends: tuple[SampleEnd, ...]
    histogram: Histogram
    shares: Shares
    no_input_grad: str | None = None  # NO_INPUT_GRAD when the method's parts hold no input gradients


def _titles(rows: dict[str, np.ndarray], target: str) -> list[str]:
    return [
        f"#{rank}  id {sid}  {target} {_target_text(value)}\ninfluence {score:+.2e}"
        for rank, sid, value, score in zip(rows["rank"], rows["sample_id"], rows[target], rows["influence_mean"])
    ]


def _short_titles(rows: dict[str, np.ndarray], target: str) -> list[str]:
    """_titles for the narrower panels of an image-only grid."""
    return [
        f"#{rank}  id {sid}\n{target} {_target_text(value)}  {score:+.2e}"
        for rank, sid, value, score in zip(rows["rank"], rows["sample_id"], rows[target], rows["influence_mean"])
    ]


def _id_list(rows: dict[str, np.ndarray], end: End, method: str) -> IdList:
    return IdList(f"{end.role}-{method}", end.first, ", ".join(str(int(s)) for s in rows["sample_id"]))


def _column_cell(column: str, value: Any) -> Cell:
    if column == "influence_mean":
        return _cell(_score(value))
    if column == "influence_std":
        return _cell(f"{value:.3e}")
    if column in TARGET_COLUMN.values():
        return _cell(_target_text(value))
    return _cell(_fmt(value))


def _value_table(
    rows: dict[str, np.ndarray], inputs: dict[str, np.ndarray], grads: dict[str, np.ndarray] | None, wording: Wording
) -> ValueTable:
    """The samples' scores and label or target and, per input in inputs (name -> [n, *shape]), one left-aligned
    column with its values and, below them in grey, its mean input gradient (grads None: values only, and no
    input_grad_norm_mean column)."""
    columns = [c for c in TABLE_COLUMNS if c in rows and (grads is not None or c != "input_grad_norm_mean")]

    def lines(name: str, i: int) -> tuple[tuple[Span, ...], ...]:
        values = (Span(_values_text(inputs[name][i], _fmt), "vec"),)
        if grads is None:
            return (values,)
        return (values, (Span(_values_text(grads[name][i], lambda v: f"{v:+.2e}"), "vec grad"),))

    body = [
        [_column_cell(c, rows[c][i]) for c in columns] + [Cell(lines(name, i)) for name in inputs]
        for i in range(len(rows["sample_id"]))
    ]
    return ValueTable(
        inputs="Inputs" if len(inputs) > 1 else "Input",
        names=tuple(inputs),
        gradients=", ".join(_grad_name(wording, name) for name in inputs) if grads is not None else None,
        shown=VALUES_SHOWN,
        table=_table(columns + list(inputs), body, numeric=range(len(columns))),
    )


def _image_grid(
    rows: dict[str, np.ndarray],
    target: str,
    name: str,
    dataset: Dataset,
    grads: np.ndarray | None,
    limit: float,
    wording: Wording,
    method: str,
) -> ImageGrid:
    """One image input of the samples in rows, each image next to its gradient map (grads None: the images alone,
    GRID_IMAGES to a row)."""
    x = dataset.x_train[name]
    gray = x.ndim == 3 or x.shape[-1] == 1
    image_range = (float(x.min()), float(x.max())) if gray else (0.0, 1.0)
    if grads is None:
        images, titles = x[rows["sample_id"]], _short_titles(rows, target)
        lines = [
            ("", "#222222", images[k : k + GRID_IMAGES], titles[k : k + GRID_IMAGES])
            for k in range(0, len(images), GRID_IMAGES)
        ]
        return ImageGrid(
            image=_image(
                figures.query_samples(None, "", lines, image_range), f"samples, input {name}, method {method}"
            ),
            name=name if len(dataset.input_shapes) > 1 else None,
            shape=_shape_text(x.shape[1:]),
            look=_look(gray),
            target=target,
            grad=None,
            red=None,
            limit=None,
        )
    grad = _grad_name(wording, name)
    png = figures.sample_grid(
        x[rows["sample_id"]],
        grads,
        _titles(rows, target),
        image_range,
        limit,
        grad,
        f"{grad}  (red: {wording.red_short})",
    )
    return ImageGrid(
        image=_image(png, f"samples, input {name}, method {method}"),
        name=name if len(dataset.input_shapes) > 1 else None,
        shape=_shape_text(x.shape[1:]),
        look=_look(gray),
        target=target,
        grad=grad,
        red=wording.red,
        limit=f"{limit:.2e}",
    )


def _ends(ranking: Ranking, run_dir: Path, dataset: Dataset) -> tuple[tuple[SampleEnd, ...], bool]:
    """Both ends of the ranking: image grids with gradient maps for image inputs, a table with the others' values;
    and whether the method's parts hold input gradients (without them: the images and values alone)."""
    wording, target, shapes = _wording(ranking.method), TARGET_COLUMN[dataset.task], dataset.input_shapes
    ends = [(wording.top, "top", ranking.head(TOP_K)), (wording.bottom, "bottom", ranking.tail(TOP_K))]
    ids = np.concatenate([rows["sample_id"] for _, _, rows in ends])
    grads = mean_input_grads(run_dir, ranking.method, ids, shapes)
    images = [name for name, shape in shapes.items() if figures.is_image(shape)]
    others = [name for name in shapes if name not in images]
    limits = {
        name: float(np.quantile(np.abs(figures.channel_sum(grads[name])), 0.99)) if grads is not None else 0.0
        for name in images
    }
    out, start = [], 0
    for end, position, rows in ends:
        n = len(rows["sample_id"])
        mine = {name: g[start : start + n] for name, g in grads.items()} if grads is not None else None
        start += n
        values = None
        if others:
            inputs = {name: dataset.x_train[name][rows["sample_id"]] for name in others}
            values = _value_table(
                rows, inputs, {name: mine[name] for name in others} if mine is not None else None, wording
            )
        out.append(
            SampleEnd(
                title=end.title,
                position=position,
                n=n,
                effect=end.effect,
                grids=tuple(
                    _image_grid(
                        rows,
                        target,
                        name,
                        dataset,
                        mine[name] if mine is not None else None,
                        limits[name],
                        wording,
                        ranking.method,
                    )
                    for name in images
                ),
                values=values,
                ids=_id_list(rows, end, ranking.method),
            )
        )
    return tuple(out), grads is not None


def _top(ranking: Ranking) -> tuple[np.ndarray, int, float | None]:
    """Mask of the TOP_FRACTION largest influence_mean (at least one sample), their count and where they begin."""
    n = len(ranking)
    k = max(1, math.ceil(TOP_FRACTION * n)) if n else 0
    top = ranking.columns["rank"] <= k
    threshold = float(ranking.columns["influence_mean"][top].min()) if k else None
    return top, k, threshold


def _share_table(
    ranking: Ranking, keys: Sequence[str], groups: list[tuple[list[str], np.ndarray]], wording: Wording
) -> Table:
    """One row per group of samples (its leading cells and its mask): count, mean influence and shares.

    A group whose share of the top TOP_FRACTION is at least 1.5x its share of the training set is bold.
    """
    n = len(ranking)
    top, k, _ = _top(ranking)
    rows: list[list[Cell | str]] = []
    strong = []
    for lead, mine in groups:
        share_all, share_top = mine.sum() / n, (mine & top).sum() / k
        rows.append(
            [
                *lead,
                str(int(mine.sum())),
                _cell(_score(float(ranking.columns["influence_mean"][mine].mean()))),
                f"{100 * share_all:.1f}%",
                f"{100 * share_top:.1f}%",
                str(int((mine & top).sum())),
            ]
        )
        strong.append(bool(share_top >= 1.5 * share_all))
    header = (
        *keys,
        "count",
        "mean influence",
        "share of training set",
        f"share of {wording.share}",
        f"samples in {wording.share} (top {k})",
    )
    return _table(header, rows, numeric=range(len(header)), strong=strong)


def _per_class(ranking: Ranking, wording: Wording) -> Shares:
    labels = ranking.columns["label"]
    groups = [([str(int(label))], labels == label) for label in np.unique(labels)]
    return Shares(
        per_class=True,
        share=wording.share,
        table=_share_table(ranking, ("label",), groups, wording),
        atypical=wording is ERROR,
    )


def _per_quantile(ranking: Ranking, wording: Wording) -> Shares:
    """Regression: the samples in QUANTILE_BINS equal-count bins of the target (of its Euclidean norm when k-wide)."""
    target = ranking.columns["target"]
    values = target if target.ndim == 1 else np.linalg.norm(target, axis=1)
    edges = np.quantile(values, np.linspace(0, 1, QUANTILE_BINS + 1))
    bins = np.searchsorted(edges[1:-1], values, side="right")
    groups = [
        ([f"Q{b + 1}", f"{_fmt(values[bins == b].min())} to {_fmt(values[bins == b].max())}"], bins == b)
        for b in range(QUANTILE_BINS)
        if (bins == b).any()
    ]
    wide = target.ndim > 1
    name = "|target|" if wide else "target"
    return Shares(
        per_class=False,
        share=wording.share,
        table=_share_table(ranking, ("quantile", f"{name} range"), groups, wording),
        bins=QUANTILE_BINS,
        binned=f"Euclidean norm |target| of the {target.shape[1]} target values" if wide else "target",
    )


def _histogram(ranking: Ranking, wording: Wording) -> Histogram:
    values = ranking.columns["influence_mean"]
    _, _, threshold = _top(ranking)
    return Histogram(
        image=_image(
            figures.histogram(values, threshold, wording.share, wording.axis),
            f"histogram of influence_mean, method {ranking.method}",
        ),
        n=len(ranking),
        seeds=_plural(_n_seeds(ranking), "seed"),
        n_positive=int((values > 0).sum()),
        positive=wording.positive,
        n_negative=int((values < 0).sum()),
        negative=wording.negative,
        median=f"{np.median(values):+.2e}",
        low=f"{values.min():+.2e}",
        high=f"{values.max():+.2e}",
        share=wording.share,
    )


def _method_section(ranking: Ranking, run_dir: Path, dataset: Dataset) -> MethodSection:
    wording = _wording(ranking.method)
    ends, computed = _ends(ranking, run_dir, dataset)
    return MethodSection(
        method=ranking.method,
        ends=ends,
        histogram=_histogram(ranking, wording),
        shares=_per_class(ranking, wording) if dataset.task == "classification" else _per_quantile(ranking, wording),
        no_input_grad=None if computed else NO_INPUT_GRAD,
    )


# ---------------------------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class SeedAgreement:
    rule: str  # aggregate.ensemble
    disagreeing: str  # methods whose seeds disagree, "" when none
    below: str  # the Spearman under which they do
    standardize: bool  # suggest aggregate.ensemble=standardized
    table: Table


def _seed_agreement(manifest: dict[str, Any], rankings: list[Ranking]) -> SeedAgreement:
    aggregate = _stage(manifest, "aggregate", AggregateResult.from_json) or AggregateResult()
    recorded, scales = aggregate.seed_agreement, aggregate.seed_scale
    rows, disagreeing = [], []
    for ranking in rankings:
        n_seeds = _n_seeds(ranking)
        value = recorded.get(ranking.method)
        if n_seeds <= 1:
            text = "one seed: nothing to compare"
        elif value is None:
            text = "not recorded (the aggregate stage did not run or gave no value)"
        else:
            text = _fmt(value)
            if value < ensembles.DISAGREE_BELOW:
                disagreeing.append(ranking.method)
        seed_scale = scales.get(ranking.method) or {}
        shown = ", ".join(f"{seed}: {_fmt(v)}" for seed, v in seed_scale.items()) if len(seed_scale) > 1 else "–"
        rows.append([ranking.method, str(n_seeds), text, shown])
    rule = aggregate.ensemble or "mean"
    return SeedAgreement(
        rule=rule,
        disagreeing=", ".join(disagreeing),
        below=f"{ensembles.DISAGREE_BELOW:g}",
        standardize=rule == "mean",
        table=_table(("method", "seeds", "Spearman between seeds", "scale per seed"), rows, numeric=(1,)),
    )


# ---------------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class QueryResult:
    """How seed `seed`'s model does on a query: per_sample, its target and prediction (classification: whether it
    is wrong; regression: |error|); else its number of validation samples (members) and accuracy or mean |error|."""

    per_sample: bool
    classification: bool
    target: str = ""
    predicted: str = ""
    wrong: bool = False
    error: str = ""
    members: str = ""
    correct: int = 0
    accuracy: str = ""


@dataclass(frozen=True)
class QueryFigure:
    """One image input: the query's image (per_sample) left of its most harmful and most helpful training images."""

    image: Image
    name: str | None  # the input, when the run has several
    query_id: int | None  # per_sample: the validation sample drawn left
    n_harmful: int
    n_helpful: int
    target: str
    look: str


@dataclass(frozen=True)
class QueryTable:
    """A query's top samples of one direction with their non-image inputs' first values, tagged data-list={key}."""

    key: str
    title: str
    effect: str
    table: Table


@dataclass(frozen=True)
class QueryBlock:
    query_id: int
    heading: str
    result: QueryResult
    values: tuple[tuple[str, str], ...]  # per_sample: (name, first values) of each non-image input
    figures: tuple[QueryFigure, ...]  # one per image input
    tables: tuple[QueryTable, ...]  # per direction, when there are non-image inputs
    ids: tuple[IdList, ...]  # per direction, when every input is an image


@dataclass(frozen=True)
class QueriesSection:
    kind: str
    noun: str
    n_queries: int
    objective: str
    n_shown: int
    worst: str  # the order of the shown queries
    seed: int  # whose trained model predicted
    wrong: str  # "; k of the n are misclassified" or ""
    seeds: str  # e.g. "seeds 0, 1": what influence is the mean over
    overview: Table
    blocks: tuple[QueryBlock, ...]


def _query_result(queries: Queries, query: Query, dataset: Dataset) -> QueryResult:
    """The query's label or target and the prediction, or its class's or group's size and accuracy (regression:
    mean |error|)."""
    classification = dataset.task == "classification"
    if queries.kind == "per_sample":
        return QueryResult(
            per_sample=True,
            classification=classification,
            target=_target_text(dataset.y_val[query.query_id]),
            predicted=_target_text(predictions(dataset.task, query.outputs)[0]),
            wrong=bool(query.errors[0]),
            error=_fmt(query.error),
        )
    n = query.rows.size
    return QueryResult(
        per_sample=False,
        classification=classification,
        members=_plural(n, "validation sample"),
        correct=int(n - query.errors.sum()),
        accuracy=f"{1 - query.error:.3f}",
        error=_fmt(query.error),
    )


def _query_overview(queries: Queries, dataset: Dataset) -> Table:
    """One row per shown query, in the order shown: its result and its strongest harmful and helpful samples."""
    classification, per_sample = dataset.task == "classification", queries.kind == "per_sample"

    def strongest(q: Query, direction: str) -> Cell:
        top = q.top[direction]
        if not len(top["sample_id"]):
            return _cell("–")
        return _cell(f"{int(top['sample_id'][0])} (", _score(float(top["influence"][0])), ")")

    rows = []
    for q in queries.shown:
        cells: list[Cell | str]
        if per_sample:
            target, predicted = dataset.y_val[q.query_id], predictions(dataset.task, q.outputs)[0]
            result = _cell(_fmt(q.error))
            if classification:
                result = _cell(Span("misclassified", "pos")) if q.errors[0] else _cell("correct")
            cells = [str(q.query_id), _target_text(target), _target_text(predicted), result]
        else:
            cells = [str(q.query_id), str(q.rows.size), f"{1 - q.error:.3f}" if classification else _fmt(q.error)]
        rows.append([*cells, strongest(q, "harmful"), strongest(q, "helpful")])
    target = TARGET_COLUMN[dataset.task]
    if per_sample:
        header = ["query (validation sample)", target, "predicted", "result" if classification else "|error|"]
    else:
        header = [
            f"query ({QUERY_NOUN[queries.kind]})",
            "validation samples",
            "accuracy" if classification else "mean |error|",
        ]
    header += ["most harmful sample_id (influence)", "most helpful sample_id (influence)"]
    numeric = range(1, 3) if per_sample and classification else range(1, len(header) - 2)
    return _table(header, rows, numeric=numeric)


def _query_table(query: Query, direction: str, dataset: Dataset, others: Sequence[str]) -> QueryTable:
    """A query's top samples of one direction: rank, sample_id, label or target, influence and, per non-image input
    in others, its first values (for image inputs the figure shows the images)."""
    top = query.top[direction]
    rows = [
        [_cell(str(rank)), _cell(str(sid)), _cell(_target_text(dataset.y_train[sid])), _cell(_score(float(value)))]
        + [_cell(Span(_values_text(dataset.x_train[name][sid], _fmt), "vec")) for name in others]
        for rank, sid, value in zip(top["rank"], top["sample_id"], top["influence"])
    ]
    end = QUERY_ENDS[direction]
    table = _table(("rank", "sample_id", TARGET_COLUMN[dataset.task], "influence", *others), rows, numeric=range(4))
    return QueryTable(f"{direction}-query-{query.query_id}", end.title, end.effect, table)


def _query_ids(query: Query, direction: str) -> IdList:
    """The sample_ids of a query's top samples of one direction, strongest first (the figure shows them)."""
    ids = ", ".join(str(int(s)) for s in query.top[direction]["sample_id"])
    return IdList(f"{direction}-query-{query.query_id}", f"{QUERY_ENDS[direction].title.lower()} first", ids)


def _query_figure(queries: Queries, query: Query, dataset: Dataset, name: str) -> QueryFigure:
    """Image input `name`: the query's image (per_sample) left of its most harmful and most helpful training images."""
    x_train, x_val = dataset.x_train[name], dataset.x_val[name]
    gray = x_train.ndim == 3 or x_train.shape[-1] == 1
    image_range = (0.0, 1.0)
    if gray:
        image_range = (float(min(x_train.min(), x_val.min())), float(max(x_train.max(), x_val.max())))
    target = TARGET_COLUMN[dataset.task]
    rows = []
    for direction in DIRECTIONS:
        end = QUERY_ENDS[direction]
        ids, values = query.top[direction]["sample_id"], query.top[direction]["influence"]
        titles = [
            f"id {sid}  {target} {_target_text(dataset.y_train[sid])}\n{value:+.2e}" for sid, value in zip(ids, values)
        ]
        rows.append((end.label, end.color, x_train[ids], titles))
    per_sample = queries.kind == "per_sample"
    predicted = _target_text(predictions(dataset.task, query.outputs)[0])
    title = f"query: val. {query.query_id}\n{target} {_target_text(dataset.y_val[query.query_id])}, pred. {predicted}"
    png = figures.query_samples(x_val[query.query_id] if per_sample else None, title, rows, image_range)
    return QueryFigure(
        image=_image(png, f"query {query.query_id}, input {name}: most harmful and most helpful training samples"),
        name=name if len(dataset.input_shapes) > 1 else None,
        query_id=query.query_id if per_sample else None,
        n_harmful=len(rows[0][2]),
        n_helpful=len(rows[1][2]),
        target=target,
        look=_look(gray),
    )


def _query_block(queries: Queries, query: Query, dataset: Dataset) -> QueryBlock:
    """One query: what it is and how the model does on it, its images or values, its top harmful and helpful samples."""
    shapes = dataset.input_shapes
    images = [name for name, shape in shapes.items() if figures.is_image(shape)]
    others = [name for name in shapes if name not in images]
    values: tuple[tuple[str, str], ...] = ()
    if queries.kind == "per_sample":
        values = tuple((name, _values_text(dataset.x_val[name][query.query_id], _fmt)) for name in others)
    return QueryBlock(
        query_id=query.query_id,
        heading=f"Query {query.query_id}: {QUERY_NOUN[queries.kind]} {query.query_id}",
        result=_query_result(queries, query, dataset),
        values=values,
        figures=tuple(_query_figure(queries, query, dataset, name) for name in images),
        tables=tuple(_query_table(query, d, dataset, others) for d in DIRECTIONS) if others else (),
        ids=() if others else tuple(_query_ids(query, d) for d in DIRECTIONS),
    )


def _queries_section(queries: Queries, dataset: Dataset) -> QueriesSection:
    """influence.queries: which training samples drove a few single validation samples (or classes, or groups)."""
    kind, classification = queries.kind, dataset.task == "classification"
    if kind == "per_sample":
        worst = "misclassified first" if classification else "largest |error| first"
    else:
        worst = "lowest accuracy first" if classification else "largest mean |error| first"
    return QueriesSection(
        kind=kind,
        noun=QUERY_NOUN[kind],
        n_queries=queries.n_queries,
        objective=QUERY_OBJECTIVE[kind],
        n_shown=len(queries.shown),
        worst=worst,
        seed=queries.seed,
        wrong="" if queries.n_wrong is None else f"; {queries.n_wrong} of the {queries.n_queries} are misclassified",
        seeds=f"seed{'s' if ',' in queries.seeds else ''} {queries.seeds.replace(',', ', ')}",
        overview=_query_overview(queries, dataset),
        blocks=tuple(_query_block(queries, q, dataset) for q in queries.shown),
    )


# ---------------------------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Loo:
    image: Image
    n: int
    correlations: str  # e.g. "pearson 0.9877, spearman 0.9123, kendall 0.8111"


@dataclass(frozen=True)
class Replay:
    """A float32 run's influence against a float64 replay of it."""

    n: str
    median_relative_error: str
    spearman: str


@dataclass(frozen=True)
class Smoothness:
    """The ladder: median relative deviation of the linear prediction from retraining, per unit and step."""

    table: Table
    image: Image
    max_deviation: str
    initial_perturbation: str
    growth: str
    replay: Replay | None


@dataclass(frozen=True)
class Gradcheck:
    step: str | None  # the finite-difference step h, when recorded
    table: Table
    image: Image


@dataclass(frozen=True)
class VerifySection:
    method: str | None  # the method the verify stage checked
    loo: Loo | None
    smoothness: Smoothness | None
    gradcheck: Gradcheck | None


def _loo(verify: Verify) -> Loo | None:
    if verify.loo is None or not len(verify.loo["sample_id"]):
        return None
    corr = verify.loo_correlations()
    text = ", ".join(
        f"{name} {corr[name]:.4f}" if not math.isnan(corr[name]) else f"{name} –"
        for name in ("pearson", "spearman", "kendall")
    )
    png = figures.loo_scatter(verify.loo["predicted_change"], verify.loo["actual_change"], verify.loo["seed"])
    return Loo(_image(png, "leave-one-out predicted vs actual change"), len(verify.loo["sample_id"]), text)


def _smoothness(smooth: SmoothnessCheck) -> Smoothness:
    groups = {
        f"random groups of {float(kind.split()[-1]):.0%}" if kind.startswith("group ") else kind: v
        for kind, v in smooth.groups.items()
    }
    single = smooth.single or Ladder()
    ladders = {"single samples": single, **groups}
    steps = single.steps
    rows = [
        [kind, *(_fmt(m) for m in ladder.median_deviation), _fmt(ladder.linear_up_to)]
        for kind, ladder in ladders.items()
    ]
    png = figures.smoothness_ladder(steps, {kind: ladder.median_deviation for kind, ladder in ladders.items()})
    header = ("unit", *(f"s={_fmt(s)}" for s in steps), "linear up to s")
    replay = smooth.float64_replay
    return Smoothness(
        table=_table(header, rows, numeric=range(1, len(header))),
        image=_image(png, "smoothness ladder"),
        max_deviation=f"{smoothness.MAX_DEVIATION:g}",
        initial_perturbation=_fmt(smooth.initial_perturbation),
        growth=_fmt(smooth.perturbation_growth),
        replay=Replay(_fmt(replay.n), _fmt(replay.median_relative_error), _fmt(replay.spearman)) if replay else None,
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


def _gradcheck(verify: Verify, step: float | None) -> Gradcheck | None:
    """The gradient check's table and figure (from gradcheck.parquet); step: the finite-difference step h."""
    if verify.gradcheck is None or not len(verify.gradcheck["sample_id"]):
        return None
    rows = [
        [kind, _gradcheck_text(kind), str(n), f"{median:.2e}", f"{high:.2e}"]
        for kind, n, median, high in verify.gradcheck_rows()
    ]
    png = figures.relative_errors(verify.gradcheck["kind"], verify.gradcheck["relative_error"])
    return Gradcheck(
        step=_fmt(step) if step is not None else None,
        table=_table(
            ("kind", "what is checked", "n", "median relative error", "max relative error"), rows, numeric=(2, 3, 4)
        ),
        image=_image(png, "gradcheck relative errors"),
    )


def _verify_section(verify: Verify, method: str | None) -> VerifySection:
    """Leave-one-out, smoothness ladder and gradient check; method: the one the verify stage checked."""
    summary = VerifyResult.from_json(verify.summary)  # the manifest's record of stage verify
    smooth = _smoothness(summary.smoothness) if summary.smoothness is not None else None
    return VerifySection(method, _loo(verify), smooth, _gradcheck(verify, summary.fd_step))


# ---------------------------------------------------------------------------------------------- page


@dataclass(frozen=True)
class Page:
    title: str
    header: Header
    methods: tuple[MethodSection, ...]
    queries: QueriesSection | None
    seeds: SeedAgreement
    verify: VerifySection | None


def build_page(
    manifest: dict[str, Any],
    rankings: list[Ranking],
    verify: Verify | None,
    queries: Queries | None,
    run_dir: Path,
    dataset: Dataset,
    final_status: str | None,
) -> Page:
    """The whole page; final_status overrides the manifest's status (see write_report)."""
    influence = (manifest.get("config") or {}).get("influence") or {}
    return Page(
        title=f"Influence report: {dataset.name}",
        header=_header(manifest, run_dir, dataset, [r.method for r in rankings], final_status),
        methods=tuple(_method_section(r, run_dir, dataset) for r in rankings),
        queries=_queries_section(queries, dataset) if queries is not None else None,
        seeds=_seed_agreement(manifest, rankings),
        verify=_verify_section(verify, influence.get("method")) if verify is not None else None,
    )
