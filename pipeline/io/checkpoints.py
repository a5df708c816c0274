"""Training states as .npz files: arrays named "trainable/<path>", "non_trainable/<path>",
"optimizer/<slot>/<path>" (DESIGN.md section 3). Array order in the file is the state order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io.files import atomic_path


def save_state(path: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate state names in {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **dict(zip(names, arrays)))


def load_state(path: Path, names: list[str]) -> list[np.ndarray]:
    """Arrays in the order of `names`; raises if the file does not hold exactly those names."""
    with np.load(path, allow_pickle=False) as archive:
        stored = list(archive.files)
        if sorted(stored) != sorted(names):
            missing = sorted(set(names) - set(stored)) or sorted(set(stored) - set(names))
            raise ValueError(f"{path}: state does not match the model (first mismatch: {missing[0]})")
        return [archive[n] for n in names]
