"""Write the example data files (float64 throughout; the pipeline casts to its own dtype).

    python -m pipeline.examples.make_data quadratic --out quadratic.npz [--seed N]
    python -m pipeline.examples.make_data prices --out prices.npz [--seed N]

quadratic: x_train [256, 1] uniform on [0, 10], y_train [256] = (x - 5)^2 / 25; x_val [64, 1], y_val [64] likewise.
prices: x_train.reference_prices [200, 1] uniform on [50, 150], x_train.hidden_inputs [200, 2] standard normal,
y_train [200] = (hidden_inputs @ TRUE_KERNEL + TRUE_BIAS + 1) * reference_prices + N(0, NOISE_STD^2);
x_val.* / y_val likewise with 50 rows. Keys are written in the order listed here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np

QUADRATIC_ROWS = {"train": 256, "val": 64}
PRICE_ROWS = {"train": 200, "val": 50}
TRUE_KERNEL = np.array([0.05, -0.03])
TRUE_BIAS = 0.02
NOISE_STD = 0.5


def quadratic(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """x uniform on [0, 10] with targets (x - 5)^2 / 25."""
    arrays = {}
    for split, n in QUADRATIC_ROWS.items():
        x = rng.uniform(0.0, 10.0, size=(n, 1))
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = (x[:, 0] - 5.0) ** 2 / 25.0
    return arrays


def prices(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Reference prices and hidden inputs, with targets from the true hidden model plus small noise."""
    arrays = {}
    for split, n in PRICE_ROWS.items():
        reference = rng.uniform(50.0, 150.0, size=(n, 1))
        hidden = rng.standard_normal(size=(n, 2))
        arrays[f"x_{split}.reference_prices"] = reference
        arrays[f"x_{split}.hidden_inputs"] = hidden
        arrays[f"y_{split}"] = (hidden @ TRUE_KERNEL + TRUE_BIAS + 1.0) * reference[
            :, 0
        ] + NOISE_STD * rng.standard_normal(n)
    return arrays


GENERATORS = {"quadratic": quadratic, "prices": prices}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipeline.examples.make_data",
        description="Write an example .npz data file for the seed models in pipeline.examples.seed_models.",
        epilog="quadratic: x [n, 1] on [0, 10], y = (x - 5)^2 / 25 (256 train, 64 val rows). "
        "prices: x_*.reference_prices [n, 1], x_*.hidden_inputs [n, 2], y from a known hidden model plus noise "
        "(200 train, 50 val rows). All arrays are float64.",
    )
    parser.add_argument("dataset", choices=sorted(GENERATORS), help="which data set to write")
    parser.add_argument(
        "--out", required=True, type=Path, help="output file, must end in .npz; its directory must exist"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed, a non-negative integer (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the file and print its path; bad arguments exit with code 2, write errors with 1."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.out.suffix != ".npz":
        parser.error(f"--out {args.out}: must end in .npz")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: directory {args.out.parent} does not exist")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: must be non-negative")
    try:
        np.savez(args.out, **GENERATORS[args.dataset](np.random.default_rng(args.seed)))  # type: ignore[arg-type]  # numpy stub: **arrays may not be allow_pickle
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: error: cannot write {args.out} ({exc.strerror or exc})\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
