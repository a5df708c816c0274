"""README.md's settings tables are written from pipeline/config.py by scripts/settings_table.py: a setting, default
or help text changed without rewriting them fails here (run `python scripts/settings_table.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_tables_are_up_to_date():
    result = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
