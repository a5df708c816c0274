"""Parquet tables of a run: schedules and per-sample scores, plain Arrow types, atomic writes.

Schema metadata on every score file records the package version, the config hash and the sign
convention, so a file read on its own still says what its numbers mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.files import atomic_path
from pipeline.kernels.schedule import Schedule

SIGN_CONVENTION = (
    "influence = dE/d eps_i at eps = 1 (E = validation objective); positive = harmful: more weight on the "
    "sample raises validation error, removing it changes E by about -influence. "
    "input_grad = dE/d x_i, flattened like x."
)

SCHEDULE_SCHEMA = pa.schema([("step", pa.int64()), ("sample_id", pa.int64()), ("lr", pa.float64())])


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_schedule(path: Path, schedule: Schedule) -> None:
    step, sample_id, lr = schedule.to_rows()
    write_table(pa.Table.from_arrays([step, sample_id, lr], schema=SCHEDULE_SCHEMA), path)


def read_schedule(path: Path) -> Schedule:
    table = pq.read_table(path)
    return Schedule.from_rows(*(table[c].to_numpy() for c in ("step", "sample_id", "lr")))


def scores_schema(n_features: int, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [
            ("sample_id", pa.int64()),
            ("label", pa.int64()),
            ("influence", pa.float64()),
            ("input_grad", pa.list_(pa.float32(), n_features)),
            ("input_grad_norm", pa.float64()),
            ("train_loss", pa.float64()),
        ],
        metadata={"sign_convention": SIGN_CONVENTION, **metadata},
    )


def scores_table(
    sample_id: np.ndarray,
    label: np.ndarray,
    influence: np.ndarray,
    input_grad: np.ndarray,
    train_loss: np.ndarray,
    metadata: dict[str, str],
) -> pa.Table:
    """One row per sample. input_grad: [n, d], stored as fixed_size_list<float>[d]."""
    n, d = input_grad.shape
    flat = pa.array(np.ascontiguousarray(input_grad, dtype=np.float32).reshape(-1))
    return pa.Table.from_arrays(
        [
            pa.array(sample_id, pa.int64()),
            pa.array(label, pa.int64()),
            pa.array(influence, pa.float64()),
            pa.FixedSizeListArray.from_arrays(flat, d),
            pa.array(np.linalg.norm(input_grad, axis=1), pa.float64()),
            pa.array(train_loss, pa.float64()),
        ],
        schema=scores_schema(d, metadata),
    )


def input_grad_matrix(table: pa.Table) -> np.ndarray:
    """[n, d] float32 view of the input_grad column."""
    column = table["input_grad"].combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), column.type.list_size)
