"""Print the training samples of a finished run with the largest or smallest influence.

    python -m pipeline.top --run outputs/default --k 20 --by harmful
    python -m pipeline.top --run outputs/default --query 17      # one query: harmful and helpful samples

`--query ID` reads query_top.parquet (a run with influence.queries=per_sample, per_class or groups): ID
is a validation sample id (per_sample), a class (per_class) or a group id (groups).

Shows each sample's class `label` (classification) or its `target` (regression; [a,b,...] when k-wide).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

TARGETS = ("label", "target")  # classification | regression
COLUMNS = ["rank", "sample_id", "influence_mean", "influence_std", "n_seeds", "input_grad_norm_mean", "train_loss_mean"]


def top_rows(ranking_path: Path, k: int, by: str, method: str | None) -> tuple[str, list[dict]]:
    """The name of the target column (label or target) and the k rows of ranking.parquet with the largest
    (harmful) or smallest (helpful) influence_mean."""
    table = pq.read_table(ranking_path)
    target = next((name for name in TARGETS if name in table.column_names), None)
    if target is None:
        raise ValueError(f"{ranking_path}: has neither a label nor a target column")
    methods = sorted(set(table["method"].to_pylist()))
    method = method or methods[0]
    if method not in methods:
        raise ValueError(f"--method {method}: not in {ranking_path} (has {', '.join(methods)})")
    table = table.filter(pc.equal(table["method"], method))
    table = table.sort_by([("rank", "ascending" if by == "harmful" else "descending")])
    return target, table.slice(0, k).select([*COLUMNS[:2], target, *COLUMNS[2:]]).to_pylist()


def query_rows(query_top: Path, query: int, k: int) -> tuple[str, dict[str, list[dict]]]:
    """The kind of queries (per_sample | per_class | groups) and, for direction harmful and helpful, the first k
    rows of query `query` in query_top.parquet (read with a filter: only the row groups holding it)."""
    queries = (pq.read_schema(query_top).metadata or {}).get(b"queries", b"queries").decode()
    table = pq.read_table(query_top, filters=[("query_id", "==", query)])
    if table.num_rows == 0:
        ids = pc.unique(pq.read_table(query_top, columns=["query_id"])["query_id"]).to_pylist()
        shown = ", ".join(map(str, sorted(ids)[:10])) + (", ..." if len(ids) > 10 else "")
        raise ValueError(f"--query {query}: not in {query_top} ({len(ids)} {queries} queries: {shown})")
    rows = {}
    for direction in ("harmful", "helpful"):
        part = table.filter(pc.equal(table["direction"], direction)).sort_by("rank")
        rows[direction] = part.slice(0, k).to_pylist()
    return queries, rows


def sample_targets(ranking_path: Path) -> tuple[str, dict[int, Any]]:
    """(label | target, sample_id -> its value) from ranking.parquet; ("", {}) when there is none."""
    if not ranking_path.is_file():
        return "", {}
    table = pq.read_table(ranking_path)
    target = next((name for name in TARGETS if name in table.column_names), "")
    if not target:
        return "", {}
    return target, dict(zip(table["sample_id"].to_pylist(), table[target].to_pylist()))


def print_query(run: Path, query: int, k: int) -> None:
    queries, rows = query_rows(run / "query_top.parquet", query, k)
    target, targets = sample_targets(run / "ranking.parquet")
    what = {
        "per_sample": f"validation sample {query}",
        "per_class": f"class {query} (mean over its validation samples)",
    }.get(queries, f"group {query} (mean over its validation samples)")
    for direction, meaning in (
        ("harmful", "more weight raises its validation error"),
        ("helpful", "more weight lowers it"),
    ):
        print(f"query {query}, {what}: most {direction} training samples ({meaning})")
        texts = [target_text(targets[r["sample_id"]]) if targets else "" for r in rows[direction]]
        width = max([6, len(target), *map(len, texts)])
        print(f"{'rank':>6} {'sample_id':>10} {target:>{width}} {'influence':>15}")
        for r, text in zip(rows[direction], texts):
            print(f"{r['rank']:>6} {r['sample_id']:>10} {text:>{width}} {r['influence']:>15.6g}")


def target_text(value: Any) -> str:
    """A class id as is, a float target to 6 significant digits, a k-wide target as [a,b,...] (no spaces)."""
    if isinstance(value, list):
        return "[" + ",".join(f"{v:.4g}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def norm_text(value: float | None) -> str:
    """|dE/dx| to 3 significant digits; "-" where no input gradient was computed (influence.input_grad=false)."""
    return "-" if value is None else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.top", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="output.dir of a finished run")
    parser.add_argument("--k", type=int, default=20, help="how many samples (default 20)")
    parser.add_argument(
        "--by", choices=["harmful", "helpful"], default="harmful", help="harmful: largest influence first"
    )
    parser.add_argument("--method", default=None, help="scoring method (default: the first in the ranking)")
    parser.add_argument(
        "--query",
        type=int,
        default=None,
        help="a validation sample id (per_sample), class (per_class) or group id (groups): its top samples",
    )
    args = parser.parse_args(argv)
    if args.k <= 0:
        print(f"error: --k {args.k}: must be positive", file=sys.stderr)
        return 2
    if args.query is not None:
        if not (args.run / "query_top.parquet").is_file():
            print(
                f"error: --run {args.run}: no query_top.parquet (run with influence.queries=per_sample, per_class or "
                "groups)",
                file=sys.stderr,
            )
            return 2
        try:
            print_query(args.run, args.query, args.k)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    ranking = args.run / "ranking.parquet"
    if not ranking.is_file():
        print(f"error: --run {args.run}: no ranking.parquet (run the aggregate stage first)", file=sys.stderr)
        return 2
    try:
        target, rows = top_rows(ranking, args.k, args.by, args.method)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    texts = [target_text(r[target]) for r in rows]
    width = max([6, len(target), *map(len, texts)])
    print(
        f"{'rank':>6} {'sample_id':>10} {target:>{width}} {'influence_mean':>15} {'influence_std':>14} "
        f"{'seeds':>5} {'|dE/dx|':>10} {'train_loss':>10}"
    )
    for r, text in zip(rows, texts):
        print(
            f"{r['rank']:>6} {r['sample_id']:>10} "
            f"{text:>{width}} {r['influence_mean']:>15.6g} {r['influence_std']:>14.3g} "
            f"{r['n_seeds']:>5} {norm_text(r['input_grad_norm_mean']):>10} {r['train_loss_mean']:>10.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
