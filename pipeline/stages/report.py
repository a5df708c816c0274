"""Stage `report`: report/index.html built from the run's Parquet outputs and manifest."""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.errors import ConfigError
from pipeline.io.layout import RunLayout


def run(settings: Settings, dataset: Dataset) -> dict[str, Any]:
    from pipeline.report import write_report

    layout = RunLayout(settings.output_dir)
    if not layout.ranking.exists():
        raise ConfigError(f"stages: report needs {layout.ranking}; add aggregate to stages")
    return {"path": str(write_report(layout.root, dataset.x_train, dataset.input_shape))}
