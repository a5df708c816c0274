"""Print the most harmful or most helpful training samples of a finished run.

    python -m pipeline.top --run outputs/default --k 20 --by harmful
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

COLUMNS = ["rank", "sample_id", "label", "influence_mean", "influence_std", "n_seeds", "input_grad_norm_mean", "train_loss_mean"]


def top_rows(ranking_path: Path, k: int, by: str, method: str | None) -> list[dict]:
    """The k rows of ranking.parquet with the largest (harmful) or smallest (helpful) influence_mean."""
    table = pq.read_table(ranking_path)
    methods = sorted(set(table["method"].to_pylist()))
    method = method or methods[0]
    if method not in methods:
        raise ValueError(f"--method {method}: not in {ranking_path} (has {', '.join(methods)})")
    table = table.filter(pc.equal(table["method"], method))
    table = table.sort_by([("rank", "ascending" if by == "harmful" else "descending")])
    return table.slice(0, k).select(COLUMNS).to_pylist()


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
        rows = top_rows(ranking, args.k, args.by, args.method)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'rank':>6} {'sample_id':>10} {'label':>6} {'influence_mean':>15} {'influence_std':>14} {'seeds':>5} {'|dE/dx|':>10} {'train_loss':>10}")
    for r in rows:
        print(
            f"{r['rank']:>6} {r['sample_id']:>10} {r['label']:>6} {r['influence_mean']:>15.6g} {r['influence_std']:>14.3g} "
            f"{r['n_seeds']:>5} {r['input_grad_norm_mean']:>10.3g} {r['train_loss_mean']:>10.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
