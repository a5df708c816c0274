"""Stage `report`: report/index.html built from the run's files only: its Parquet outputs, the manifest and, with
influence.queries, the first seed's predictions of the queries' validation rows (written by stages.queries).

It runs last and only after every earlier stage succeeded, so the page states the run as succeeded
(the manifest still says "running" while the page is written). Driver side; no TensorFlow."""

from __future__ import annotations

from pipeline.errors import ConfigError
from pipeline.report import write_report
from pipeline.results import ReportResult
from pipeline.stages.context import RunContext


def run(context: RunContext) -> ReportResult:
    layout = context.layout
    if not layout.ranking.exists():
        raise ConfigError(f"stages: report needs {layout.ranking}; add aggregate to stages")
    return ReportResult(str(write_report(layout.root, context.dataset, final_status="succeeded")))
