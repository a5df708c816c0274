"""Write RUN/report/index.html: one self-contained page (inline CSS, figures as base64 PNG, no scripts).

The page is the view model of view.py laid out by the Jinja templates in templates/ with autoescaping on, so every
piece of text from the run (config values, labels, targets, input names, methods) is escaped by the templates;
report.css is inlined into the page.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from pipeline.io.files import atomic_path
from pipeline.report.inputs import read_manifest, read_rankings, read_verify
from pipeline.report.queries import read_queries
from pipeline.report.view import TARGET_COLUMN, Page, build_page

if TYPE_CHECKING:
    from pipeline.data import Dataset


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
        ranking = run_dir / "ranking.parquet"
        raise ValueError(f"the dataset has {dataset.n_train} training samples but {ranking} has sample_id {largest}")
    verify = read_verify(run_dir, manifest)
    queries = read_queries(run_dir, manifest, dataset)
    page = render(build_page(manifest, rankings, verify, queries, run_dir, dataset, final_status))
    path = run_dir / "report" / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def render(page: Page) -> str:
    """The HTML of page."""
    return _environment().get_template("report.html.j2").render(page=page, css=_css())


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("pipeline.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@cache
def _css() -> Markup:
    """report.css, a package file, to go verbatim into the page's <style> element."""
    return Markup(resources.files("pipeline.report").joinpath("report.css").read_text(encoding="utf-8"))
