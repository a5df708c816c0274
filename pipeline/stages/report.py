"""Stage `report`: report/index.html built from the run's Parquet outputs and manifest (with influence.queries, also
from the first seed's final checkpoint, which predicts the queries' validation samples).

It runs last and only after every earlier stage succeeded, so the page states the run as succeeded
(the manifest still says "running" while the page is written)."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.stages.context import RunContext


def run(context: RunContext) -> dict[str, Any]:
    from pipeline.report import write_report

    layout = context.layout
    if not layout.ranking.exists():
        raise ConfigError(f"stages: report needs {layout.ranking}; add aggregate to stages")
    return {"path": str(write_report(layout.root, context.dataset, final_status="succeeded"))}
