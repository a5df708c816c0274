"""Per-sample scoring kernels that run independently over batches of training samples (sharded).

Every method returns (influence [b], input_grad) for a batch of inputs x (a tuple with one tensor
[b, *shape] per model input) and targets y; input_grad has the structure of x.

- `lookahead`: from a trained state, K more optimizer steps on sample i alone with weight eps_i, then the
  validation objective E; influence = dE/d eps_i, input_grad = dE/d x_i (reverse mode through the K
  steps), each sample its own trajectory, vectorized over the batch.
- `tracin`: sum over checkpoints c of -w_c * grad E(theta_c) . grad loss_i(theta_c), with
  w_c = lr_c * (steps until the next checkpoint) / N so that it estimates dE/d eps_i (each sample is used
  about that often per interval, at weight 1/|B| per use); input_grad is its derivative in x_i.
  Per-sample dot products of a whole batch come from one forward-mode pass (ForwardAccumulator).
- `loss`: influence = the training loss of the final model (a ranking score: larger = more suspicious),
  input_grad = d loss_i / d x_i.
- `saliency`: influence = |d loss_i / d x_i| over all inputs (ranking score), input_grad = d loss_i / d x_i.
- `sensitivity`: d (w . f(x_i)) / d x_i of the trained model f with output weights w [k] (one VJP);
  influence = w . f(x_i), the weighted output.

`lookahead` and `tracin` take `input_grad`: False leaves x unwatched (no reverse pass into the inputs at all) and
returns () for input_grad, with the same influence. The baselines have no influence without their input gradient
(saliency) or are about it (sensitivity, loss's d loss_i / d x_i), so they always compute it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import tensorflow as tf

from pipeline.kernels.training import Recipe, TrainState

Inputs = tuple[tf.Tensor, ...]


class Checkpoint(NamedTuple):
    """A stored state with its TracIn weight w_c and validation gradient direction grad E(theta_c)."""

    weight: float
    state: TrainState
    direction: list[tf.Tensor]


def input_norm(grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """[b] Euclidean norm of each sample's gradient over all inputs and feature axes."""
    squares = [tf.reduce_sum(tf.reshape(tf.square(g), (tf.shape(g)[0], -1)), axis=1) for g in grads]
    return tf.sqrt(tf.add_n(squares))


class SampleScorer:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self._loss_and_grad = tf.function(self._loss_and_grad_fn, reduce_retracing=True)
        self._tracin_one = tf.function(self._tracin_one_fn, reduce_retracing=True)
        self._objective_direction = tf.function(self._objective_direction_fn, reduce_retracing=True)
        self._lookahead = tf.function(self._lookahead_fn, reduce_retracing=True)
        self._sensitivity = tf.function(self._sensitivity_fn, reduce_retracing=True)

    # ----- loss and saliency -------------------------------------------------------------------
    def _loss_and_grad_fn(self, state: TrainState, x: Inputs, y: tf.Tensor) -> tuple[tf.Tensor, Inputs]:
        r = self.recipe
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, _ = r.forward(state.trainable, state.non_trainable, x, training=False)
            losses = r.task.loss(outputs, y)
        # The gradient of a vector target is that of its sum; samples are independent in inference mode.
        return losses, tuple(tape.gradient(losses, x))

    def loss(self, state: TrainState, x: Inputs, y: tf.Tensor) -> tuple[tf.Tensor, Inputs]:
        return self._loss_and_grad(state, x, y)

    def saliency(self, state: TrainState, x: Inputs, y: tf.Tensor) -> tuple[tf.Tensor, Inputs]:
        _, grad = self._loss_and_grad(state, x, y)
        return input_norm(grad), grad

    # ----- sensitivity -------------------------------------------------------------------------
    def _sensitivity_fn(self, state: TrainState, x: Inputs, output_weights: tf.Tensor) -> tuple[tf.Tensor, Inputs]:
        r = self.recipe
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, _ = r.forward(state.trainable, state.non_trainable, x, training=False)
        weights = tf.broadcast_to(tf.cast(output_weights, outputs.dtype), tf.shape(outputs))
        # One VJP with cotangent w per row: row i gets w . d f(x_i) / d x_i (rows are independent at inference).
        grads = tape.gradient(outputs, x, output_gradients=weights)
        return tf.reduce_sum(outputs * weights, axis=-1), tuple(grads)

    def sensitivity(self, state: TrainState, x: Inputs, output_weights: Sequence[float]) -> tuple[tf.Tensor, Inputs]:
        """(w . f(x_i) [b], d (w . f(x_i)) / d x_i) with output weights w [k] (k = the model's output width)."""
        return self._sensitivity(state, x, tf.constant(output_weights, tf.float64))

    # ----- tracin ------------------------------------------------------------------------------
    def _objective_direction_fn(self, state: TrainState, x_val: Inputs, y_val: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(state.trainable)
            value = self.recipe.objective(state, x_val, y_val)
        return [tf.convert_to_tensor(g) for g in tape.gradient(value, state.trainable)]

    def checkpoint(self, weight: float, state: TrainState, x_val: Inputs, y_val: tf.Tensor) -> Checkpoint:
        """Prepare one TracIn checkpoint: grad E(theta_c) is computed once, not per batch."""
        return Checkpoint(weight, state, self._objective_direction(state, x_val, y_val))

    def checkpoints(
        self,
        states: Mapping[int, TrainState],
        steps: Sequence[int],
        lr: Sequence[float],
        n_train: int,
        x_val: Inputs,
        y_val: tf.Tensor,
    ) -> list[Checkpoint]:
        """TracIn checkpoints at every stored step but the last, w_c = lr[c] * (next stored step - c) / n_train."""
        return [
            self.checkpoint(float(lr[a]) * (b - a) / n_train, states[a], x_val, y_val)
            for a, b in zip(steps[:-1], steps[1:])
        ]

    def _dots(self, state: TrainState, direction: list[tf.Tensor], x: Inputs, y: tf.Tensor) -> tf.Tensor:
        """[b] grad E . grad loss_i: one forward-mode pass along `direction`."""
        r = self.recipe
        with tf.autodiff.ForwardAccumulator(state.trainable, direction) as accumulator:
            outputs, _ = r.forward(state.trainable, state.non_trainable, x, training=False)
            losses = r.task.loss(outputs, y)
        return accumulator.jvp(losses)

    def _tracin_one_fn(
        self, state: TrainState, direction: list[tf.Tensor], x: Inputs, y: tf.Tensor, input_grad: bool = True
    ) -> tuple[tf.Tensor, Inputs]:
        """(grad E . grad loss_i [b], its gradient in x_i, or () without input_grad) at one checkpoint."""
        if not input_grad:
            return self._dots(state, direction, x, y), ()
        with tf.GradientTape() as tape:
            tape.watch(x)
            dots = self._dots(state, direction, x, y)
        return dots, tuple(tape.gradient(dots, x))

    def tracin(
        self, checkpoints: Sequence[Checkpoint], x: Inputs, y: tf.Tensor, input_grad: bool = True
    ) -> tuple[tf.Tensor, Inputs]:
        """(influence [b], input_grad per input, or () without input_grad) summed over the checkpoints."""
        influence = tf.zeros(tf.shape(y)[:1], x[0].dtype)
        grads = tuple(tf.zeros_like(a) for a in x) if input_grad else ()
        for c in checkpoints:
            dots, grad = self._tracin_one(c.state, c.direction, x, y, input_grad)
            weight = tf.constant(-c.weight, x[0].dtype)
            influence = influence + weight * dots
            grads = tuple(total + weight * g for total, g in zip(grads, grad))
        return influence, grads

    # ----- lookahead ---------------------------------------------------------------------------
    def _lookahead_fn(
        self,
        state: TrainState,
        x: Inputs,
        y: tf.Tensor,
        x_val: Inputs,
        y_val: tf.Tensor,
        lr: tf.Tensor,
        first_step: tf.Tensor,
        steps: int,
        input_grad: bool = True,
    ) -> tuple[tf.Tensor, Inputs]:
        r = self.recipe

        def one_sample(sample: tuple[Inputs, tf.Tensor]) -> tuple[tf.Tensor, Inputs]:
            x_i = tuple(a[None] for a in sample[0])
            y_i = sample[1][None]
            eps = tf.ones((1,), x_i[0].dtype)
            sources = [eps, x_i] if input_grad else [eps]
            with tf.GradientTape() as tape:
                tape.watch(sources)
                s = state
                for k in range(steps):  # K is small and fixed: unrolled
                    s, _ = r.step(s, x_i, y_i, eps, lr, first_step + k)
                value = r.objective(s, x_val, y_val)
            grads = tape.gradient(value, sources)
            return grads[0][0], tuple(g[0] for g in grads[1]) if input_grad else ()

        return tf.vectorized_map(one_sample, (x, y))

    def lookahead(
        self,
        state: TrainState,
        x: Inputs,
        y: tf.Tensor,
        x_val: Inputs,
        y_val: tf.Tensor,
        lr: float,
        first_step: int,
        steps: int,
        input_grad: bool = True,
    ) -> tuple[tf.Tensor, Inputs]:
        """dE/d eps_i and dE/d x_i (() without input_grad) after `steps` optimizer steps on each sample alone, from
        `state` (whose optimizer buffers continue; `first_step` is the global step index of the first one)."""
        return self._lookahead(
            state, x, y, x_val, y_val, tf.constant(lr, tf.float64), tf.constant(first_step), steps, input_grad
        )
