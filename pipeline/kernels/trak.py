"""TRAK (Park et al., 2023): projected per-sample gradients of the model's output function and the
scores built from them. Pure TensorFlow, no I/O; scores from stored features are in kernels.trak_scores.

For a trained state theta, every training sample i gets a feature phi_i = P^T grad_theta f_i [k]:

- classification: f_i = the margin log(p_y / (1 - p_y)) = z_y - logsumexp_{c != y} z_c of the logits z.
  Cross-entropy is log(1 + exp(-f_i)), so grad loss_i = slope_i * grad f_i with slope_i = -(1 - p_y).
- regression: f_i = r_i . out(x_i) / |r_i| with the loss residual r_i = d loss_i / d out held fixed, so
  grad loss_i = slope_i * grad f_i with slope_i = |r_i| (for one output: f_i = +-out_i, TRAK's choice).

P [p, k] is a Rademacher matrix scaled by 1/sqrt(k), never held whole: it is generated block by block
(at most BLOCK_ROWS parameter rows) from (projection seed, block number) with the counter-based Philox
generator, so every worker and device builds the same P. With the kernel G = Phi^T Phi + lambda I over
the whole training set and the validation objective's projected gradient phi_E = P^T grad E,

    influence_i = -slope_i * phi_E^T G^-1 phi_i        (an estimate of dE/d eps_i: positive = harmful)

which is the influence function -grad E^T H^-1 grad loss_i with TRAK's Gauss-Newton kernel in place of the
Hessian. Because phi_E^T G^-1 phi_i = grad f_i . u with u = P G^-1 phi_E (`lift`), the same score and its
derivative in x_i come from one forward-mode pass along u (`directional`), without features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from pipeline.kernels.training import Recipe, TrainState

BLOCK_ROWS = 8192  # parameter rows of one generated projection block ([BLOCK_ROWS, k] float32)
_SHIFTS = tf.constant(np.arange(32), tf.uint32)
Inputs = tuple[tf.Tensor, ...]


class Block(NamedTuple):
    variable: int  # position in the model's trainable variables
    start: int  # first flat row of the variable in this block
    stop: int


def blocks(sizes: Sequence[int], block_rows: int = BLOCK_ROWS) -> list[Block]:
    """The flat parameters of every trainable variable, cut into consecutive blocks of <= block_rows rows."""
    return [
        Block(v, start, min(start + block_rows, size))
        for v, size in enumerate(sizes)
        for start in range(0, size, block_rows)
    ]


class Projection:
    """x -> P^T x and w -> P w for P [p, k], generated per block (see the module docstring)."""

    def __init__(self, shapes: Sequence[Sequence[int]], dim: int, seed: int, block_rows: int = BLOCK_ROWS):
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.dim, self.seed = int(dim), int(seed)
        self.blocks = blocks([math.prod(s) for s in self.shapes], block_rows)

    def block(self, number: int) -> tf.Tensor:
        """[rows, k] float32 entries +-1/sqrt(k) of block `number`: the bits of Philox words, 32 signs per word
        (1.8x faster than one draw per entry)."""
        b = self.blocks[number]
        rows, words = b.stop - b.start, (self.dim + 31) // 32
        draws = tf.random.stateless_uniform(
            (rows, words), seed=[self.seed, number], minval=None, maxval=None, dtype=tf.uint32, alg="philox"
        )
        bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(draws[:, :, None], _SHIFTS), 1)
        signs = tf.cast(tf.reshape(bits, (rows, words * 32))[:, : self.dim], tf.float32) * 2 - 1
        return signs / math.sqrt(self.dim)

    def project(self, flat: Sequence[tf.Tensor]) -> tf.Tensor:
        """[b, k] = sum over blocks of flat[variable][:, rows] @ P_block,
        for flat: one [b, p_v] float32 per variable."""
        total = tf.zeros((tf.shape(flat[0])[0], self.dim), tf.float32)
        for number, b in enumerate(self.blocks):
            total += tf.matmul(flat[b.variable][:, b.start : b.stop], self.block(number))
        return total

    def lift(self, w: np.ndarray, dtype: tf.DType) -> list[tf.Tensor]:
        """P w [p] for w [k], shaped as the trainable variables (the direction u of the module docstring)."""
        w32 = tf.constant(np.asarray(w, np.float32)[:, None])
        pieces: list[list[tf.Tensor]] = [[] for _ in self.shapes]
        for number, b in enumerate(self.blocks):
            pieces[b.variable].append(tf.matmul(self.block(number), w32)[:, 0])
        return [tf.cast(tf.reshape(tf.concat(p, 0), s), dtype) for p, s in zip(pieces, self.shapes)]


class Features(NamedTuple):
    phi: tf.Tensor  # [b, k] float32 projected gradients of the output function
    slope: tf.Tensor  # [b] d loss_i / d f_i (classification: -(1 - p_y); regression: |r_i|)


class TrakScorer:
    """Features and directional scores of one recipe's model; the model's variables are never assigned."""

    def __init__(self, recipe: Recipe, projection: Projection):
        self.recipe, self.projection = recipe, projection
        self._features = tf.function(self._features_fn, reduce_retracing=True)
        self._per_sample_objective = tf.function(self._per_sample_objective_fn, reduce_retracing=True)
        self._objective = tf.function(self._objective_fn, reduce_retracing=True)
        self._directional = tf.function(self._directional_fn, reduce_retracing=True)

    # ----- output function -----------------------------------------------------------------------
    def output_function(self, outputs: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(f [b], slope [b]) of the module docstring; slope carries no gradient."""
        task = self.recipe.task
        if task.kind == "classification":
            z = task.logits(outputs)
            is_true = tf.one_hot(tf.cast(y, tf.int32), tf.shape(z)[-1], on_value=True, off_value=False)
            true_score = tf.reduce_sum(tf.where(is_true, z, tf.zeros_like(z)), axis=-1)
            others = tf.reduce_logsumexp(tf.where(is_true, tf.constant(-np.inf, z.dtype), z), axis=-1)
            f = true_score - others
            return f, tf.stop_gradient(-tf.sigmoid(-f))  # 1 - p_y = sigmoid(-margin)
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            losses = task.loss(outputs, y)
        residual = tf.stop_gradient(tape.gradient(losses, outputs))  # rows are independent: d loss_i / d out_i
        norm = tf.norm(residual, axis=-1)
        direction = residual / tf.maximum(norm, tf.constant(np.finfo(np.float32).tiny, norm.dtype))[:, None]
        return tf.reduce_sum(direction * outputs, axis=-1), norm

    # ----- features ------------------------------------------------------------------------------
    def _per_sample_projected(
        self, state: TrainState, x: Inputs, y: tf.Tensor, value_fn
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """P^T grad of value_fn(outputs, y) -> (values [b], aux [b]) per sample, vectorized over the batch."""
        r = self.recipe

        def one(sample: tuple[Inputs, tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor]:
            x_i, y_i = tuple(a[None] for a in sample[0]), sample[1][None]
            trainable = [tf.identity(v) for v in state.trainable]  # tensors of this traced body, so the tape sees them
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                outputs, _ = r.forward(trainable, state.non_trainable, x_i, training=False)
                value, aux = value_fn(outputs, y_i)
            grads = tape.gradient(value, trainable)  # value [1]: its one entry
            return [tf.reshape(tf.cast(tf.convert_to_tensor(g), tf.float32), (-1,)) for g in grads], aux[0]

        flat, aux = tf.vectorized_map(one, (x, y))
        return self.projection.project(flat), aux

    def _features_fn(self, state: TrainState, x: Inputs, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._per_sample_projected(state, x, y, self.output_function)

    def features(self, state: TrainState, x: Inputs, y: tf.Tensor) -> Features:
        """Projected output-function gradients phi [b, k] and loss slopes [b] of a batch of training samples."""
        phi, slope = self._features(state, x, y)
        return Features(phi, slope)

    def _per_sample_objective_fn(self, state: TrainState, x: Inputs, y: tf.Tensor) -> tf.Tensor:
        objective = self.recipe.task.objective
        phi, _ = self._per_sample_projected(
            state, x, y, lambda out, t: (objective(out, t), tf.zeros(tf.shape(t)[:1], out.dtype))
        )
        return phi

    def objective_features(self, state: TrainState, x: Inputs, y: tf.Tensor) -> tf.Tensor:
        """[b, k] P^T grad objective(x_v) per validation sample (queries: E_q is a weighted mean of them)."""
        return self._per_sample_objective(state, x, y)

    def _objective_fn(self, state: TrainState, x: Inputs, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(state.trainable)
            value = self.recipe.objective(state, x, y)
        grads = tape.gradient(value, state.trainable)
        flat = [tf.reshape(tf.cast(tf.convert_to_tensor(g), tf.float32), (1, -1)) for g in grads]
        return self.projection.project(flat)[0]

    def objective_feature(self, state: TrainState, x_val: Inputs, y_val: tf.Tensor) -> tf.Tensor:
        """[k] phi_E = P^T grad E of the mean validation objective."""
        return self._objective(state, x_val, y_val)

    # ----- scores along a lifted direction ---------------------------------------------------------
    def _directional_fn(
        self, state: TrainState, direction: list[tf.Tensor], x: Inputs, y: tf.Tensor
    ) -> tuple[tf.Tensor, Inputs]:
        r = self.recipe
        with tf.GradientTape() as tape:
            tape.watch(x)
            with tf.autodiff.ForwardAccumulator(state.trainable, direction) as accumulator:
                outputs, _ = r.forward(state.trainable, state.non_trainable, x, training=False)
                f, _ = self.output_function(outputs, y)
            along = accumulator.jvp(f)
            # the slope depends on x_i too; recomputed here with its gradient (output_function stops it)
            slope = self._slope_with_gradient(outputs, y)
            scores = -slope * along
        return scores, tuple(tape.gradient(scores, x))

    def _slope_with_gradient(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        task = self.recipe.task
        if task.kind == "classification":
            f, _ = self.output_function(outputs, y)
            return -tf.sigmoid(-f)
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            losses = task.loss(outputs, y)
        return tf.norm(tape.gradient(losses, outputs), axis=-1)

    def directional(
        self, state: TrainState, direction: list[tf.Tensor], x: Inputs, y: tf.Tensor
    ) -> tuple[tf.Tensor, Inputs]:
        """(-slope_i * grad f_i . u [b], its gradient in x_i) for u = `direction` (Projection.lift)."""
        return self._directional(state, direction, x, y)
