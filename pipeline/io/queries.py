"""Per-query scores on disk: the queries' saved arguments, their long-format Parquet parts (one per query
batch), the checks a resumed run applies to them, and the streaming top-k table. No TensorFlow.

    queries/method=<m>/_arguments.json
    queries/method=<m>/seed=<s>/part-<batch>.parquet   query_id, sample_id, influence[, input_grad...]
    query_top.parquet                                  query_id, rank, sample_id, influence, direction

A part holds whole queries, rows ordered by (query_id, sample_id), in row groups of whole queries of
about ROW_GROUP_BYTES, so a reader filtering on query_id touches only the row groups it needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.config import Settings
from pipeline.io.arguments import QUERY_SETTINGS
from pipeline.io.files import atomic_path
from pipeline.io.integrity import _UNREADABLE, check_part, reconcile
from pipeline.io.layout import RunLayout
from pipeline.io.tables import input_grad_column

ROW_GROUP_BYTES = 4 << 20
QUERY_IDS = b"query_ids"  # schema metadata: JSON list of the part's query ids, in order

QUERY_SIGN_CONVENTION = (
    "influence = dE_q/d eps_i at eps = 1, E_q = the objective of query q (per_sample: validation sample query_id "
    "alone; per_class / groups: the mean over the validation samples of class / group query_id). Positive = harmful: "
    "more weight on "
    "training sample sample_id raises query q's validation error; removing it changes E_q by about -influence. "
    "input_grad = dE_q/d x_i flattened in C order (input_grad.<name> per input); shapes in the input_shapes metadata."
)

Batch = tuple[int, np.ndarray]  # (batch number, query ids [q])
TOP_SCHEMA = pa.schema(
    [
        ("query_id", pa.int64()),
        ("rank", pa.int64()),
        ("sample_id", pa.int64()),
        ("influence", pa.float64()),
        ("direction", pa.string()),
    ]
)


def query_arguments(settings: Settings, trajectory_key: str, groups: str | None = None) -> dict[str, Any]:
    """What the per-query scores depend on: the trajectory, the method, the query settings (not
    influence.query_batch: a new batching recomputes the parts whose queries changed) and, for groups,
    the fingerprint of the validation group ids."""
    influence = settings.to_dict()["influence"]
    recorded = {
        "trajectory_key": trajectory_key,
        "method": settings.influence.method,
        "influence": {k: influence[k] for k in QUERY_SETTINGS},
    }
    return recorded if groups is None else {**recorded, "groups": groups}


def batches(query_ids: np.ndarray, size: int) -> list[Batch]:
    """The query ids cut into consecutive batches of `size`, numbered from 0."""
    return [(number, query_ids[start : start + size]) for number, start in enumerate(range(0, query_ids.size, size))]


def check_query_part(path: Path, query_ids: np.ndarray, n_train: int, key: str) -> str | None:
    """None if the part at `path` reads back (footer), was written under `key`, lists exactly `query_ids`
    in its metadata and holds len(query_ids) x n_train rows; otherwise a one-line reason."""
    problem = check_part(path, None, key)
    if problem is not None:
        return problem
    try:
        with pq.ParquetFile(path) as part:
            stored = json.loads((part.schema_arrow.metadata or {}).get(QUERY_IDS, b"null"))
            rows = part.metadata.num_rows
    except _UNREADABLE + (json.JSONDecodeError,) as e:
        return f"unreadable ({type(e).__name__})"
    if stored != [int(q) for q in query_ids]:
        return "holds other queries than its batch's"
    if rows != query_ids.size * n_train:
        return f"holds {rows} rows, expected {query_ids.size * n_train}"
    return None


def parts_to_compute(
    layout: RunLayout, method: str, seed: int, plan: list[Batch], n_train: int, key: str, repair: bool = True
) -> list[Batch]:
    """The query batches whose part is missing or bad. With `repair`, bad parts and parts of no current
    batch are quarantined (renamed .part-<n>.parquet.corrupt; one line printed for each)."""
    expected = {layout.query_part(method, seed, number): (number, ids) for number, ids in plan}
    check = lambda path, batch: check_query_part(path, batch[1], n_train, key)  # noqa: E731
    return reconcile(layout.query_parts(method, seed), expected, check, "queries", "query batch", repair)


def part_metadata(settings: Settings, seed: int, key: str) -> dict[str, str]:
    """Schema metadata of a query part (query_table adds the query ids, sign convention and input shapes)."""
    return {
        "artifact_key": key,
        "package_version": __version__,
        "config_hash": settings.result_hash(),
        "method": settings.influence.method,
        "queries": settings.influence.queries,
        "seed": str(seed),
        "task": settings.task.name,
        "objective": str(settings.influence.objective),
    }


def query_table(
    query_ids: np.ndarray, influence: np.ndarray, input_grad: dict[str, np.ndarray], metadata: dict[str, str]
) -> pa.Table:
    """Long format, rows ordered by (query_id, sample_id). query_ids [Q]; influence [Q, N];
    input_grad: name -> [Q, N, *shape] (empty: no input_grad columns), stored as fixed_size_list<float>."""
    q, n = influence.shape
    fields = [pa.field("query_id", pa.int64()), pa.field("sample_id", pa.int64()), pa.field("influence", pa.float64())]
    arrays = [
        pa.array(np.repeat(query_ids.astype(np.int64), n)),
        pa.array(np.tile(np.arange(n, dtype=np.int64), q)),
        pa.array(influence.reshape(-1), pa.float64()),
    ]
    for name, grad in input_grad.items():
        flat = np.ascontiguousarray(grad, dtype=np.float32).reshape(q * n, -1)
        fields.append(pa.field(input_grad_column(name, len(input_grad)), pa.list_(pa.float32(), flat.shape[1])))
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]))
    shapes = {name: list(g.shape[2:]) for name, g in input_grad.items()}
    extra = {
        QUERY_IDS.decode(): json.dumps([int(i) for i in query_ids]),
        "sign_convention": QUERY_SIGN_CONVENTION,
        "input_shapes": json.dumps(shapes),
    }
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={**metadata, **extra}))


def write_query_part(table: pa.Table, path: Path, n_train: int) -> None:
    """Atomically, in row groups of whole queries of about ROW_GROUP_BYTES each."""
    bytes_per_query = max(1, table.nbytes // max(1, table.num_rows)) * n_train
    rows = n_train * max(1, ROW_GROUP_BYTES // bytes_per_query)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=rows, write_page_checksum=True)


def _matrix(table: pa.Table, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(query ids [q], influence [q, n_train]) of one part's rows, whatever their order."""
    query = table["query_id"].to_numpy()
    sample = table["sample_id"].to_numpy()
    order = np.lexsort((sample, query))
    ids = np.unique(query)
    if query.size != ids.size * n_train or not np.array_equal(sample[order], np.tile(np.arange(n_train), ids.size)):
        raise ValueError("a query part does not hold every sample_id once per query")
    return ids, table["influence"].to_numpy()[order].reshape(ids.size, n_train)


def top_k(parts_by_seed: list[list[Path]], n_train: int, k: int) -> Iterator[pa.RecordBatch]:
    """For every query, its k most harmful (largest influence, mean over seeds) and k most helpful
    (smallest) training samples, one record batch per query batch: columns query_id, rank (1 = strongest),
    sample_id, influence, direction (harmful | helpful). parts_by_seed[s][b] is part b of seed s: the seeds' parts
    hold the same queries, so only one query batch (q x N per seed) is ever in memory, never the N x Q matrix."""
    k = min(k, n_train)
    for parts in zip(*parts_by_seed):
        matrices = [_matrix(pq.read_table(p, columns=["query_id", "sample_id", "influence"]), n_train) for p in parts]
        ids = matrices[0][0]
        if any(not np.array_equal(m[0], ids) for m in matrices):
            raise ValueError(f"{parts[0].name}: the seeds' parts hold different queries")
        mean = np.mean([m[1] for m in matrices], axis=0)
        columns: dict[str, list[np.ndarray]] = {name: [] for name in TOP_SCHEMA.names}
        for direction, signed in (("harmful", -mean), ("helpful", mean)):
            best = np.argsort(signed, axis=1, kind="stable")[:, :k]  # ties: smaller sample_id first
            columns["query_id"].append(np.repeat(ids, k))
            columns["direction"].append(np.full(ids.size * k, direction))
            columns["rank"].append(np.tile(np.arange(1, k + 1), ids.size))
            columns["sample_id"].append(best.reshape(-1))
            columns["influence"].append(np.take_along_axis(mean, best, axis=1).reshape(-1))
        arrays = [pa.array(np.concatenate(columns[f.name]), f.type) for f in TOP_SCHEMA]
        yield pa.record_batch(arrays, schema=TOP_SCHEMA)


def write_top(records: Iterator[pa.RecordBatch], path: Path, metadata: dict[str, str]) -> int:
    """Stream the top-k record batches into `path` atomically; returns the number of rows."""
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, TOP_SCHEMA.with_metadata(metadata)) as writer:
        for batch in records:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows
