"""Projected-gradient features of a features method (trak) on disk, and the checks a rerun applies to them.
No TensorFlow.

    features/method=<m>/seed=<s>/phi-<shard>.npy     [C, n, k] features of the shard's training samples
                                                      (C checkpoints), float32 or float16, memory-mapped on read
    features/method=<m>/seed=<s>/part-<shard>.npz    slope [C, n], gram [C, k, k] = Phi^T Phi of the shard,
                                                      start, stop, key and the BLAKE2b digest of phi's bytes;
                                                      written last: its presence marks the shard complete
    features/method=<m>/seed=<s>/validation.npz      objective [C, k] = P^T grad E, per_sample [C, V, k]
                                                      (queries only), steps [C], key
    features/method=<m>/seed=<s>/kernel.npz          inverse [C, k, k] of the reduced kernel, weights [C, k] =
                                                      inverse @ objective, key

Every file carries the features key; a file under another key, of the wrong shape or whose bytes do not
match their digest is recomputed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.io.files import atomic_path
from pipeline.io.integrity import _UNREADABLE, check_npz
from pipeline.io.layout import RunLayout


def features_dir(root: Path, method: str, seed: int) -> Path:
    return RunLayout(root).features_root / f"method={method}" / f"seed={seed}"


def phi_path(folder: Path, shard: int) -> Path:
    return folder / f"phi-{shard:05d}.npy"


def part_path(folder: Path, shard: int) -> Path:
    return folder / f"part-{shard:05d}.npz"


def digest(array: np.ndarray) -> str:
    """BLAKE2b (16 bytes, hex) of an array's bytes in C order."""
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy stub: **arrays may not be allow_pickle


def write_shard(
    folder: Path, shard: int, start: int, stop: int, phi: np.ndarray, slope: np.ndarray, gram: np.ndarray, key: str
) -> None:
    """phi [C, n, k] (already in the feature dtype), slope [C, n], gram [C, k, k] of samples start..stop-1."""
    with atomic_path(phi_path(folder, shard)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, phi)
    _save_npz(
        part_path(folder, shard),
        slope=np.asarray(slope, np.float64),
        gram=np.asarray(gram, np.float64),
        range=np.array([start, stop], np.int64),
        key=np.array(key),
        digest=np.array(digest(phi)),
    )


class ShardFeatures(NamedTuple):
    phi: np.ndarray  # [C, n, k], memory-mapped
    slope: np.ndarray  # [C, n]
    gram: np.ndarray  # [C, k, k]


def check_shard(folder: Path, shard: int, start: int, stop: int, key: str, shape: tuple[int, int]) -> str | None:
    """None if the shard's features are complete, under `key`, of shape [C, stop - start, k] for
    shape = (C, k) and match their digest; otherwise a one-line reason."""
    problem = check_npz(part_path(folder, shard))
    if problem is not None:
        return problem
    try:
        with np.load(part_path(folder, shard), allow_pickle=False) as part:
            if str(part["key"]) != key:
                return f"written under key {part['key']}, expected {key}"
            if part["range"].tolist() != [start, stop]:
                return f"holds samples {part['range'].tolist()}, expected [{start}, {stop}]"
            stored = str(part["digest"])
        phi = np.load(phi_path(folder, shard), mmap_mode="r", allow_pickle=False)
    except _UNREADABLE + (KeyError,) as e:
        return f"unreadable ({type(e).__name__})"
    expected = (shape[0], stop - start, shape[1])
    if phi.shape != expected:
        return f"features of shape {list(phi.shape)}, expected {list(expected)}"
    if digest(phi) != stored:
        return "features do not match their digest"
    return None


def read_shard(folder: Path, shard: int) -> ShardFeatures:
    with np.load(part_path(folder, shard), allow_pickle=False) as part:
        slope, gram = part["slope"], part["gram"]
    return ShardFeatures(np.load(phi_path(folder, shard), mmap_mode="r", allow_pickle=False), slope, gram)


def write_npz(path: Path, key: str, **arrays: np.ndarray) -> None:
    """validation.npz or kernel.npz: the arrays and the key they were computed under."""
    _save_npz(path, key=np.array(key), **arrays)


def read_npz(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of validation.npz / kernel.npz, or None if missing, unreadable or under another key."""
    if check_npz(path) is not None:
        return None
    with np.load(path, allow_pickle=False) as stored:
        if str(stored["key"]) != key:
            return None
        return {name: stored[name] for name in stored.files if name != "key"}
