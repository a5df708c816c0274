"""TRAK as implemented by dattri 0.3.0 (torch, CPU): the outside reference for `influence=trak` (issue 18).

Runs in .venv-peers (scripts/peers/setup.sh), never in the pipeline's environment. Reads the arrays that
scripts/peers/export_data.py wrote (row i of x_train = the pipeline's sample_id i) and, for each model
seed s = first_seed .. first_seed+K-1:

1. trains the torch twin of pipeline/examples/seed_models.py:mnist_mlp: 784 -> 64 relu -> 64 relu -> 10
   logits, softmax cross-entropy (mean over the batch), Adam (lr 1e-3, betas 0.9/0.999, epsilon 1e-7 as
   Keras), batch 32, 5 epochs, reshuffled every epoch, float32; initialisation --init: `keras` (default)
   = Keras' Dense defaults, Glorot/Xavier-uniform kernels (limit sqrt(6 / (fan_in + fan_out))) and zero
   biases, the same distribution as the pipeline's Keras model; `torch` = torch's nn.Linear default
   (Kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)) weights and biases);
   torch.manual_seed(s) draws the initial weights and a generator seeded with s draws the batch order;
2. scores every training sample against the validation set with dattri's TRAKAttributor on the final
   weights: the training side's output function (`loss_func`) is TRAK's classification margin
   f(z) = logit_y - logsumexp_{j != y} logit_j (= log p_y - log(1 - p_y), written stably); the validation
   side (`target_func`, validation samples with their true labels) is --target: `margin` (default, TRAK's
   own choice: the same margin) or `ce` (the per-sample softmax cross-entropy logsumexp_j logit_j - logit_y,
   whose mean is the pipeline's E); correct_probability_func = p_y (so TRAK's Q_i = 1 - p_y(z_i)),
   random projection "normal" of --proj-dim dimensions, no regularisation (dattri's default). The
   projection of model s is seeded with 100000 * s, which is the projection dattri itself uses for
   checkpoint index s when it is given several checkpoints, so the per-model columns can rebuild dattri's
   own multi-checkpoint ensemble exactly (see README.md).

Output (--out, long format, one row per (model, training sample)):
    model      int64    the seed s
    sample_id  int64    row of x_train
    score      float64  mean over the V validation samples of dattri's attribution score
                        tau_ij = Q_i * g_j^T (Phi^T Phi)^-1 phi_i (g_j: gradient of the target of
                        validation sample j), as dattri signs it: the estimated rise of the target when
                        training sample i is included. --target margin: positive = helpful (raises the
                        validation margins); --target ce: positive = harmful (raises the validation CE)
    kernel     float64  mean_j phi_j^T (Phi^T Phi)^-1 phi_i (score without Q_i)
    q          float64  Q_i = 1 - p_y(z_i) at the model's final weights
    train_loss float64  cross-entropy of training sample i at the model's final weights
and <out stem>_models.parquet, one row per model (seconds_train, seconds_cache, seconds_attribute, ...).
The Parquet schema metadata key b"peers" holds JSON: versions, settings (settings.target: margin or ce, which
fixes the sign of `score`: TARGETS, and score_positive), the exact command, the per-model table. Per-model
scores: `score`. dattri's multi-checkpoint ensemble over models S: mean_S(kernel) * mean_S(q); the plain
ensemble: mean_S(score).

    .venv-peers/bin/python scripts/peers/trak_dattri.py --data outputs/peers/mnist_seed000.npz \
        --models 20 --init keras --out docs/results/peers/mnist_seed000_dattri_trak.parquet
    .venv-peers/bin/python scripts/peers/trak_dattri.py --data outputs/peers/mnist_seed000_ce.npz \
        --models 20 --init keras --target ce --out docs/results/peers/mnist_seed000_dattri_trak_ce.parquet
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # dattri's per-batch progress bars; before tqdm is imported

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from dattri.algorithm.trak import TRAKAttributor
from dattri.task import AttributionTask
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

PROJ_SEED_STRIDE = 100_000  # dattri's BasicProjector: block seed = proj_seed + 1000 * block + 100000 * ensemble_id
# --target -> (validation output function, what a positive `score` means); pipeline/evaluate.py reads the same table
TARGETS = {
    "margin": ("margin: logit_y - logsumexp_{j!=y} logit_j", "helpful"),
    "ce": ("cross-entropy: logsumexp_j logit_j - logit_y", "harmful"),
}


INITS = {
    "keras": "Keras Dense defaults: glorot_uniform kernels (torch.nn.init.xavier_uniform_, limit sqrt(6 / (fan_in + "
    "fan_out))), zero biases",
    "torch": "torch nn.Linear default: kaiming_uniform_(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases",
}


def build_model(n_inputs: int, n_classes: int, init: str = "keras") -> nn.Module:
    """784 -> 64 relu -> 64 relu -> n_classes logits (the softmax lives in the loss). `init` (INITS):
    "keras" redraws every Linear weight Glorot-uniform and zeroes the biases (Keras' Dense defaults; the
    draws come from torch's generator, so the distribution matches Keras, not the values); "torch" keeps
    nn.Linear's own initialisation."""
    model = nn.Sequential(nn.Linear(n_inputs, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_classes))
    if init == "keras":
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(
                        layer.weight
                    )  # symmetric in fan_in/fan_out, so torch's [out, in] layout is fine
                    nn.init.zeros_(layer.bias)
    elif init != "torch":
        raise ValueError(f"init={init!r}: expected one of {sorted(INITS)}")
    return model


def train(seed: int, x: torch.Tensor, y: torch.Tensor, n_classes: int, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(x.shape[1], n_classes, args.init)
    order = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=args.adam_epsilon)
    model.train()
    for _ in range(args.epochs):
        perm = torch.randperm(x.shape[0], generator=order)
        for start in range(0, x.shape[0], args.train_batch):
            rows = perm[start : start + args.train_batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            opt.step()
    model.eval()
    return model


def per_sample_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none").double().numpy()


def trak_functions(model: nn.Module, n_classes: int):
    """TRAK's output function (the margin), the per-sample cross-entropy and the probability of the correct
    class, for one sample each (dattri vmaps them over the batch)."""
    classes = torch.arange(n_classes)

    def logits_and_mask(params, data):
        x, y = data
        logits = torch.func.functional_call(model, params, x.unsqueeze(0))[0]
        return logits, classes == y

    def margin(params, data):
        logits, mask = logits_and_mask(params, data)
        correct = torch.where(mask, logits, torch.zeros_like(logits)).sum()
        others = torch.logsumexp(torch.where(mask, torch.full_like(logits, -torch.inf), logits), dim=0)
        return correct - others

    def cross_entropy(params, data):
        logits, mask = logits_and_mask(params, data)
        return torch.logsumexp(logits, dim=0) - torch.where(mask, logits, torch.zeros_like(logits)).sum()

    def correct_probability(params, data):
        return torch.exp(-cross_entropy(params, data))

    return margin, cross_entropy, correct_probability


def attributor_for(
    model: nn.Module, checkpoints, n_classes: int, proj_seed: int, args: argparse.Namespace
) -> TRAKAttributor:
    margin, cross_entropy, correct_probability = trak_functions(model, n_classes)
    target = {"margin": margin, "ce": cross_entropy}[args.target]
    task = AttributionTask(loss_func=margin, model=model, checkpoints=checkpoints, target_func=target)
    # The full dict every time: dattri 0.3.0 updates its module-level DEFAULT_PROJECTOR_KWARGS in place.
    projector = {
        "proj_dim": args.proj_dim,
        "proj_max_batch_size": 32,
        "proj_seed": proj_seed,
        "device": "cpu",
        "proj_type": "normal",
    }
    return TRAKAttributor(
        task=task,
        correct_probability_func=correct_probability,
        projector_kwargs=projector,
        device="cpu",
        regularization=args.regularization,
    )


def loader(x: torch.Tensor, y: torch.Tensor, batch: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def attribute(
    model: nn.Module, seed: int, data: dict[str, torch.Tensor], n_classes: int, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(kernel [N], q [N], wall and CPU seconds of cache and of attribute). dattri's score matrix is
    (A * Q).T with A = Phi_val (Phi^T Phi)^-1 Phi^T; attribute() runs with Q set to ones so A itself comes
    back and both factors are kept (the mean over validation commutes with the per-row factor Q_i)."""
    checkpoint = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attributor = attributor_for(model, checkpoint, n_classes, PROJ_SEED_STRIDE * seed, args)
    with torch.no_grad():
        began, began_cpu = time.perf_counter(), time.process_time()
        attributor.cache(loader(data["x_train"], data["y_train"], args.batch_size))
        cached, cached_cpu = time.perf_counter(), time.process_time()
        q = attributor.Q.clone()
        attributor.Q = torch.ones_like(q)
        a = attributor.attribute(loader(data["x_val"], data["y_val"], args.batch_size))  # [N, V]
        done, done_cpu = time.perf_counter(), time.process_time()
    seconds = {
        "seconds_cache": cached - began,
        "seconds_attribute_val": done - cached,
        "cpu_seconds_cache": cached_cpu - began_cpu,
        "cpu_seconds_attribute_val": done_cpu - cached_cpu,
    }
    return a.double().mean(dim=1).numpy(), q.double().numpy(), seconds


def check_ensemble(
    models: list[nn.Module],
    seeds: list[int],
    rows: dict[str, list],
    data: dict[str, torch.Tensor],
    n_classes: int,
    args: argparse.Namespace,
) -> dict:
    """dattri's own multi-checkpoint TRAK on the given models (checkpoint index = seed when seeds are
    0..M-1) against mean(kernel) * mean(q) rebuilt from the per-model columns; and against plain attribute()."""
    assert seeds == list(range(len(seeds))), "--check-ensemble needs --first-seed 0"
    template = build_model(data["x_train"].shape[1], n_classes, args.init).eval()  # weights replaced by the checkpoints
    checkpoints = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    attributor = attributor_for(template, checkpoints, n_classes, 0, args)
    with torch.no_grad():
        attributor.cache(loader(data["x_train"], data["y_train"], args.batch_size))
        ensemble = (
            attributor.attribute(loader(data["x_val"], data["y_val"], args.batch_size)).double().mean(dim=1).numpy()
        )
    n, m = data["x_train"].shape[0], len(seeds)
    kernel = np.array(rows["kernel"]).reshape(-1, n)[:m]
    q = np.array(rows["q"]).reshape(-1, n)[:m]
    score = np.array(rows["score"]).reshape(-1, n)[:m]
    rebuilt = kernel.mean(0) * q.mean(0)
    # a plain single-checkpoint attribute() (Q included) on model 0, against the stored score
    single = attributor_for(
        build_model(data["x_train"].shape[1], n_classes, args.init).eval(), checkpoints[0], n_classes, 0, args
    )
    with torch.no_grad():
        single.cache(loader(data["x_train"], data["y_train"], args.batch_size))
        plain = single.attribute(loader(data["x_val"], data["y_val"], args.batch_size)).double().mean(dim=1).numpy()

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    result = {
        "models": m,
        "max_rel_diff_dattri_ensemble_vs_mean_kernel_times_mean_q": rel(rebuilt, ensemble),
        "max_rel_diff_plain_attribute_vs_score_model0": rel(score[0], plain),
        "spearman_dattri_ensemble_vs_mean_score": spearman(ensemble, score.mean(0)),
    }
    print("check-ensemble:", json.dumps(result))
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def write(out: Path, rows: dict[str, list], per_model: list[dict], meta: dict) -> None:
    schema = pa.schema(
        [
            ("model", pa.int64()),
            ("sample_id", pa.int64()),
            ("score", pa.float64()),
            ("kernel", pa.float64()),
            ("q", pa.float64()),
            ("train_loss", pa.float64()),
        ],
        metadata={b"peers": json.dumps(meta | {"per_model": per_model}).encode()},
    )
    table = pa.table(
        {name: np.concatenate(values) if values else np.array([]) for name, values in rows.items()}, schema=schema
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    pq.write_table(
        pa.Table.from_pylist(per_model).replace_schema_metadata({b"peers": json.dumps(meta).encode()}),
        out.with_name(out.stem + "_models.parquet"),
    )


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(root / "outputs/peers/mnist_seed000.npz"), help="npz from scripts/peers/export_data.py"
    )
    parser.add_argument("--out", default=str(root / "docs/results/peers/mnist_seed000_dattri_trak.parquet"))
    parser.add_argument("--models", type=int, default=20, help="K: model seeds first_seed .. first_seed+K-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help=(
            "samples per per-sample-gradient batch in cache/attribute (dattri draws the projection anew for every "
            "batch)"
        ),
    )
    parser.add_argument(
        "--regularization", type=float, default=0.0, help="added to the diagonal of Phi^T Phi (dattri's default 0)"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--init",
        choices=sorted(INITS),
        default="keras",
        help=(
            "initial weights: keras = Glorot-uniform kernels and zero biases (the pipeline's Keras Dense defaults); "
            "torch = nn.Linear's default"
        ),
    )
    parser.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default="margin",
        help="validation output function: margin (TRAK's default; score positive = helpful) or ce (the per-sample "
        "cross-entropy, the pipeline's E; score positive = harmful)",
    )
    parser.add_argument("--adam-epsilon", type=float, default=1e-7, help="Keras' default (torch's is 1e-8)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: timings per core)")
    parser.add_argument(
        "--check-ensemble",
        type=int,
        default=0,
        help=(
            "after the run, compare dattri's own multi-checkpoint TRAK on the first M models with the per-model columns"
        ),
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    npz = np.load(args.data)
    data = {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in ("x_train", "y_train", "x_val", "y_val")}
    data = {k: v.float() if k.startswith("x") else v.long() for k, v in data.items()}
    data_meta = json.loads(str(npz["meta"])) if "meta" in npz else {}
    n_classes = int(max(data["y_train"].max(), data["y_val"].max())) + 1
    n = data["x_train"].shape[0]
    seeds = list(range(args.first_seed, args.first_seed + args.models))
    out = Path(args.out)
    meta = {
        "method": "TRAK (dattri TRAKAttributor)",
        "command": " ".join(shlex.quote(a) for a in [".venv-peers/bin/python", *sys.argv]),
        "versions": {
            "dattri": md.version("dattri"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "data": {
            "file": args.data,
            "n_train": n,
            "n_val": int(data["x_val"].shape[0]),
            **{k: data_meta.get(k) for k in ("experiment", "sha256")},
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out")}
        | {
            "init_description": INITS[args.init],
            "proj_type": "normal",
            "proj_seed": f"{PROJ_SEED_STRIDE} * model seed",
            "output_function": TARGETS["margin"][0],
            "target_function": TARGETS[args.target][0],
            "checkpoint": "final",
        },
        "score": f"mean over validation samples of dattri's TRAK score; positive = {TARGETS[args.target][1]} (raises "
        f"the validation {'margins' if args.target == 'margin' else 'cross-entropy'})",
        "score_positive": TARGETS[args.target][1],
    }
    print(
        f"dattri {meta['versions']['dattri']}, torch {torch.__version__}, threads {torch.get_num_threads()}; {n} "
        f"train x {meta['data']['n_val']} val; models {seeds}; proj_dim {args.proj_dim}; init {args.init}; target "
        f"{args.target}",
        flush=True,
    )

    rows: dict[str, list] = {k: [] for k in ("model", "sample_id", "score", "kernel", "q", "train_loss")}
    per_model, kept_models = [], []
    for seed in seeds:
        began, began_cpu = time.perf_counter(), time.process_time()
        model = train(seed, data["x_train"], data["y_train"], n_classes, args)
        seconds_train, cpu_seconds_train = time.perf_counter() - began, time.process_time() - began_cpu
        val_ce = per_sample_ce(model, data["x_val"], data["y_val"])
        train_ce = per_sample_ce(model, data["x_train"], data["y_train"])
        with torch.no_grad():
            val_acc = float((model(data["x_val"]).argmax(1) == data["y_val"]).double().mean())
        kernel, q, seconds = attribute(model, seed, data, n_classes, args)
        score = kernel * q
        for key, value in (
            ("model", np.full(n, seed, dtype=np.int64)),
            ("sample_id", np.arange(n, dtype=np.int64)),
            ("score", score),
            ("kernel", kernel),
            ("q", q),
            ("train_loss", train_ce),
        ):
            rows[key].append(value)
        per_model.append(
            {
                "model": seed,
                "init": args.init,
                "seconds_train": seconds_train,
                "seconds_attribute": seconds["seconds_cache"] + seconds["seconds_attribute_val"],
                **seconds,
                "cpu_seconds_train": cpu_seconds_train,
                "cpu_seconds_attribute": seconds["cpu_seconds_cache"] + seconds["cpu_seconds_attribute_val"],
                "val_ce": float(val_ce.mean()),
                "val_accuracy": val_acc,
                "train_ce": float(train_ce.mean()),
                "score_std": float(score.std()),
                "score_mean": float(score.mean()),
                "spearman_score_vs_train_loss": spearman(score, train_ce),
                "proj_seed": PROJ_SEED_STRIDE * seed,
            }
        )
        write(out, rows, per_model, meta)
        if len(kept_models) < args.check_ensemble:
            kept_models.append(model)
        r = per_model[-1]
        print(
            f"model {seed}: wall (CPU) seconds: train {seconds_train:.2f} ({cpu_seconds_train:.2f}), attribute "
            f"{r['seconds_attribute']:.2f} ({r['cpu_seconds_attribute']:.2f}) "
            f"= cache {r['seconds_cache']:.2f} + val {r['seconds_attribute_val']:.2f}; "
            f"val CE {r['val_ce']:.4f}, acc {val_acc:.3f}; score std {r['score_std']:.3e}, Spearman(score, train "
            f"loss) {r['spearman_score_vs_train_loss']:+.3f}",
            flush=True,
        )
    if args.check_ensemble:
        meta["check_ensemble"] = check_ensemble(kept_models, seeds[: len(kept_models)], rows, data, n_classes, args)
        write(out, rows, per_model, meta)
    print(f"wrote {out} and {out.with_name(out.stem + '_models.parquet')}")


if __name__ == "__main__":
    main()
