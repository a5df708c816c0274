"""manifest.json: resolved config, package versions, sign convention, stage timings and run status.

Only the driver writes it. A run refuses an output dir that holds a run with other result settings
unless output.overwrite=true, so results of two configs never mix.
"""

from __future__ import annotations

import shutil
import time
from importlib import metadata
from typing import Any

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.io.files import read_json, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.tables import SIGN_CONVENTION

PACKAGES = ("influence-pipeline", "tensorflow-cpu", "tensorflow", "keras", "ray", "hydra-core", "pyarrow", "numpy", "scikit-learn")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Manifest:
    """The run's manifest, kept in memory and rewritten atomically after every change."""

    def __init__(self, layout: RunLayout, payload: dict[str, Any]):
        self.layout = layout
        self.payload = payload

    @classmethod
    def open(cls, layout: RunLayout, settings: Settings) -> "Manifest":
        """Start (or resume) a run in layout.root; see the module docstring for the overwrite rule."""
        config_hash = settings.result_hash()
        previous = read_json(layout.manifest) if layout.manifest.exists() else None
        if previous is not None and previous.get("config_hash") != config_hash:
            if not settings.output.overwrite:
                raise ConfigError(
                    f"output.dir={layout.root}: holds a run with a different config "
                    f"(hash {previous.get('config_hash')} vs {config_hash}); choose another output.dir or set output.overwrite=true"
                )
            for folder in layout.result_dirs:
                shutil.rmtree(folder, ignore_errors=True)
            for file in layout.result_files:
                file.unlink(missing_ok=True)
            previous = None
        layout.success.unlink(missing_ok=True)
        payload = {
            "config": settings.to_dict(),
            "config_hash": config_hash,
            "versions": package_versions(),
            "sign_convention": SIGN_CONVENTION,
            "stages": previous.get("stages", {}) if previous else {},
            "status": "running",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        manifest = cls(layout, payload)
        manifest.save()
        return manifest

    def save(self) -> None:
        write_json(self.layout.manifest, self.payload)

    def record_stage(self, stage: str, seconds: float, details: dict[str, Any]) -> None:
        self.payload["stages"][stage] = {"seconds": round(seconds, 3), **details}
        self.save()

    def record_data(self, summary: dict[str, Any]) -> None:
        self.payload["data"] = summary
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        """Mark the run succeeded (and write _SUCCESS last) or failed with its one-line error."""
        self.payload["status"] = status
        self.payload["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if error is not None:
            self.payload["error"] = error
        self.save()
        if status == "succeeded":
            self.layout.success.write_text("")
