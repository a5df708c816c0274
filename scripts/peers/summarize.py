"""Sanity figures of a peers score file (scripts/peers/trak_dattri.py output): timings, each model's scale,
between-model Spearman, agreement of the two ensemble rules, and the sign against the training loss (harmful =
negative `score` for --target margin, positive for --target ce: settings.target in the metadata, margin if absent).
Needs numpy and pyarrow only (either environment).

    .venv-peers/bin/python scripts/peers/summarize.py docs/results/peers/mnist_seed000_dattri_trak.parquet
"""

from __future__ import annotations

import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def ranks(a: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(a, axis=-1), axis=-1).astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/peers/mnist_seed000_dattri_trak.parquet")
    table = pq.read_table(path).sort_by([("model", "ascending"), ("sample_id", "ascending")])
    meta = json.loads(table.schema.metadata[b"peers"])
    models = np.unique(table["model"].to_numpy())
    n = len(table) // len(models)

    def get(name):
        return table[name].to_numpy().reshape(len(models), n)

    score, kernel, q, loss = get("score"), get("kernel"), get("q"), get("train_loss")
    per_model = meta["per_model"]
    target = meta["settings"].get("target", "margin")
    harm = score if target == "ce" else -score  # positive = harmful

    def stats(key: str) -> str:
        v = np.array([r[key] for r in per_model])
        return f"{v.mean():.2f} (min {v.min():.2f}, max {v.max():.2f})"

    print(f"{path}: {len(models)} models x {n} samples; {meta['versions']}")
    print(f"command: {meta['command']}")
    print(f"target: {target}; score positive = {'harmful' if target == 'ce' else 'helpful'}")
    for key in (
        "seconds_train",
        "seconds_attribute",
        "seconds_cache",
        "seconds_attribute_val",
        "cpu_seconds_train",
        "cpu_seconds_attribute",
    ):
        print(f"{key:>24} per model: {stats(key)}")
    print(f"{'val_ce':>24} per model: {stats('val_ce')}; val accuracy {stats('val_accuracy')}")
    std = score.std(axis=1)
    print(f"score std per model: {', '.join(f'{s:.2e}' for s in std)}  (max/min {std.max() / std.min():.2f})")
    pairs = np.array([spearman(score[a], score[b]) for a, b in combinations(range(len(models)), 2)])
    if pairs.size:
        print(
            f"between-model Spearman of score over {pairs.size} pairs: mean {pairs.mean():.3f}, min "
            f"{pairs.min():.3f}, max {pairs.max():.3f}; model 0 vs 1: {spearman(score[0], score[1]):.3f}"
        )
    if len(models) >= 4:  # disjoint halves: how well K/2-model ensembles agree
        half = len(models) // 2
        print(
            f"Spearman of the plain ensembles of models 0..{half - 1} vs {half}..{2 * half - 1}: "
            f"{spearman(score[:half].mean(0), score[half : 2 * half].mean(0)):.3f}"
        )
    for k in sorted({1, 5, 10, 20, len(models)} & set(range(1, len(models) + 1))):
        plain, dattri = score[:k].mean(0), kernel[:k].mean(0) * q[:k].mean(0)
        print(
            f"K={k:>2}: Spearman(plain mean of scores, dattri's mean(kernel) * mean(q)) = {spearman(plain, dattri):.3f}"
        )
    harmful = harm > 0
    top = np.argsort(-loss, axis=1)[:, : max(1, n // 100)]
    print(
        f"sign: {harmful.mean():.1%} of scores harmful; among each model's top 1% training loss "
        f"{np.take_along_axis(harmful, top, 1).mean():.1%}; "
        "median training loss of the 1% most harmful "
        f"{np.median(np.take_along_axis(loss, np.argsort(-harm, axis=1)[:, : max(1, n // 100)], 1)):.3f} vs all "
        f"{np.median(loss):.4f}"
    )
    if "check_ensemble" in meta:
        print(f"check_ensemble: {meta['check_ensemble']}")


if __name__ == "__main__":
    main()
