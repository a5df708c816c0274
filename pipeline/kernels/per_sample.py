"""Per-sample scoring methods that run independently over batches of training samples (sharded).

Every method returns (influence [b], input_grad [b, d]) for a batch x [b, d], y [b]:

- `lookahead`: from a trained state, K more optimizer steps on sample i alone with weight eps_i, then the
  validation objective E; influence = dE/d eps_i, input_grad = dE/d x_i (reverse mode through the K
  steps), each sample its own trajectory, vectorized over the batch.
- `tracin`: sum over checkpoints c of -w_c * grad E(theta_c) . grad loss_i(theta_c), with
  w_c = lr_c * (steps until the next checkpoint) / N so that it estimates dE/d eps_i (each sample is used
  about that often per interval, at weight 1/|B| per use); input_grad is its derivative in x_i.
  Per-sample dot products of a whole batch come from one forward-mode pass (ForwardAccumulator).
- `loss`: influence = the training loss of the final model (a ranking score: larger = more suspicious),
  input_grad = d loss_i / d x_i.
- `saliency`: influence = |d loss_i / d x_i| (ranking score), input_grad = d loss_i / d x_i.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import tensorflow as tf

from pipeline.kernels import objectives
from pipeline.kernels.training import Recipe, TrainState


class Checkpoint(NamedTuple):
    """A stored state with its TracIn weight w_c and validation gradient direction grad E(theta_c)."""

    weight: float
    state: TrainState
    direction: list[tf.Tensor]


class SampleScorer:
    def __init__(self, recipe: Recipe, objective: str):
        self.recipe = recipe
        self.objective = objective
        self._loss_and_grad = tf.function(self._loss_and_grad_fn, reduce_retracing=True)
        self._tracin_one = tf.function(self._tracin_one_fn, reduce_retracing=True)
        self._objective_direction = tf.function(self._objective_direction_fn, reduce_retracing=True)
        self._lookahead = tf.function(self._lookahead_fn, reduce_retracing=True)

    # ----- loss and saliency -------------------------------------------------------------------
    def _loss_and_grad_fn(self, state: TrainState, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        r = self.recipe
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, _ = r.forward(state.trainable, state.non_trainable, x, training=False)
            losses = objectives.per_sample(r.loss, outputs, y, r.from_logits)
        # The gradient of a vector target is that of its sum; samples are independent in inference mode.
        return losses, tape.gradient(losses, x)

    def loss(self, state: TrainState, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._loss_and_grad(state, x, y)

    def saliency(self, state: TrainState, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        _, grad = self._loss_and_grad(state, x, y)
        return tf.norm(grad, axis=1), grad

    # ----- tracin ------------------------------------------------------------------------------
    def _objective_direction_fn(self, state: TrainState, x_val: tf.Tensor, y_val: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(state.trainable)
            value = self.recipe.objective(state, x_val, y_val, self.objective)
        return [tf.convert_to_tensor(g) for g in tape.gradient(value, state.trainable)]

    def checkpoint(self, weight: float, state: TrainState, x_val: tf.Tensor, y_val: tf.Tensor) -> Checkpoint:
        """Prepare one TracIn checkpoint: grad E(theta_c) is computed once, not per batch."""
        return Checkpoint(weight, state, self._objective_direction(state, x_val, y_val))

    def checkpoints(
        self, states: Mapping[int, TrainState], steps: Sequence[int], lr: Sequence[float], n_train: int, x_val: tf.Tensor, y_val: tf.Tensor
    ) -> list[Checkpoint]:
        """TracIn checkpoints at every stored step but the last, w_c = lr[c] * (next stored step - c) / n_train."""
        return [self.checkpoint(float(lr[a]) * (b - a) / n_train, states[a], x_val, y_val) for a, b in zip(steps[:-1], steps[1:])]

    def _tracin_one_fn(self, state: TrainState, direction: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(grad E . grad loss_i [b], its gradient in x_i [b, d]) at one checkpoint."""
        r = self.recipe
        with tf.GradientTape() as tape:
            tape.watch(x)
            with tf.autodiff.ForwardAccumulator(state.trainable, direction) as accumulator:
                outputs, _ = r.forward(state.trainable, state.non_trainable, x, training=False)
                losses = objectives.per_sample(r.loss, outputs, y, r.from_logits)
            dots = accumulator.jvp(losses)
        return dots, tape.gradient(dots, x)

    def tracin(self, checkpoints: Sequence[Checkpoint], x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        influence, input_grad = tf.zeros(tf.shape(x)[:1], x.dtype), tf.zeros_like(x)
        for c in checkpoints:
            dots, grad = self._tracin_one(c.state, c.direction, x, y)
            weight = tf.constant(-c.weight, x.dtype)
            influence, input_grad = influence + weight * dots, input_grad + weight * grad
        return influence, input_grad

    # ----- lookahead ---------------------------------------------------------------------------
    def _lookahead_fn(
        self, state: TrainState, x: tf.Tensor, y: tf.Tensor, x_val: tf.Tensor, y_val: tf.Tensor, lr: tf.Tensor, first_step: tf.Tensor, steps: int
    ) -> tuple[tf.Tensor, tf.Tensor]:
        r = self.recipe

        def one_sample(sample: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            x_i, y_i = sample[0][None], sample[1][None]
            eps = tf.ones((1,), x.dtype)
            with tf.GradientTape() as tape:
                tape.watch([eps, x_i])
                s = state
                for k in range(steps):  # K is small and fixed: unrolled
                    s, _ = r.step(s, x_i, y_i, eps, lr, first_step + k)
                value = r.objective(s, x_val, y_val, self.objective)
            d_eps, d_x = tape.gradient(value, [eps, x_i])
            return d_eps[0], d_x[0]

        return tf.vectorized_map(one_sample, (x, y))

    def lookahead(
        self, state: TrainState, x: tf.Tensor, y: tf.Tensor, x_val: tf.Tensor, y_val: tf.Tensor, lr: float, first_step: int, steps: int
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """dE/d eps_i and dE/d x_i after `steps` optimizer steps on each sample alone, from `state`
        (whose optimizer buffers continue; `first_step` is the global step index of the first one)."""
        return self._lookahead(state, x, y, x_val, y_val, tf.constant(lr, tf.float64), tf.constant(first_step), steps)
