"""Checks of the files a resumed run skips (score parts, checkpoints), and quarantine of bad ones.

The checks return None for a good file and a one-line reason otherwise; they never raise on a bad file.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

T = TypeVar("T")
ARTIFACT_KEY = b"artifact_key"  # schema metadata key of a part: the key it was written under
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, pa.ArrowException)


def check_part(
    path: Path, expected_ids: np.ndarray | None, expected_key: str, id_column: str = "sample_id"
) -> str | None:
    """None if the Parquet file at `path` has a readable footer, was written under `expected_key`
    (schema metadata b"artifact_key"), every page reads back and matches its CRC (parts are written with page
    checksums) and, when `expected_ids` (n,) is given, its `id_column` holds exactly those ids, once each,
    in any order. Otherwise a one-line reason."""
    if not path.is_file():
        return "missing"
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as part:
            schema = part.schema_arrow
            key = (schema.metadata or {}).get(ARTIFACT_KEY)
            if key is None:
                return f"has no {ARTIFACT_KEY.decode()} metadata, expected key {expected_key}"
            if key != expected_key.encode():
                return f"written under key {key.decode(errors='replace')}, expected {expected_key}"
            table = part.read()  # every page: its checksum is verified as it is read
            if expected_ids is None:
                return None
            if id_column not in schema.names:
                return f"has no {id_column} column"
            ids = table.column(id_column).to_numpy()
    except _UNREADABLE as e:
        return f"unreadable ({_short(e)})"
    expected = np.asarray(expected_ids).reshape(-1)
    if ids.size != expected.size:
        return f"holds {ids.size} rows, expected {expected.size}"
    distinct = np.unique(ids)
    if distinct.size != ids.size:
        return f"holds duplicate {id_column}s ({ids.size} rows, {distinct.size} distinct)"
    if not np.array_equal(distinct, np.sort(expected)):
        return f"{id_column}s differ from the shard's"
    return None


def check_npz(path: Path) -> str | None:
    """None if `path` is an .npz archive whose every array loads (allow_pickle=False); else a one-line reason."""
    if not path.is_file():
        return "missing"
    if not zipfile.is_zipfile(path):  # also a truncated archive: its central directory is at the end
        return "unreadable (not a zip file)"
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                archive[name]
    except _UNREADABLE as e:
        return f"unreadable ({_short(e)})"
    return None


def quarantine(path: Path) -> Path:
    """Rename `path` to .<name>.corrupt in its folder (.<name>.corrupt.1, .2, ... if taken) and return the new path.

    The leading dot hides it from directory readers (pyarrow datasets, Spark) and the suffix from
    `*.parquet` globs (DuckDB). Never overwrites: the new name is reserved with O_EXCL before the rename."""
    n = 0
    while True:
        target = path.with_name(f".{path.name}.corrupt" + (f".{n}" if n else ""))
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            n += 1
            continue
        try:
            os.replace(path, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target


def _short(error: BaseException) -> str:
    """The first sentence of an error message, on one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(".")


def reconcile(
    present: list[Path],
    expected: Mapping[Path, T],
    check: Callable[[Path, T], str | None],
    tag: str,
    unit: str,
    repair: bool,
) -> list[T]:
    """The expected parts (path -> what it should hold) that are missing or fail `check`. With `repair`,
    failing parts and present parts that are not expected (e.g. from another shard size) are quarantined,
    one line printed for each, so that every row ends up in exactly one part."""
    if repair:
        for path in present:
            if path not in expected:
                print(f"[{tag}] {path}: belongs to no {unit} of this run; moved to {quarantine(path).name}")
    todo = []
    for path, item in expected.items():
        problem = check(path, item)
        if problem is None:
            continue
        if repair and problem != "missing":
            print(f"[{tag}] {path}: {problem}; moved to {quarantine(path).name}, recomputing")
        todo.append(item)
    return todo
