"""The driver side stays free of TensorFlow: the stage modules, the report and pipeline.runtime's handles import
without it (checked in a fresh interpreter, since this test process imports TensorFlow elsewhere)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

STAGES = ("score", "queries", "verify", "train", "score_trak", "aggregate", "report")


def _imports_tensorflow(*modules: str) -> bool:
    code = f"import sys, {', '.join(modules)}; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip() == "True"


def test_stages_report_and_runtime_handles_import_without_tensorflow():
    assert not _imports_tensorflow(*(f"pipeline.stages.{stage}" for stage in STAGES))
    assert not _imports_tensorflow("pipeline.report")
    assert not _imports_tensorflow("pipeline.runtime", "pipeline.runtime.jobs", "pipeline.runtime.feature_queries")
    assert _imports_tensorflow("pipeline.runtime.seed")  # the check can fail: the worker side does import it
