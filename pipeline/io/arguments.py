"""Arguments saved per artifact (after kronfluence's `_save_arguments`): what a trajectory or a method's
scores were computed from, so one output.dir can hold one training scored many ways, and a rerun with
other settings is refused instead of mixing results.

- trajectory key: (data fingerprint, the settings that change the trajectory: task, model, optimizer, train without
  seeds): trajectory/_arguments.json
- scores key: (trajectory key, method, the method's own influence.* settings): scores/method=<m>/_arguments.json
- features key: (trajectory key, method, the settings that change the features): kept with trak's features

Which settings those are is said once, by the settings' own fields (config: field metadata "changes") and, for a
method's own settings, by its registry entry (methods.Method.settings).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.config import (
    FEATURES,
    QUERIES,
    TRAJECTORY,
    InfluenceSettings,
    Settings,
    changed_by,
)
from pipeline.errors import ConfigError
from pipeline.io.files import read_json, remove, write_json
from pipeline.methods import REGISTRY


def key_of(arguments: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of `arguments`."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trajectory_arguments(settings: Settings, data_fingerprint: str) -> dict[str, Any]:
    """Everything the recorded training runs depend on: the data and, by section, the settings that change the
    trajectory (seeds are separate runs, so they are not among them)."""
    return {"data_fingerprint": data_fingerprint, **settings.changing(TRAJECTORY)}


def score_arguments(settings: Settings, trajectory_key: str, method: str | None = None) -> dict[str, Any]:
    """What a method's scores depend on besides the trajectory: its name and its own influence.* settings."""
    method = method or settings.influence.method
    influence = settings.to_dict()["influence"]
    return {
        "trajectory_key": trajectory_key,
        "method": method,
        "influence": {k: influence[k] for k in REGISTRY[method].settings},
    }


def features_key(settings: Settings, trajectory_key: str) -> str:
    """Key of a features method's stored features: the trajectory, the method and the settings that change the
    features (not influence.damping: the kernel is reduced again for another damping, the features are reused)."""
    influence = settings.to_dict()["influence"]
    return key_of(
        {
            "trajectory_key": trajectory_key,
            "method": settings.influence.method,
            **{k: influence[k] for k in FEATURE_SETTINGS},
        }
    )


FEATURE_SETTINGS = changed_by(InfluenceSettings, FEATURES)  # influence.* the features depend on
QUERY_SETTINGS = changed_by(InfluenceSettings, QUERIES)  # influence.* the per-query scores depend on (io.queries)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def first_difference(stored: dict[str, Any], current: dict[str, Any]) -> str:
    """'setting: stored -> current' for the first setting (in sorted order) that differs."""
    a, b = _flatten(stored), _flatten(current)

    def same(x: Any, y: Any) -> bool:
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)

    for name in sorted(set(a) | set(b)):
        if not same(a.get(name, "<unset>"), b.get(name, "<unset>")):
            return f"{name}={a.get(name, '<unset>')} there, {b.get(name, '<unset>')} now"
    return "no setting differs"


def claim(
    run_dir: Path, path: Path, arguments: dict[str, Any], what: str, overwrite: bool, remove_on_overwrite: list[Path]
) -> bool:
    """Record `arguments` in `path`, or check them against the ones recorded there.

    Returns True when the artifact's existing files may be reused (same arguments). On a mismatch it raises
    ConfigError naming the first differing setting, unless `overwrite`: then `remove_on_overwrite` is
    deleted (symbolic links among them are unlinked, never followed), the new arguments are recorded and
    False is returned.
    """
    arguments = json.loads(json.dumps(arguments, sort_keys=True, default=str))  # as stored: tuples become lists
    key = key_of(arguments)
    if path.exists():
        try:
            stored = read_json(path)
        except (OSError, ValueError):
            stored = {"key": None, "arguments": {}}
        if stored.get("key") == key:
            return True
        if not overwrite:
            raise ConfigError(
                f"output.dir={run_dir}: holds {what} computed with other settings "
                f"({first_difference(stored.get('arguments', {}), arguments)}); "
                "choose another output.dir or set output.overwrite=true"
            )
        for target in remove_on_overwrite:
            remove(target)
    write_json(path, {"key": key, "arguments": arguments})
    return False
