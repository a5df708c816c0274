"""Custom model builders for three user questions, for `model=custom model.builder=pipeline.examples.seed_models:NAME`.

- `mnist_mlp`: an unnamed Sequential 784 -> 64 relu -> 64 relu -> softmax (MNIST classification).
- `quadratic_mlp`: a small relu net for the 1-D regression y = (x - 5)^2 / 25.
- `price_model`: a subclassed model wrapping a "hidden model", called on [reference_prices, hidden_inputs],
  output = (hidden_model(hidden_inputs) + 1) * reference_prices.

Each builder declares only the keyword arguments it needs; the pipeline passes those and creates the variables
with one call on a zero batch. Imports Keras, so call it only inside workers.
"""

from __future__ import annotations

import keras
import numpy as np

PRICE_INPUTS = ("reference_prices", "hidden_inputs")


def mnist_mlp(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two relu layers of 64 and a softmax head; images are flattened first."""
    flatten = [keras.layers.Flatten()] if len(input_shape) > 1 else []
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            *flatten,
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )


def quadratic_mlp(input_shape: tuple[int, ...], output_dim: int) -> keras.Model:
    """Two relu layers of 64 and a linear head of `output_dim` regression outputs."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(output_dim),
        ]
    )


class PriceModel(keras.Model):
    """Implied prices: (hidden_model(hidden_inputs) + 1) * reference_prices,
    on inputs [reference_prices, hidden_inputs]."""

    def __init__(self, hidden_model: keras.Model):
        super().__init__(name="price_model")
        self.hidden_model = hidden_model

    def call(self, inputs):
        reference_prices, hidden_inputs = inputs[0], inputs[1]
        return (self.hidden_model(hidden_inputs) + 1) * reference_prices


def price_model(input_shapes: dict[str, tuple[int, ...]], output_dim: int) -> keras.Model:
    """An unbuilt PriceModel whose hidden model is one Dense(output_dim), kernel 0.1 and bias 0."""
    if tuple(input_shapes) != PRICE_INPUTS or tuple(input_shapes["reference_prices"]) != (1,):
        raise ValueError(
            f"price_model needs inputs reference_prices (1,) then hidden_inputs (cols,), got {dict(input_shapes)}"
        )
    # Constant(0.1) would pass through float32 (0.10000000149 in float64 runs); a float64 value casts exactly.
    kernel = keras.initializers.Constant(np.float64(0.1))
    hidden = keras.Sequential(
        [keras.layers.Dense(output_dim, kernel_initializer=kernel, bias_initializer="zeros", name="output")]
    )
    return PriceModel(hidden)
