"""A seed's trained model on the validation rows its run's queries use, written by the queries' stage for the
report (which only reads files). No TensorFlow.

    queries/method=<m>/seed=<s>/_predictions.parquet   row int64, outputs fixed_size_list<double>[k]

Rows ascending; the schema metadata holds the queries key (artifact_key) and the seed. The leading underscore keeps
the file out of the queries' parts for dataset readers (pyarrow datasets, Spark), as for _summary.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.integrity import check_part
from pipeline.io.layout import RunLayout
from pipeline.io.tables import write_table

ROW = "row"


def predictions_path(layout: RunLayout, method: str, seed: int) -> Path:
    return layout.queries_dir(method, seed) / "_predictions.parquet"


def write_predictions(path: Path, rows: np.ndarray, outputs: np.ndarray, key: str, seed: int) -> None:
    """rows [m] ascending validation rows, outputs [m, k] float64; atomically, with page checksums."""
    flat = np.ascontiguousarray(outputs, np.float64).reshape(rows.size, -1)
    schema = pa.schema(
        [pa.field(ROW, pa.int64()), pa.field("outputs", pa.list_(pa.float64(), flat.shape[1]))],
        metadata={"artifact_key": key, "seed": str(seed)},
    )
    arrays = [pa.array(rows, pa.int64()), pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])]
    write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def check_predictions(path: Path, rows: np.ndarray, key: str) -> str | None:
    """None if the file at `path` reads back under `key` and holds exactly `rows`; otherwise a one-line reason."""
    return check_part(path, rows, key, id_column=ROW)


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows [m], outputs [m, k] float64, the key it was written under)."""
    table = pq.read_table(path, page_checksum_verification=True)
    outputs = table["outputs"].combine_chunks()
    key = (table.schema.metadata or {}).get(b"artifact_key", b"").decode()
    return table[ROW].to_numpy(), outputs.flatten().to_numpy().reshape(len(outputs), outputs.type.list_size), key
