"""Read what the report needs from a finished run directory (manifest, ranking, scores, verify).

Only the run's own files are read; training inputs are passed in by the caller (the Dataset).
Score parts are listed one by one (RunLayout.score_parts), so quarantined *.corrupt parts are never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline import metrics
from pipeline.io.layout import RunLayout
from pipeline.io.tables import input_grad_column, input_grads


@dataclass(frozen=True)
class Ranking:
    """ranking.parquet rows of one method, sorted by rank (1 = largest influence_mean first).

    columns: name -> [n] arrays; `target` of [n, k] regression targets is [n, k].
    """

    method: str
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["sample_id"])

    def head(self, k: int) -> dict[str, np.ndarray]:
        """The k rows of largest influence, largest first."""
        return {name: col[:k] for name, col in self.columns.items()}

    def tail(self, k: int) -> dict[str, np.ndarray]:
        """The k rows of smallest influence, smallest (largest rank) first."""
        k = min(k, len(self))
        return {name: col[::-1][:k] for name, col in self.columns.items()}


@dataclass(frozen=True)
class Verify:
    """The verify stage's tables (None when absent) and its manifest summary."""

    gradcheck: dict[str, np.ndarray] | None
    loo: dict[str, np.ndarray] | None
    summary: dict[str, Any]

    def loo_correlations(self) -> dict[str, float]:
        """Pearson/Spearman/Kendall of predicted vs actual change: the manifest's, else recomputed."""
        recorded = self.summary.get("loo") or {}
        if all(recorded.get(k) is not None for k in ("pearson", "spearman", "kendall")):
            return {k: float(recorded[k]) for k in ("pearson", "spearman", "kendall")}
        assert self.loo is not None
        return metrics.correlations(self.loo["predicted_change"], self.loo["actual_change"])

    def gradcheck_rows(self) -> list[tuple[str, int, float, float]]:
        """(kind, n, median, max relative error) per kind, computed from gradcheck.parquet."""
        assert self.gradcheck is not None
        rows = []
        for kind in sorted(set(self.gradcheck["kind"].tolist())):
            errors = self.gradcheck["relative_error"][self.gradcheck["kind"] == kind]
            rows.append((kind, int(errors.size), float(np.median(errors)), float(np.max(errors))))
        return rows


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A column as a numpy array; fixed-size lists (regression targets [n, k]) become [n, k]."""
    if pa.types.is_fixed_size_list(column.type):
        values = column.combine_chunks()
        return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: _numpy(table[name]) for name in table.column_names}


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def read_rankings(run_dir: Path) -> list[Ranking]:
    """One Ranking per method in ranking.parquet, methods in file order."""
    table = pq.read_table(run_dir / "ranking.parquet")
    out = []
    for method in dict.fromkeys(table["method"].to_pylist()):
        rows = table.filter(pc.equal(table["method"], method))
        rows = rows.take(pc.sort_indices(rows, sort_keys=[("rank", "ascending")]))
        out.append(Ranking(str(method), _columns(rows.drop_columns(["method"]))))
    return out


def _input_shapes(part: Path) -> dict[str, tuple[int, ...]]:
    """The input_shapes a score part records in its schema metadata."""
    recorded = json.loads((pq.read_schema(part).metadata or {}).get(b"input_shapes", b"{}"))
    return {name: tuple(shape) for name, shape in recorded.items()}


def mean_input_grads(
    run_dir: Path, method: str, sample_ids: np.ndarray, input_shapes: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray] | None:
    """name -> [len(sample_ids), *shape] input_grad averaged over seeds, rows in the order of sample_ids; None when
    the parts hold no input gradients (influence.input_grad=false).

    Reads the parts of every seed of the method; input_shapes (the dataset's) must match what the parts record.
    """
    layout = RunLayout(run_dir)
    seeds = sorted(int(folder.name.split("=", 1)[1]) for folder in layout.method_dir(method).glob("seed=*"))
    parts = [part for seed in seeds for part in layout.score_parts(method, seed)]
    if not parts:
        raise ValueError(f"{layout.method_dir(method)}: no score parts")
    if not any(_input_shapes(part) for part in parts):
        return None
    for part in parts:
        recorded = _input_shapes(part)
        if recorded != input_shapes:
            raise ValueError(f"{part}: input shapes {recorded} differ from the dataset's {input_shapes}")
    wanted = pa.array(np.asarray(sample_ids, np.int64))
    columns = [input_grad_column(name, len(input_shapes)) for name in input_shapes]
    table = pads.dataset([str(p) for p in parts], format="parquet").to_table(
        columns=["sample_id", *columns], filter=pads.field("sample_id").isin(wanted)
    )
    grads = input_grads(table.replace_schema_metadata(pq.read_schema(parts[0]).metadata))
    ids = table["sample_id"].to_numpy()
    out = {name: np.zeros((len(sample_ids), *shape)) for name, shape in input_shapes.items()}
    for row, sid in enumerate(sample_ids):
        match = ids == sid
        if not match.any():
            raise ValueError(f"scores/method={method}: no input_grad for sample_id {sid}")
        for name, grad in grads.items():
            out[name][row] = grad[match].astype(np.float64).mean(axis=0)
    return out


def read_verify(run_dir: Path, manifest: dict[str, Any]) -> Verify | None:
    """The verify stage's outputs, or None when it did not run."""
    folder = run_dir / "verify"
    paths = {name: folder / f"{name}.parquet" for name in ("gradcheck", "loo")}
    if not any(p.exists() for p in paths.values()):
        return None
    tables = {name: _columns(pq.read_table(p)) if p.exists() else None for name, p in paths.items()}
    summary = (manifest.get("stages") or {}).get("verify") or {}
    return Verify(gradcheck=tables["gradcheck"], loo=tables["loo"], summary=summary)
