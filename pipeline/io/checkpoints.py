"""Training states as .npz files, keyed by position and checked by shape (never by Keras' auto-generated
variable names, which change with every model built in a process): arrays "trainable/<i>",
"non_trainable/<i>", "optimizer/<slot>/<i>" in state order. `StoredStates` reads a seed's checkpoints.

A checkpoint vouches for itself: every array is a zip member with its CRC-32, which zipfile checks as the
array is read, so a changed byte makes the file unreadable (io.integrity.check_npz, `load_state`) and the
train stage retrains the seed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError
from pipeline.io.files import atomic_path
from pipeline.io.integrity import check_npz

StateLayout = Sequence[tuple[str, tuple[int, ...], str]]  # (key, shape, variable path) per state tensor


def save_state(path: Path, layout: StateLayout, arrays: Sequence[np.ndarray]) -> None:
    keys = [key for key, _, _ in layout]
    if len(keys) != len(set(keys)) or len(keys) != len(arrays):
        raise ValueError(f"{path}: state layout and arrays disagree")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **dict(zip(keys, arrays)))  # type: ignore[arg-type]  # numpy stub: **arrays may not be allow_pickle


def load_state(path: Path, layout: StateLayout, fix: str) -> list[np.ndarray]:
    """Arrays in layout order. DataError naming the file and `fix` if it is missing, unreadable, or does not
    hold exactly the layout's keys with the layout's shapes."""
    problem = check_npz(path)
    if problem is not None:
        raise DataError(f"{path}: checkpoint {problem}; {fix}")
    with np.load(path, allow_pickle=False) as archive:
        stored = set(archive.files)
        expected = {key for key, _, _ in layout}
        if stored != expected:
            odd = sorted(expected - stored) or sorted(stored - expected)
            raise DataError(
                f"{path}: state does not match the model ({len(stored)} arrays, the model has {len(expected)}; first "
                f"mismatch {odd[0]}); {fix}"
            )
        arrays = []
        for key, shape, variable in layout:
            array = archive[key]
            if tuple(array.shape) != tuple(shape):
                raise DataError(
                    f"{path}: {key} has shape {tuple(array.shape)} but the model's {variable} has {tuple(shape)}; {fix}"
                )
            arrays.append(array)
        return arrays


def retrain_hint(seed: int) -> str:
    """The fix for a bad checkpoint: the train stage re-records a seed whose files do not read back."""
    return f"rerun with train in stages to retrain seed {seed}"


class StoredStates(Mapping):
    """Checkpoints of one seed as a read-only mapping step -> TrainState, loaded from disk on access.

    `checkpoint(step)` gives the file of a step; `recipe` turns arrays into states (state_layout, unflatten).
    """

    def __init__(self, checkpoint: Any, steps: Sequence[int], recipe: Any, fix: str):
        self.checkpoint, self.steps, self.recipe, self.fix = checkpoint, list(steps), recipe, fix
        self.layout = recipe.state_layout()

    def __getitem__(self, step: int) -> Any:
        if step not in self.steps:
            raise KeyError(step)
        return self.recipe.unflatten(load_state(self.checkpoint(step), self.layout, self.fix))

    def __contains__(self, step: object) -> bool:  # without reading the file
        return step in self.steps

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)
