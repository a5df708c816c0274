"""Every training state of one seed, kept from training so the reverse sweep needs no replay
(influence.state_memory): trajectory/seed=<s>/states.npy.

One .npy file holding a record array [T]: record t is the state before step t, with one field per
flattened state tensor, named by its checkpoint key ("trainable/0000", ...) and shaped as the tensor.
It is written through a memory map under a temporary name and renamed when complete; the sweep maps it
read-only and reads a segment's rows at a time, so the operating system keeps it in RAM when it fits
and pages it from disk when not. It is a cache: a missing or bad file means the sweep replays from the
checkpoints, which stay the record of the run.

The file vouches for itself: the SHA-256 of every segment's rows (the states between two checkpoints) is
taken as it is written and recorded in states.digests.json, written before states.npy is renamed into
place. A segment is hashed again as the sweep reads it; a mismatch is reported in one line, the file is
quarantined (.states.npy.corrupt) and the sweep replays the rest from the checkpoints. A file without
digests (an older version) is not trusted at all.

influence.state_memory=auto sets the budget when training starts (`auto_budget`): AUTO_SHARE of the memory
available now and of the free disk under output.dir, whichever is smaller, so that the file fits on disk with room
to spare and the page cache can keep it while the sweeps read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from bisect import bisect_right
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.io.checkpoints import StateLayout
from pipeline.io.files import write_json

Segment = tuple[int, int, str]  # rows start..stop-1 and the SHA-256 of their bytes

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


AUTO = "auto"  # influence.state_memory: the budget is AUTO_SHARE of the available memory and free disk
AUTO_SHARE = 0.25


def memory_available() -> int | None:
    """Bytes of memory available to new work now: /proc/meminfo MemAvailable (else free pages from os.sysconf),
    no more than what a cgroup v2 memory limit leaves; None when unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def disk_free(path: Path) -> int | None:
    """Bytes free to an unprivileged user on the file system of `path` (its closest existing parent); None when
    unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        info = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return info.f_bavail * info.f_frsize


def auto_budget(directory: Path) -> tuple[int, int | None, int | None]:
    """(budget, memory available, free disk of `directory`) of influence.state_memory=auto: AUTO_SHARE of the
    smaller of the two (0 when neither is known: keep nothing)."""
    memory, disk = memory_available(), disk_free(directory)
    known = [v for v in (memory, disk) if v is not None]
    return (int(AUTO_SHARE * min(known)) if known else 0), memory, disk


def record_dtype(layout: StateLayout, dtypes: Sequence[np.dtype]) -> np.dtype:
    """The record of one state: a field per state tensor (its key, dtype and shape)."""
    return np.dtype([(key, np.dtype(dtype), tuple(shape)) for (key, shape, _), dtype in zip(layout, dtypes)])


def state_bytes(layout: StateLayout, dtypes: Sequence[np.dtype]) -> int:
    return record_dtype(layout, dtypes).itemsize


def digests_path(path: Path) -> Path:
    """Where the digests of a states file are recorded: states.npy -> states.digests.json."""
    return path.with_suffix(".digests.json")


def discard_states(path: Path) -> None:
    """Remove a states file and its digests (the states of an earlier training must never be read)."""
    path.unlink(missing_ok=True)
    digests_path(path).unlink(missing_ok=True)


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(rows.view(np.uint8).data).hexdigest()


class StateWriter:
    """Fills trajectory/seed=<s>/states.npy segment by segment during training; `commit` records the
    segments' digests and renames it into place once every row is written, `discard` removes the partial
    file. Each segment is copied into the file and hashed by a background thread while training runs the
    next one (NumPy and hashlib release the GIL); at most one segment waits, so memory holds at most two
    segments besides the file."""

    def __init__(self, path: Path, layout: StateLayout, dtypes: Sequence[np.dtype], n_steps: int):
        self.path, self.layout, self.n_steps = path, layout, n_steps
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._rows = np.lib.format.open_memmap(
            self._tmp, mode="w+", dtype=record_dtype(layout, dtypes), shape=(n_steps,)
        )
        self._written = np.zeros(n_steps, dtype=bool)
        self._segments: list[Segment] = []
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="states.npy")
        self._pending: Future | None = None

    def write(self, start: int, states: Sequence[np.ndarray]) -> None:
        """Rows start..start+n-1 from the flattened states, one array [n, *shape] per state tensor: one
        segment, written once (the arrays must not be changed afterwards: they are copied later)."""
        self._wait()
        self._pending = self._copier.submit(self._copy, start, list(states))

    def _copy(self, start: int, states: list[np.ndarray]) -> None:
        n = states[0].shape[0]
        if self._written[start : start + n].any():
            raise ValueError(f"{self.path}: rows {start}..{start + n - 1} written twice")
        block = self._rows[start : start + n]
        for (key, _, _), array in zip(self.layout, states):
            block[key] = array
        self._segments.append((start, start + n, _digest(block)))
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
        segments = sorted(self._segments)
        write_json(digests_path(self.path), {"algorithm": "sha256", "rows": self.n_steps, "segments": segments})
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        self._copier.shutdown(wait=True, cancel_futures=True)
        if hasattr(self, "_rows"):
            del self._rows  # closes the memory map before its file goes
        self._tmp.unlink(missing_ok=True)


class StoredRun:
    """Read-only view of a states.npy whose segments are checked against their digests as they are read:
    `(start, stop) -> [array [stop - start, *shape] per state tensor]`, the `every_state` argument of
    kernels.trajectory.ReverseSweep. After a segment that does not match, `on_mismatch` gets one line, the
    file is quarantined and every call returns None (the sweep replays). The sweep goes backwards, so the
    segment before the one read is read and checked ahead by a background thread."""

    def __init__(
        self,
        path: Path,
        rows: np.ndarray,
        layout: StateLayout,
        segments: list[Segment],
        on_mismatch: Callable[[str], None],
    ):
        self.path, self._rows, self._keys, self._segments = path, rows, [key for key, _, _ in layout], segments
        self._starts = [start for start, _, _ in segments]
        self._on_mismatch = on_mismatch
        self._file = _identity(path)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="states.npy")
        self._ahead: tuple[int, Future] | None = None
        self.damaged: int | None = None  # the first segment that did not match its digest

    def __call__(self, start: int, stop: int) -> list[np.ndarray] | None:
        if self.damaged is not None:
            return None
        first, last = bisect_right(self._starts, start) - 1, bisect_right(self._starts, stop - 1) - 1
        taken = [self._take(i) for i in range(first, last + 1)]
        bad = next((i for i, block in zip(range(first, last + 1), taken) if block is None), None)
        if bad is not None:
            self._reject(bad)
            return None
        blocks = [block for block in taken if block is not None]
        if first > 0:
            self._ahead = (first - 1, self._reader.submit(self._read, first - 1))
        offset = self._starts[first]
        rows = (blocks[0] if len(blocks) == 1 else np.concatenate(blocks))[start - offset : stop - offset]
        return [np.ascontiguousarray(rows[key]) for key in self._keys]

    def _take(self, i: int) -> np.ndarray | None:
        ahead, self._ahead = self._ahead, None
        return ahead[1].result() if ahead is not None and ahead[0] == i else self._read(i)

    def _read(self, i: int) -> np.ndarray | None:
        """Segment i's rows (one read, a copy), or None if they do not match its digest."""
        start, stop, digest = self._segments[i]
        rows = np.array(self._rows[start:stop])
        return rows if _digest(rows) == digest else None

    def _reject(self, i: int) -> None:
        from pipeline.io.integrity import quarantine

        self.damaged = i
        start, stop, _ = self._segments[i]
        moved = ""
        if _identity(self.path) == self._file:  # not already moved aside by another sweep of this seed
            moved = f"; moved to {quarantine(self.path).name}"
        self._on_mismatch(f"segment {i} (steps {start}..{stop - 1}) does not match its digest{moved}")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def open_states(
    path: Path,
    layout: StateLayout,
    dtypes: Sequence[np.dtype],
    n_steps: int,
    on_mismatch: Callable[[str], None] | None = None,
) -> tuple[StoredRun | None, str | None]:
    """(the stored run, None), or (None, why not in one line) when the file is missing, unreadable,
    truncated, not the states of this model and schedule, or without valid digests. on_mismatch: told in
    one line when a segment read later does not match its digest (default: printed with the path)."""
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
    segments, problem = _read_digests(digests_path(path), n_steps)
    if problem is not None:
        return None, problem
    tell = on_mismatch or (lambda why: print(f"{path} {why}; replaying from the checkpoints"))
    return StoredRun(path, rows, layout, segments, tell), None


def _read_digests(path: Path, n_steps: int) -> tuple[list[Segment], str | None]:
    """The recorded segments, or why they cannot vouch for the file: missing (an older version wrote the
    file), unreadable, or not covering rows 0..n_steps-1 exactly once."""
    if not path.is_file():
        return [], f"has no digests ({path.name} missing: written by an older version), so it is not trusted"
    try:
        recorded = json.loads(path.read_text())["segments"]
        segments = [(int(start), int(stop), str(digest)) for start, stop, digest in recorded]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [], f"has unreadable digests ({path.name}: {str(e).splitlines()[0][:120]}), so it is not trusted"
    bounds = [start for start, _, _ in segments] + [n_steps]
    if bounds[0] != 0 or any(stop != bounds[i + 1] or stop <= start for i, (start, stop, _) in enumerate(segments)):
        return [], f"has digests ({path.name}) that do not cover its {n_steps} rows, so it is not trusted"
    return segments, None
