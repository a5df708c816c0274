"""What a user sees in a log or CI: one line per stage (and seed), no progress bars from the driver or the workers,
unless stderr is a terminal or PIPELINE_PROGRESS=1 asks for them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cluster
from pipeline.config import ClusterSettings

REPO = Path(__file__).resolve().parent.parent


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "env,terminal,expected",
    [
        ({}, True, True),
        ({}, False, False),
        ({"TQDM_DISABLE": "1"}, True, False),
        ({"PIPELINE_PROGRESS": "1"}, False, True),
        ({"PIPELINE_PROGRESS": "0"}, True, False),
    ],
)
def test_progress_bars_only_on_a_terminal_unless_asked(monkeypatch, env, terminal, expected):
    for name in ("PIPELINE_PROGRESS", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stderr", _Terminal() if terminal else io.StringIO())
    assert cluster.progress_enabled() is expected
    # the workers follow the driver's choice
    assert cluster.worker_env(ClusterSettings())["PIPELINE_PROGRESS"] == ("1" if expected else "0")


def test_a_run_in_a_log_prints_one_line_per_stage(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", f"output.dir={out}", "data.max_train=150", "train.epochs=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in ("PIPELINE_PROGRESS", "TQDM_DISABLE")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tags = [line.split()[0] for line in proc.stdout.splitlines()]
    assert tags == ["[data]", "[train]", "[score]", "[aggregate]", "[report]", "done:"], proc.stdout
    assert "%|" not in proc.stderr and "(pid=" not in proc.stderr and "(pid=" not in proc.stdout, proc.stderr[-2000:]


def test_long_work_in_a_log_prints_a_progress_line_at_most_every_interval(capsys):
    with cluster.LogProgress(3, "fresh-seed retrainings", "task", interval=0.0) as bar:
        for _ in range(3):
            bar.update(1)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "[progress] fresh-seed retrainings: 1/3 tasks",
        "[progress] fresh-seed retrainings: 2/3 tasks",
    ]  # none at the end: the stage's own line follows
    with cluster.LogProgress(3, "quick work", "task") as bar:  # the default interval: a minute
        bar.update(3)
    assert capsys.readouterr().out == ""
