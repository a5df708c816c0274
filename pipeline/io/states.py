"""Every training state of one seed, kept from training so the reverse sweep needs no replay
(influence.state_memory): trajectory/seed=<s>/states.npy.

One .npy file holding a record array [T]: record t is the state before step t, with one field per
flattened state tensor, named by its checkpoint key ("trainable/0000", ...) and shaped as the tensor.
It is written through a memory map under a temporary name and renamed when complete; the sweep maps it
read-only and reads a segment's rows at a time, so the operating system keeps it in RAM when it fits
and pages it from disk when not. It is a cache: a missing or bad file means the sweep replays from the
checkpoints, which stay the record of the run.
"""

from __future__ import annotations

import os
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.io.checkpoints import StateLayout

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int | None:
    """Bytes of a size such as "2GB", "512MiB", "1.5g" or 1000000 (decimal K/M/G/T, binary Ki/Mi/Gi/Ti);
    None if `text` is not a size."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text if text >= 0 else None
    match = _SIZE.match(str(text))
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def record_dtype(layout: StateLayout, dtypes: Sequence[np.dtype]) -> np.dtype:
    """The record of one state: a field per state tensor (its key, dtype and shape)."""
    return np.dtype([(key, np.dtype(dtype), tuple(shape)) for (key, shape, _), dtype in zip(layout, dtypes)])


def state_bytes(layout: StateLayout, dtypes: Sequence[np.dtype]) -> int:
    return record_dtype(layout, dtypes).itemsize


class StateWriter:
    """Fills trajectory/seed=<s>/states.npy segment by segment during training; `commit` renames it
    into place once every row is written, `discard` removes the partial file. Each segment is copied
    into the file by a background thread while training runs the next one (NumPy releases the GIL
    for the copy); at most one segment waits, so memory holds at most two segments besides the file."""

    def __init__(self, path: Path, layout: StateLayout, dtypes: Sequence[np.dtype], n_steps: int):
        self.path, self.layout, self.n_steps = path, layout, n_steps
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._rows = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=record_dtype(layout, dtypes), shape=(n_steps,))
        self._written = np.zeros(n_steps, dtype=bool)
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="states.npy")
        self._pending: Future | None = None

    def write(self, start: int, states: Sequence[np.ndarray]) -> None:
        """Rows start..start+n-1 from the flattened states, one array [n, *shape] per state tensor (the
        arrays must not be changed afterwards: they are copied later)."""
        self._wait()
        self._pending = self._copier.submit(self._copy, start, list(states))

    def _copy(self, start: int, states: list[np.ndarray]) -> None:
        n = states[0].shape[0]
        block = self._rows[start : start + n]
        for (key, _, _), array in zip(self.layout, states):
            block[key] = array
        self._written[start : start + n] = True

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()  # re-raises a failed copy
            self._pending = None

    def commit(self) -> None:
        self._wait()
        self._copier.shutdown()
        if not self._written.all():
            raise ValueError(f"{self.path}: rows {np.flatnonzero(~self._written)[:3].tolist()}... never written")
        self._rows.flush()
        del self._rows
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        self._copier.shutdown(wait=True, cancel_futures=True)
        self._rows = None
        self._tmp.unlink(missing_ok=True)


class StoredRun:
    """Read-only view of a states.npy: `(start, stop) -> [array [stop - start, *shape] per state tensor]`,
    the `every_state` argument of kernels.trajectory.ReverseSweep."""

    def __init__(self, rows: np.ndarray, layout: StateLayout):
        self._rows, self._keys = rows, [key for key, _, _ in layout]

    def __call__(self, start: int, stop: int) -> list[np.ndarray]:
        block = np.asarray(self._rows[start:stop])  # one read of the segment's rows
        return [np.ascontiguousarray(block[key]) for key in self._keys]


def open_states(path: Path, layout: StateLayout, dtypes: Sequence[np.dtype], n_steps: int) -> tuple[StoredRun | None, str | None]:
    """(the stored run, None), or (None, why not in one line) when the file is missing, unreadable,
    truncated, or not the states of this model and schedule."""
    if not path.is_file():
        return None, "missing"
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        return None, f"unreadable ({str(e).splitlines()[0][:120]})"
    if rows.dtype != record_dtype(layout, dtypes):
        return None, "holds the states of another model"
    if rows.shape != (n_steps,):
        return None, f"holds {rows.shape[0] if rows.ndim == 1 else rows.shape} states, the schedule has {n_steps} steps"
    return StoredRun(rows, layout), None

