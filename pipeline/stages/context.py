"""What every stage receives: `run(context) -> result`, a pipeline.results dataclass (the manifest records its
to_json())."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.io.layout import RunLayout


@dataclass
class RunContext:
    settings: Settings
    dataset: Dataset
    layout: RunLayout
    trajectory_key: str  # io.arguments key of the recorded training runs
    score_key: str  # io.arguments key of influence.method's scores
    queries_key: str | None = None  # io.queries key of the per-query scores; None with influence.queries=mean
    dataset_ref: Any = None  # Ray object reference of `dataset` (set once Ray is up)
    task_options: dict[str, Any] = field(default_factory=dict)  # Ray options of one task (cluster.task_options)

    def require_queries_key(self) -> str:
        """queries_key, for the stages that only run with influence.queries other than mean."""
        if self.queries_key is None:
            raise RuntimeError("no queries_key: influence.queries=mean has no per-query scores")
        return self.queries_key
