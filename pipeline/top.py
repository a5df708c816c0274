"""Print the training samples of a finished run with the largest or smallest influence.

    python -m pipeline.top --run outputs/default --k 20 --by harmful

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


def target_text(value: Any) -> str:
    """A class id as is, a float target to 6 significant digits, a k-wide target as [a,b,...] (no spaces)."""
    if isinstance(value, list):
        return "[" + ",".join(f"{v:.4g}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.top", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="output.dir of a finished run")
    parser.add_argument("--k", type=int, default=20, help="how many samples (default 20)")
    parser.add_argument("--by", choices=["harmful", "helpful"], default="harmful", help="harmful: largest influence first")
    parser.add_argument("--method", default=None, help="scoring method (default: the first in the ranking)")
    args = parser.parse_args(argv)
    ranking = args.run / "ranking.parquet"
    if not ranking.is_file():
        print(f"error: --run {args.run}: no ranking.parquet (run the aggregate stage first)", file=sys.stderr)
        return 2
    if args.k <= 0:
        print(f"error: --k {args.k}: must be positive", file=sys.stderr)
        return 2
    try:
        target, rows = top_rows(ranking, args.k, args.by, args.method)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    texts = [target_text(r[target]) for r in rows]
    width = max([6, len(target), *map(len, texts)])
    print(f"{'rank':>6} {'sample_id':>10} {target:>{width}} {'influence_mean':>15} {'influence_std':>14} {'seeds':>5} {'|dE/dx|':>10} {'train_loss':>10}")
    for r, text in zip(rows, texts):
        print(
            f"{r['rank']:>6} {r['sample_id']:>10} {text:>{width}} {r['influence_mean']:>15.6g} {r['influence_std']:>14.3g} "
            f"{r['n_seeds']:>5} {r['input_grad_norm_mean']:>10.3g} {r['train_loss_mean']:>10.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
