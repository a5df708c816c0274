"""Atomic writes: every file is written under a hidden temporary name in its folder, then renamed. Symbolic
links are never written through (a folder that is a link is refused) nor followed on delete (`remove`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DataError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    ConfigError if the folder of `path`, or the nearest of its parents that exists, is a symbolic link (the
    rename replaces a link at `path` itself, never its target).
    """
    refuse_link(_nearest_existing(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Strict JSON (NaN and inf become null, so every JSON reader accepts the file), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(payload), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def remove(path: Path) -> None:
    """Delete a file, a folder with everything in it, or a symbolic link (the link only, never what it points
    to; links inside a folder are unlinked, not followed). Nothing happens if `path` does not exist."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(f"{path}: cannot remove it ({exc.strerror or exc})") from None


def first_link(paths: Iterable[Path]) -> Path | None:
    """The first symbolic link among `paths` and everything inside those that are folders (links are not
    followed); None if there is none."""
    for path in paths:
        if path.is_symlink():
            return path
        for folder, dirs, files in os.walk(path):
            for name in sorted(dirs) + sorted(files):
                if os.path.islink(os.path.join(folder, name)):
                    return Path(folder, name)
    return None


def refuse_link(path: Path) -> None:
    """ConfigError if `path` is a symbolic link: a run never writes or deletes through one."""
    if path.is_symlink():
        raise ConfigError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); a run never writes or deletes through links: "
            "replace it with a real folder or file, or choose another output.dir"
        )


def _nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (a dangling link counts as existing)."""
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path
