"""Write the exact training and validation arrays the pipeline uses for an experiment to an .npz, for the
outside references under scripts/peers/ (which run in their own virtual environment, without the pipeline).

Runs in the pipeline's environment (.venv). The config is composed as `python -m pipeline.evaluate
experiment=<name> [overrides...]` composes it (conf/evaluate.yaml + conf/experiment/<name>.yaml), and the
data come from `pipeline.data.load_dataset(settings.data, settings.task.name)`, so row i of x_train is
the pipeline's sample_id i.

    .venv/bin/python scripts/peers/export_data.py                       # mnist_seed000
    .venv/bin/python scripts/peers/export_data.py --experiment mnist_seed000 --out outputs/peers/mnist_seed000.npz
    .venv/bin/python scripts/peers/export_data.py --experiment digits_mlp_sgd data.max_train=500

Arrays: x_train [N, D] float32 (each sample flattened), y_train [N] int64, x_val [V, D], y_val [V];
plus experiment, input_shape and the composed data/task settings (as JSON) for the record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def compose(experiment: str, overrides: list[str]):
    """The composed Hydra config of `python -m pipeline.evaluate experiment=<experiment> <overrides>`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.run import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name="evaluate", overrides=[f"experiment={experiment}", *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment", default="mnist_seed000", help="conf/experiment/<name>.yaml (default mnist_seed000)"
    )
    parser.add_argument("--out", default=None, help="output .npz (default outputs/peers/<experiment>.npz)")
    parser.add_argument(
        "overrides", nargs="*", help="further Hydra overrides, as on the pipeline.evaluate command line"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from pipeline.config import settings_from_config
    from pipeline.data import load_dataset

    cfg = compose(args.experiment, args.overrides)
    settings = settings_from_config(cfg)
    dataset = load_dataset(settings.data, settings.task.name)
    if len(dataset.x_train) != 1:
        sys.exit(f"error: {args.experiment} has {len(dataset.x_train)} model inputs; this export handles one")
    (key,) = dataset.x_train
    x_train, x_val = dataset.x_train[key], dataset.x_val[key]
    out = Path(args.out) if args.out else ROOT / "outputs" / "peers" / f"{args.experiment}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": x_train.reshape(x_train.shape[0], -1),
        "y_train": dataset.y_train,
        "x_val": x_val.reshape(x_val.shape[0], -1),
        "y_val": dataset.y_val,
    }
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())).hexdigest()
    meta = {
        "experiment": args.experiment,
        "overrides": args.overrides,
        "dataset": dataset.name,
        "input_shape": list(x_train.shape[1:]),
        "data": asdict(settings.data),
        "task": settings.task.name,
        "sha256": digest,
    }
    np.savez(out, **arrays, meta=np.array(json.dumps(meta)))
    print(
        f"wrote {out}: x_train {arrays['x_train'].shape} {arrays['x_train'].dtype}, y_train "
        f"{arrays['y_train'].shape} {arrays['y_train'].dtype}, "
        f"x_val {arrays['x_val'].shape}, y_val {arrays['y_val'].shape}, classes "
        f"{np.bincount(dataset.y_train).tolist()}, sha256 {digest[:16]}"
    )


if __name__ == "__main__":
    main()
