"""What the report's queries section shows, for a run with influence.queries per_sample, per_class or groups:
which queries, their validation rows, the first seed's trained model on those rows, and each shown query's
most harmful and most helpful training samples from query_top.parquet. The markup is built in html.py.

A query q has the objective E_q: one validation sample's objective (per_sample), or the mean over the
validation samples of class q (per_class) or of group q (groups: dataset.g_val). Its influence on training
sample i is dE_q/d eps_i, the mean over seeds: positive = harmful (more weight on i raises E_q).

The model's outputs are read from the file the queries' stage wrote in a worker (io.predictions): the report reads
files only and never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.io.layout import RunLayout
from pipeline.io.predictions import predictions_path, read_predictions

if TYPE_CHECKING:
    from pipeline.data import Dataset

QUERIES_SHOWN = 6  # queries with a block of their own: misclassified (largest error) first, then by query_id
TOP_SHOWN = 5  # most harmful and most helpful training samples shown per query
DIRECTIONS = ("harmful", "helpful")  # query_top.parquet's direction values


@dataclass(frozen=True)
class Query:
    """One query as the report shows it.

    rows: [m] validation rows whose mean objective is E_q (per_sample: [query_id]); outputs: [m, k] the first
    seed's final model on them; errors: [m] 1.0 where argmax(outputs) != label, else 0.0 (classification) or
    |outputs - target| (regression, Euclidean over the k outputs); top: direction -> {rank, sample_id, influence}
    [<= TOP_SHOWN] in rank order (harmful: largest influence first; helpful: smallest first).
    """

    query_id: int
    rows: np.ndarray
    outputs: np.ndarray
    errors: np.ndarray
    top: dict[str, dict[str, np.ndarray]]

    @property
    def error(self) -> float:
        """Mean error over the query's rows: the error rate (1 - accuracy) or the mean |error|."""
        return float(self.errors.mean())


@dataclass(frozen=True)
class Queries:
    """The run's queries: kind (per_sample | per_class | groups), how many query_top.parquet holds, how many of them
    are misclassified (per_sample classification; else None), the seed whose final model made the predictions, the
    seeds influence is averaged over (as query_top.parquet records them, e.g. "0,1") and the shown queries in order."""

    kind: str
    n_queries: int
    n_wrong: int | None
    seed: int
    seeds: str
    shown: list[Query]


def read_queries(run_dir: Path, manifest: dict[str, Any], dataset: Dataset) -> Queries | None:
    """The queries section's content, or None when the run has no queries (influence.queries=mean in the manifest,
    or no query_top.parquet). Reads the predictions of every validation row a query uses, to put the worst queries
    first."""
    influence = (manifest.get("config") or {}).get("influence") or {}
    kind = influence.get("queries", "mean")
    path = RunLayout(run_dir).query_top
    if kind == "mean" or not path.exists():
        return None
    metadata = pq.read_schema(path).metadata or {}
    recorded = metadata.get(b"queries", b"?").decode()
    if recorded != kind:
        raise ValueError(f"{path}: holds {recorded} queries but manifest.json has influence.queries={kind}")
    ids = np.unique(pq.read_table(path, columns=["query_id"])["query_id"].to_numpy())
    rows = [validation_rows(kind, int(q), dataset, path) for q in ids]
    used = np.unique(np.concatenate(rows))
    seed = int(manifest["config"]["train"]["seeds"][0])
    outputs = validation_outputs(run_dir, manifest, dataset, seed, used)
    errors = prediction_errors(dataset.task, outputs, dataset.y_val[used])
    where = [np.searchsorted(used, r) for r in rows]
    mean = np.array([errors[w].mean() for w in where])
    order = np.lexsort((ids, -mean))[:QUERIES_SHOWN]  # largest error first, ties by query_id
    top = read_top(path, ids[order], dataset.n_train)
    shown = [Query(int(ids[i]), rows[i], outputs[where[i]], errors[where[i]], top[int(ids[i])]) for i in order]
    n_wrong = int((mean > 0).sum()) if kind == "per_sample" and dataset.task == "classification" else None
    return Queries(kind, int(ids.size), n_wrong, seed, metadata.get(b"seeds", str(seed).encode()).decode(), shown)


def validation_rows(kind: str, query_id: int, dataset: Dataset, path: Path) -> np.ndarray:
    """[m] validation rows of query `query_id`: the sample itself (per_sample), its class's or group's rows."""
    if kind == "per_sample":
        if not 0 <= query_id < dataset.n_val:
            raise ValueError(f"{path}: query_id {query_id} is not a validation sample id (0..{dataset.n_val - 1})")
        return np.array([query_id])
    if kind == "per_class":
        members, what = dataset.y_val, "class"
    elif kind == "groups":
        if dataset.g_val is None:
            raise ValueError(f"{path}: holds groups queries but the dataset has no validation group ids (g_val)")
        members, what = dataset.g_val, "group"
    else:
        raise ValueError(f"{path}: unknown kind of queries {kind!r} (known: per_sample, per_class, groups)")
    rows = np.flatnonzero(np.asarray(members) == query_id)
    if rows.size == 0:
        raise ValueError(f"{path}: {what} {query_id} has no validation sample")
    return rows


def prediction_errors(task: str, outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[m] errors of outputs [m, k] against targets: 1.0 where argmax != label, else 0.0 (classification),
    |output - target| (regression; Euclidean over k outputs, targets [m] or [m, k])."""
    if task == "classification":
        return (np.argmax(outputs, axis=1) != targets).astype(np.float64)
    return np.linalg.norm(outputs - np.asarray(targets, np.float64).reshape(len(targets), -1), axis=1)


def predictions(task: str, outputs: np.ndarray) -> np.ndarray:
    """[m] predicted classes (argmax of outputs [m, k]) or [m] / [m, k] regression outputs ([m] when k = 1)."""
    if task == "classification":
        return np.argmax(outputs, axis=1)
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def read_top(path: Path, query_ids: np.ndarray, n_train: int) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """query_id -> direction -> {rank, sample_id, influence} [<= TOP_SHOWN] in rank order, for query_ids only
    (read with a filter: only the row groups that hold them)."""
    table = pq.read_table(path, filters=[("query_id", "in", [int(q) for q in query_ids])])
    columns = {
        name: table[name].to_numpy(zero_copy_only=False)
        for name in ("query_id", "rank", "sample_id", "influence", "direction")
    }
    if columns["sample_id"].size and int(columns["sample_id"].max()) >= n_train:
        raise ValueError(
            f"the dataset has {n_train} training samples but {path} has sample_id {int(columns['sample_id'].max())}"
        )
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for q in query_ids:
        out[int(q)] = {}
        for direction in DIRECTIONS:
            mine = np.flatnonzero((columns["query_id"] == q) & (columns["direction"] == direction))
            mine = mine[np.argsort(columns["rank"][mine], kind="stable")][:TOP_SHOWN]
            out[int(q)][direction] = {name: columns[name][mine] for name in ("rank", "sample_id", "influence")}
    return out


def validation_outputs(
    run_dir: Path, manifest: dict[str, Any], dataset: Dataset, seed: int, rows: np.ndarray
) -> np.ndarray:
    """[len(rows), k] outputs of seed's trained model (its last checkpoint) on validation rows `rows`, inference
    mode, as float64: read from the predictions the queries' stage wrote (io.predictions), which must be those of
    the queries in query_top.parquet (the same queries key) and have the dataset's k outputs per row."""
    layout = RunLayout(run_dir)
    method = manifest["config"]["influence"]["method"]
    path = predictions_path(layout, method, seed)
    if not path.exists():
        raise ValueError(
            f"{path}: missing; the queries section needs seed {seed}'s predictions (rerun with score in stages)"
        )
    stored, outputs, key = read_predictions(path)
    expected = (pq.read_schema(layout.query_top).metadata or {}).get(b"artifact_key", b"").decode()
    if key != expected:
        raise ValueError(
            f"{path}: written for other queries (key {key}, query_top.parquet has {expected}); "
            "rerun with score in stages"
        )
    width = dataset.num_classes if dataset.task == "classification" else dataset.output_dim
    if outputs.shape[1] != width:
        raise ValueError(f"{path}: holds {outputs.shape[1]} outputs per row but the dataset's model has {width}")
    where = np.minimum(np.searchsorted(stored, rows), max(stored.size - 1, 0))
    if stored.size == 0 or not np.array_equal(stored[where], rows):
        raise ValueError(f"{path}: lacks validation rows the queries use; rerun with score in stages")
    return outputs[where]
