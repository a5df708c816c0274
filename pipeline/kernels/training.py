"""The functional training step and the compiled loop over a segment of steps.

    L_t(theta; eps) = (1/|B_t|) * sum_{i in B_t} eps_i * loss(f(x_i; theta), y_i)
    (theta_{t+1}, s_{t+1}) = update(theta_t, s_t, grad_theta L_t)

The state is (trainable weights, non-trainable variables such as BatchNorm statistics and the dropout
seed, optimizer buffers); every function takes it and returns the next one, nothing is assigned.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from pipeline.errors import DivergenceError
from pipeline.kernels import objectives
from pipeline.kernels.optimizers import FunctionalOptimizer
from pipeline.kernels.schedule import Schedule

Tensors = list[tf.Tensor]


class TrainState(NamedTuple):
    trainable: Tensors
    non_trainable: Tensors
    optimizer: Tensors


class Batches(NamedTuple):
    """Everything a run of steps reads. x: [N, d] flat; y: [N]; eps: [N] sample weights;
    index: [T, B_max] (-1 padded), size: [T], lr: [T]."""

    x: tf.Tensor
    y: tf.Tensor
    eps: tf.Tensor
    index: tf.Tensor
    size: tf.Tensor
    lr: tf.Tensor

    def batch(self, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(ids [b], x [b, d], y [b], eps [b]) of one step."""
        ids = self.index[step, : self.size[step]]
        return ids, tf.gather(self.x, ids), tf.gather(self.y, ids), tf.gather(self.eps, ids)


def make_batches(x: np.ndarray, y: np.ndarray, schedule: Schedule, dtype: str, eps: np.ndarray | None = None) -> Batches:
    """Tensors for the compiled loops; eps defaults to ones (every sample at full weight)."""
    eps = np.ones(x.shape[0]) if eps is None else eps
    return Batches(
        x=tf.constant(x, dtype=dtype),
        y=tf.constant(y, dtype=tf.int64),
        eps=tf.constant(eps, dtype=dtype),
        index=tf.constant(schedule.index, dtype=tf.int64),
        size=tf.constant(schedule.size, dtype=tf.int32),
        lr=tf.constant(schedule.lr, dtype=tf.float64),
    )


class Recipe:
    """A Keras model + functional optimizer + loss, as pure functions of the state.

    `model` only provides the computation (`stateless_call`) and the initial variable values.
    """

    def __init__(self, model: Any, optimizer: FunctionalOptimizer, loss: str, from_logits: bool, input_shape: tuple[int, ...]):
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.from_logits = from_logits
        self.input_shape = tuple(input_shape)
        self.dtype = tf.as_dtype(model.trainable_variables[0].dtype)
        # Float non-trainables (BatchNorm statistics) carry an adjoint; integer ones (seed state) do not.
        self.float_non_trainable = [v.dtype.startswith("float") for v in model.non_trainable_variables]
        # stateless_call passes keyword arguments to call() as they are; custom models may lack `training`.
        self._takes_training = "training" in inspect.signature(model.call).parameters
        use_twice_differentiable_batch_norm()
        # Compiled per instance (a class-level tf.function would share traces across models).
        self.run_steps = tf.function(self._run_steps, reduce_retracing=True)
        self.per_sample_loss = tf.function(self._per_sample_loss, reduce_retracing=True)
        self.evaluate = tf.function(self._evaluate, reduce_retracing=True)

    # ----- state -------------------------------------------------------------------------------
    def initial_state(self) -> TrainState:
        trainable = [tf.convert_to_tensor(v.value) for v in self.model.trainable_variables]
        non_trainable = [tf.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]
        return TrainState(trainable, non_trainable, self.optimizer.init(trainable))

    def state_names(self) -> list[str]:
        """Names of the flattened state tensors: trainable/<path>, non_trainable/<path>, optimizer/<slot>/<path>."""
        trainable = [v.path for v in self.model.trainable_variables]
        names = [f"trainable/{p}" for p in trainable]
        names += [f"non_trainable/{v.path}" for v in self.model.non_trainable_variables]
        names += [f"optimizer/{slot}/{p}" for slot in self.optimizer.slots for p in trainable]
        return names

    def flatten(self, state: TrainState) -> list[tf.Tensor]:
        return [*state.trainable, *state.non_trainable, *state.optimizer]

    def unflatten(self, tensors: list[Any]) -> TrainState:
        n_t, n_nt = len(self.model.trainable_variables), len(self.model.non_trainable_variables)
        tensors = [tf.convert_to_tensor(t) for t in tensors]
        return TrainState(tensors[:n_t], tensors[n_t : n_t + n_nt], tensors[n_t + n_nt :])

    def differentiable(self, state: TrainState) -> TrainState:
        """The part of the state that carries an adjoint (drops integer seed state)."""
        nt = [v for v, is_float in zip(state.non_trainable, self.float_non_trainable) if is_float]
        return TrainState(state.trainable, nt, state.optimizer)

    # ----- math --------------------------------------------------------------------------------
    def forward(self, trainable: Tensors, non_trainable: Tensors, x: tf.Tensor, training: bool) -> tuple[tf.Tensor, Tensors]:
        """outputs [b, C] and the updated non-trainables for flat inputs x [b, d]."""
        x = tf.reshape(x, (-1, *self.input_shape))
        kwargs = {"training": training} if self._takes_training else {}
        outputs, non_trainable = self.model.stateless_call(trainable, non_trainable, x, **kwargs)
        return outputs, list(non_trainable)

    def batch_loss(self, state: TrainState, x: tf.Tensor, y: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, Tensors]:
        """(1/b) sum_i eps_i loss_i (Keras' sum_over_batch_size with sample weights), and new non-trainables."""
        outputs, non_trainable = self.forward(state.trainable, state.non_trainable, x, training=True)
        per_sample = objectives.per_sample(self.loss, outputs, y, self.from_logits)
        return tf.reduce_sum(eps * per_sample) / tf.cast(tf.shape(x)[0], x.dtype), non_trainable

    def step(self, state: TrainState, x: tf.Tensor, y: tf.Tensor, eps: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> tuple[TrainState, tf.Tensor]:
        """One optimizer step on the batch; returns (next state, batch loss)."""
        with tf.GradientTape() as tape:
            tape.watch(state.trainable)
            loss, non_trainable = self.batch_loss(state, x, y, eps)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, state.trainable)]
        trainable, opt_state = self.optimizer.update(state.trainable, state.optimizer, grads, lr, step)
        return TrainState(trainable, non_trainable, opt_state), loss

    def objective(self, state: TrainState, x: tf.Tensor, y: tf.Tensor, kind: str) -> tf.Tensor:
        """Validation objective E: mean over samples of `kind`, inference mode (BatchNorm moving stats)."""
        outputs, _ = self.forward(state.trainable, state.non_trainable, x, training=False)
        return self._mean_objective(outputs, y, kind)

    def _mean_objective(self, outputs: tf.Tensor, y: tf.Tensor, kind: str) -> tf.Tensor:
        return tf.reduce_mean(objectives.per_sample(kind, outputs, y, self.from_logits))

    # ----- compiled loops ----------------------------------------------------------------------
    def _run_steps(self, state: TrainState, batches: Batches, start: tf.Tensor, stop: tf.Tensor) -> tuple[TrainState, tf.Tensor]:
        """Steps start..stop-1; returns the state after them and the batch losses [stop - start]."""
        losses = tf.TensorArray(self.dtype, size=stop - start)
        for t in tf.range(start, stop):
            _, x, y, eps = batches.batch(t)
            state, loss = self.step(state, x, y, eps, batches.lr[t], t)
            losses = losses.write(t - start, loss)
        return state, losses.stack()

    def _per_sample_loss(self, state: TrainState, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """[n] training loss of each sample under `state`, inference mode."""
        outputs, _ = self.forward(state.trainable, state.non_trainable, x, training=False)
        return objectives.per_sample(self.loss, outputs, y, self.from_logits)

    def _evaluate(self, state: TrainState, x: tf.Tensor, y: tf.Tensor, kind: str) -> tuple[tf.Tensor, tf.Tensor]:
        """(objective E of `kind`, accuracy) on (x, y), inference mode."""
        outputs, _ = self.forward(state.trainable, state.non_trainable, x, training=False)
        value = self._mean_objective(outputs, y, kind)
        correct = tf.equal(tf.argmax(outputs, axis=-1, output_type=y.dtype), y)
        return value, tf.reduce_mean(tf.cast(correct, tf.float64))


def train(
    recipe: Recipe,
    state: TrainState,
    batches: Batches,
    stored_steps: Sequence[int],
    on_state: Callable[[int, TrainState], None],
    progress: Callable[[int], None] | None = None,
) -> TrainState:
    """Run steps 0..stored_steps[-1]; call on_state(t, state) for every t in stored_steps (0 included).

    Raises DivergenceError naming the first step whose batch loss is NaN or inf.
    """
    on_state(stored_steps[0], state)
    for start, stop in zip(stored_steps[:-1], stored_steps[1:]):
        state, losses = recipe.run_steps(state, batches, tf.constant(start), tf.constant(stop))
        raise_if_nonfinite(losses.numpy(), "training", first_step=start)
        on_state(stop, state)
        if progress is not None:
            progress(stop - start)
    return state


def raise_if_nonfinite(values: np.ndarray, what: str, first_step: int) -> None:
    """DivergenceError naming the step of the first NaN/inf in a per-step array."""
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        step = first_step + int(bad[0])
        raise DivergenceError(f"{what} diverged: NaN/inf at step {step}; try a smaller optimizer.lr")


def per_sample_losses(recipe: Recipe, state: TrainState, x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[n] float64 training loss of every sample under `state` (inference mode), in chunks of rows."""
    parts = [
        recipe.per_sample_loss(state, tf.constant(x[i : i + chunk], recipe.dtype), tf.constant(y[i : i + chunk]))
        for i in range(0, x.shape[0], chunk)
    ]
    return np.concatenate([p.numpy() for p in parts]).astype(np.float64)


def _moments_without_stop_gradient(x: tf.Tensor, axes, keepdims: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """tf.nn.moments computes the variance around stop_gradient(mean): right for first derivatives but
    wrong for second ones, which the reverse sweep takes through BatchNorm. Same values, full graph."""
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axes, keepdims=True)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return mean, variance


def use_twice_differentiable_batch_norm() -> None:
    """Make Keras' TensorFlow BatchNormalization statistics differentiable twice (idempotent)."""
    from keras.src.backend.tensorflow import nn as keras_tf_nn

    keras_tf_nn._compute_moments = _moments_without_stop_gradient
