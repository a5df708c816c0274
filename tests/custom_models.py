"""A user-style custom model for `model=custom model.builder=custom_models:build` in the tests:
a subclassed Keras model with its own call (like the wrapped 'hidden model' users ask about)."""

from __future__ import annotations

import keras


class ScaledHead(keras.Model):
    def __init__(self, num_classes: int):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(12, activation="tanh")
        self.head = keras.layers.Dense(num_classes)

    def call(self, inputs):
        h = self.hidden(self.flatten(inputs))
        return self.head(h) * 2.0


def build(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    return ScaledHead(num_classes)  # unbuilt, as users write them: the pipeline creates its variables


def not_a_model(input_shape, num_classes):
    return "nope"


def wrong_width(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(num_classes + 1)])


def regression_head(*, input_shape: tuple[int, ...], output_dim: int) -> keras.Model:
    """A keyword-only builder for regression: it declares output_dim, not num_classes."""
    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(output_dim)])
