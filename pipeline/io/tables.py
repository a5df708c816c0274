"""Parquet tables of a run: schedules and per-sample scores, plain Arrow types, atomic writes.

Schema metadata on every score file records the package version, the config hash and the sign
convention, so a file read on its own still says what its numbers mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.files import atomic_path
from pipeline.kernels.schedule import Schedule

INFLUENCE_CONVENTION = (
    "influence = dE/d eps_i at eps = 1 (E = validation objective); positive = harmful: more weight on the "
    "sample raises validation error, removing it changes E by about -influence. "
)
SIGN_CONVENTION = (
    INFLUENCE_CONVENTION
    + "input_grad = dE/d x_i (input_grad.<name> per input), flattened in C order; shapes in the input_shapes metadata."
)
NO_INPUT_GRAD = "not computed (influence.input_grad=false): no input_grad or input_grad_norm columns"

SCHEDULE_SCHEMA = pa.schema([("step", pa.int64()), ("sample_id", pa.int64()), ("lr", pa.float64())])


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)  # CRC per page: a changed byte is found on read


def write_schedule(path: Path, schedule: Schedule) -> None:
    step, sample_id, lr = schedule.to_rows()
    write_table(pa.Table.from_arrays([step, sample_id, lr], schema=SCHEDULE_SCHEMA), path)


def read_schedule(path: Path) -> Schedule:
    table = pq.read_table(path, page_checksum_verification=True)
    return Schedule.from_rows(*(table[c].to_numpy() for c in ("step", "sample_id", "lr")))


def input_grad_column(name: str, n_inputs: int) -> str:
    """input_grad for a single input, input_grad.<name> for each of several."""
    return "input_grad" if n_inputs == 1 else f"input_grad.{name}"


def target_field(targets: np.ndarray, task: str) -> pa.Field:
    """label int64 (classification), target float64 ([n] targets) or fixed_size_list<double>[k] ([n, k])."""
    if task == "classification":
        return pa.field("label", pa.int64())
    if targets.ndim == 1:
        return pa.field("target", pa.float64())
    return pa.field("target", pa.list_(pa.float64(), int(targets.shape[1])))


def target_array(targets: np.ndarray, task: str) -> pa.Array:
    field = target_field(targets, task)
    if pa.types.is_fixed_size_list(field.type):
        return pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(targets, dtype=np.float64).reshape(-1)), field.type.list_size
        )
    return pa.array(targets, field.type)


def scores_table(
    sample_id: np.ndarray,
    targets: np.ndarray,
    task: str,
    influence: np.ndarray,
    input_grad: dict[str, np.ndarray] | None,
    train_loss: np.ndarray,
    metadata: dict[str, str],
    extra: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """One row per sample. input_grad: name -> [n, *shape], each stored flattened as fixed_size_list<float>;
    the shapes go to the schema metadata (`input_shapes`, JSON) next to the sign convention; None: not computed
    (influence.input_grad=false), so no input_grad columns, no input_grad_norm, `input_shapes` {} and the metadata
    `input_grad` says so. `extra`: a method's own float64 columns [n] (trak: self_influence), after train_loss."""
    n = sample_id.shape[0]
    grads = {name: np.ascontiguousarray(g, dtype=np.float32).reshape(n, -1) for name, g in (input_grad or {}).items()}
    fields = [pa.field("sample_id", pa.int64()), target_field(targets, task), pa.field("influence", pa.float64())]
    arrays = [pa.array(sample_id, pa.int64()), target_array(targets, task), pa.array(influence, pa.float64())]
    for name, flat in grads.items():
        column = input_grad_column(name, len(grads))
        fields.append(pa.field(column, pa.list_(pa.float32(), flat.shape[1])))
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]))
    if input_grad is not None:
        norm = np.sqrt(sum(np.sum(np.square(flat, dtype=np.float64), axis=1) for flat in grads.values()))
        fields.append(pa.field("input_grad_norm", pa.float64()))
        arrays.append(pa.array(norm, pa.float64()))
    fields.append(pa.field("train_loss", pa.float64()))
    arrays.append(pa.array(train_loss, pa.float64()))
    for name, values in (extra or {}).items():
        fields.append(pa.field(name, pa.float64()))
        arrays.append(pa.array(np.asarray(values, np.float64), pa.float64()))
    shapes = {name: list(g.shape[1:]) for name, g in (input_grad or {}).items()}
    described = (
        {"sign_convention": SIGN_CONVENTION}
        if input_grad is not None
        else {"sign_convention": INFLUENCE_CONVENTION.rstrip(), "input_grad": NO_INPUT_GRAD}
    )
    schema = pa.schema(fields, metadata={**described, "input_shapes": json.dumps(shapes), **metadata})
    return pa.Table.from_arrays(arrays, schema=schema)


def has_input_grads(schema: pa.Schema) -> bool:
    """Whether a scores part holds input gradients (influence.input_grad=false writes none): its `input_shapes`
    metadata names at least one input."""
    return bool(json.loads((schema.metadata or {}).get(b"input_shapes", b"{}")))


def input_grads(table: pa.Table) -> dict[str, np.ndarray]:
    """name -> [n, *shape] float32 input gradients of a scores table, shapes from its schema metadata ({} for a part
    written without them)."""
    shapes = json.loads((table.schema.metadata or {}).get(b"input_shapes", b"{}"))
    out = {}
    for name, shape in shapes.items():
        column = table[input_grad_column(name, len(shapes))].combine_chunks()
        out[name] = column.flatten().to_numpy().reshape(len(column), *shape)
    return out


def read_parts(paths: list[Path], columns: list[str] | None = None) -> pa.Table:
    """The rows of several Parquet parts (same schema) as one table; [] gives an error, not an empty table."""
    if not paths:
        raise ValueError("no parts to read")
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in sorted(paths)])
