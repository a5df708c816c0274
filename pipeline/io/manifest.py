"""manifest.json: resolved config, package versions, sign convention, stage records (wall seconds and the stage's
typed result, pipeline.results) and run status.

Only the driver writes it, under the run lock. Whether earlier results may be reused is decided per
artifact (io.arguments), not here: the manifest describes the latest run in the directory. A directory is a
run of ours when its manifest or its trajectory/_arguments.json is one of ours (`foreign_entries`).
"""

from __future__ import annotations

import os
import time
from importlib import metadata
from typing import Any

from pipeline.config import Settings
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.tables import SIGN_CONVENTION
from pipeline.results import StageResult, stage_record

PACKAGES = (
    "influence-pipeline",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "ray",
    "hydra-core",
    "pyarrow",
    "numpy",
    "scikit-learn",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def is_ours(layout: RunLayout) -> bool:
    """True if layout.root holds a manifest.json or a trajectory/_arguments.json written by this pipeline."""
    marks = {layout.manifest: ("config_hash", "sign_convention"), layout.trajectory_arguments: ("key", "arguments")}
    for path, keys in marks.items():
        try:
            payload = read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and all(k in payload for k in keys):
            return True
    return False


def foreign_entries(layout: RunLayout) -> list[str]:
    """The names in layout.root (sorted; a .lock and Hydra's multirun folder aside) when it holds anything and is
    not a run of ours; [] for a run of ours, an empty or missing directory, or a path that cannot be listed (the
    lock reports it)."""
    try:
        names = sorted(os.listdir(layout.root))
    except OSError:
        return []
    names = [n for n in names if n not in (layout.lock.name, layout.hydra_multirun.name)]
    return [] if not names or is_ours(layout) else names


class Manifest:
    """The run's manifest, kept in memory and rewritten atomically after every change."""

    def __init__(self, layout: RunLayout, payload: dict[str, Any]):
        self.layout = layout
        self.payload = payload

    @classmethod
    def open(cls, layout: RunLayout, settings: Settings, extra: dict[str, Any]) -> Manifest:
        """Start (or resume) the run's manifest: status running, earlier stage records kept, _SUCCESS removed."""
        try:
            previous = read_json(layout.manifest) if layout.manifest.exists() else {}
        except (OSError, ValueError):
            previous = {}
        if not isinstance(previous, dict):
            previous = {}
        layout.success.unlink(missing_ok=True)
        payload = {
            "config": settings.to_dict(),
            "config_hash": settings.result_hash(),
            **extra,
            "versions": package_versions(),
            "sign_convention": SIGN_CONVENTION,
            "stages": previous.get("stages", {}) if previous.get("config_hash") == settings.result_hash() else {},
            "status": "running",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        manifest = cls(layout, payload)
        manifest.save()
        return manifest

    def save(self) -> None:
        write_json(self.layout.manifest, self.payload)

    def record_stage(self, stage: str, seconds: float, result: StageResult) -> None:
        """Record a stage's wall seconds and its typed result (results.stage_record), and save."""
        self.payload["stages"][stage] = stage_record(result, seconds)
        self.save()

    def record_data(self, summary: dict[str, Any]) -> None:
        self.payload["data"] = summary
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        """Mark the run succeeded (and write _SUCCESS last), failed or interrupted, with its one-line error."""
        self.payload["status"] = status
        self.payload["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if error is not None:
            self.payload["error"] = error
        self.save()
        if status == "succeeded":
            self.layout.success.write_text("")
