"""The functional training step and the compiled loop over a segment of steps.

    L_t(theta; eps) = (1/|B_t|) * sum_{i in B_t} eps_i * loss(f(x_i; theta), y_i)
    (theta_{t+1}, s_{t+1}) = update(theta_t, s_t, grad_theta L_t)

The state is (trainable weights, non-trainable variables such as BatchNorm statistics and the dropout
seed, optimizer buffers); every function takes it and returns the next one, nothing is assigned.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from pipeline.errors import DivergenceError
from pipeline.kernels.optimizers import FunctionalOptimizer
from pipeline.kernels.schedule import Schedule
from pipeline.kernels.task import Task

Tensors = list[tf.Tensor]


class TrainState(NamedTuple):
    trainable: Tensors
    non_trainable: Tensors
    optimizer: Tensors


class Batches(NamedTuple):
    """Everything a run of steps reads. x: one tensor [N, *shape] per model input; y: [N] class ids or
    [N] / [N, k] float targets; eps: [N] each sample's loss weight, eps_i * w_i (eps_i: 1 as trained, 0 removed;
    w_i: its weight from the data and the class weights); weight: [N] w_i; index: [T, B_max] (-1 padded),
    size: [T], lr: [T]."""

    x: tuple[tf.Tensor, ...]
    y: tf.Tensor
    eps: tf.Tensor
    weight: tf.Tensor
    index: tf.Tensor
    size: tf.Tensor
    lr: tf.Tensor

    def batch(self, step: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...], tf.Tensor, tf.Tensor]:
        """(ids [b], x (one [b, *shape] per input), y [b, ...], eps [b]) of one step."""
        ids = self.index[step, : self.size[step]]
        return ids, tuple(tf.gather(x, ids) for x in self.x), tf.gather(self.y, ids), tf.gather(self.eps, ids)


def as_inputs(x: Sequence[np.ndarray] | np.ndarray, dtype: str | tf.DType) -> tuple[tf.Tensor, ...]:
    """Model inputs as a tuple of tensors in `dtype` (a single array becomes a 1-tuple)."""
    arrays = (x,) if isinstance(x, (np.ndarray, tf.Tensor)) else tuple(x)
    return tuple(tf.constant(a, dtype=dtype) for a in arrays)


def as_targets(y: np.ndarray, task: Task, dtype: str | tf.DType) -> tf.Tensor:
    """Class ids as int64; float targets in the model's dtype."""
    return tf.constant(y, dtype=task.target_dtype or dtype)


def make_batches(
    x: Sequence[np.ndarray] | np.ndarray,
    y: np.ndarray,
    schedule: Schedule,
    dtype: str,
    task: Task,
    eps: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> Batches:
    """Tensors for the compiled loops; eps [N] defaults to ones (every sample as trained), weight [N] (the samples'
    weights w_i, Keras' sample_weight times class_weight) to ones. The loss weighs sample i by eps_i * w_i."""
    eps = np.ones(y.shape[0]) if eps is None else np.asarray(eps, np.float64)
    weight = np.ones(y.shape[0]) if weight is None else np.asarray(weight, np.float64)
    return Batches(
        x=as_inputs(x, dtype),
        y=as_targets(y, task, dtype),
        eps=tf.constant(eps * weight, dtype=dtype),
        weight=tf.constant(weight, dtype=dtype),
        index=tf.constant(schedule.index, dtype=tf.int64),
        size=tf.constant(schedule.size, dtype=tf.int32),
        lr=tf.constant(schedule.lr, dtype=tf.float64),
    )


class Recipe:
    """A Keras model + functional optimizer + task (losses), as pure functions of the state.

    `model` only provides the computation (`stateless_call`) and the initial variable values. Inputs are
    a tuple with one tensor per model input; a model with several inputs is called on them as a list.
    """

    def __init__(self, model: Any, optimizer: FunctionalOptimizer, task: Task):
        self.model = model
        self.optimizer = optimizer
        self.task = task
        self.dtype = tf.as_dtype(model.trainable_variables[0].dtype)
        # Non-trainables that carry an adjoint: the float ones a step changes (BatchNorm statistics); not integer seed
        # state, nor the weights of frozen layers (trainable=False: constant, so they cost the sweep nothing).
        frozen = {
            id(v) for layer in model._flatten_layers(include_self=False) if not layer.trainable for v in layer.weights
        }
        self.adjoint_non_trainable = [
            v.dtype.startswith("float") and id(v) not in frozen for v in model.non_trainable_variables
        ]
        # stateless_call passes keyword arguments to call() as they are; custom models may lack `training`.
        self._takes_training = "training" in inspect.signature(model.call).parameters
        use_twice_differentiable_batch_norm()
        # Compiled per instance (a class-level tf.function would share traces across models).
        self.run_steps = tf.function(self._run_steps, reduce_retracing=True)
        self.record_steps = tf.function(self._record_steps, reduce_retracing=True)
        self.per_sample_loss = tf.function(self._per_sample_loss, reduce_retracing=True)
        self.evaluate = tf.function(self._evaluate, reduce_retracing=True)

    # ----- state -------------------------------------------------------------------------------
    def initial_state(self) -> TrainState:
        trainable = [tf.convert_to_tensor(v.value) for v in self.model.trainable_variables]
        non_trainable = [tf.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]
        return TrainState(trainable, non_trainable, self.optimizer.init(trainable))

    def state_layout(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(key, shape, variable path) of every flattened state tensor. Keys go by position, never by
        Keras' auto-generated names (those change with every model built in a process):
        trainable/<i>, non_trainable/<i>, optimizer/<slot>/<i>, i zero-padded to 4 digits."""
        trainable = [
            (f"trainable/{i:04d}", tuple(v.shape), v.path) for i, v in enumerate(self.model.trainable_variables)
        ]
        layout = list(trainable)
        layout += [
            (f"non_trainable/{i:04d}", tuple(v.shape), v.path) for i, v in enumerate(self.model.non_trainable_variables)
        ]
        layout += [
            (f"optimizer/{slot}/{key.split('/')[1]}", shape, path)
            for slot in self.optimizer.slots
            for key, shape, path in trainable
        ]
        return layout

    def state_dtypes(self) -> list[np.dtype]:
        """NumPy dtype of every flattened state tensor, in state_layout order (a slot has its weight's dtype)."""
        trainable = [np.dtype(v.dtype) for v in self.model.trainable_variables]
        non_trainable = [np.dtype(v.dtype) for v in self.model.non_trainable_variables]
        return [*trainable, *non_trainable, *(dtype for _ in self.optimizer.slots for dtype in trainable)]

    def flatten(self, state: TrainState) -> list[tf.Tensor]:
        return [*state.trainable, *state.non_trainable, *state.optimizer]

    def unflatten(self, tensors: list[Any]) -> TrainState:
        n_t, n_nt = len(self.model.trainable_variables), len(self.model.non_trainable_variables)
        tensors = [tf.convert_to_tensor(t) for t in tensors]
        return TrainState(tensors[:n_t], tensors[n_t : n_t + n_nt], tensors[n_t + n_nt :])

    def differentiable(self, state: TrainState) -> TrainState:
        """The part of the state that carries an adjoint (drops integer seed state and frozen weights)."""
        nt = [v for v, carries in zip(state.non_trainable, self.adjoint_non_trainable) if carries]
        return TrainState(state.trainable, nt, state.optimizer)

    # ----- math --------------------------------------------------------------------------------
    def forward(
        self, trainable: Tensors, non_trainable: Tensors, x: Sequence[tf.Tensor], training: bool
    ) -> tuple[tf.Tensor, Tensors]:
        """outputs [b, k] and the updated non-trainables for inputs x (one [b, *shape] per model input)."""
        inputs = x[0] if len(x) == 1 else list(x)
        kwargs = {"training": training} if self._takes_training else {}
        outputs, non_trainable = self.model.stateless_call(trainable, non_trainable, inputs, **kwargs)
        return outputs, list(non_trainable)

    def batch_loss(
        self, state: TrainState, x: Sequence[tf.Tensor], y: tf.Tensor, eps: tf.Tensor
    ) -> tuple[tf.Tensor, Tensors]:
        """(1/b) sum_i eps_i loss_i (Keras' sum_over_batch_size with sample weights), and new non-trainables."""
        outputs, non_trainable = self.forward(state.trainable, state.non_trainable, x, training=True)
        per_sample = self.task.loss(outputs, y)
        return tf.reduce_sum(eps * per_sample) / tf.cast(tf.shape(eps)[0], eps.dtype), non_trainable

    def step(
        self, state: TrainState, x: Sequence[tf.Tensor], y: tf.Tensor, eps: tf.Tensor, lr: tf.Tensor, step: tf.Tensor
    ) -> tuple[TrainState, tf.Tensor]:
        """One optimizer step on the batch; returns (next state, batch loss)."""
        with tf.GradientTape() as tape:
            tape.watch(state.trainable)
            loss, non_trainable = self.batch_loss(state, x, y, eps)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, state.trainable)]
        trainable, opt_state = self.optimizer.update(state.trainable, state.optimizer, grads, lr, step)
        return TrainState(trainable, non_trainable, opt_state), loss

    def objective(self, state: TrainState, x: Sequence[tf.Tensor], y: tf.Tensor) -> tf.Tensor:
        """Validation objective E: mean over samples of the task's objective, inference mode."""
        outputs, _ = self.forward(state.trainable, state.non_trainable, x, training=False)
        return tf.reduce_mean(self.task.objective(outputs, y))

    # ----- compiled loops ----------------------------------------------------------------------
    def _run_steps(
        self, state: TrainState, batches: Batches, start: tf.Tensor, stop: tf.Tensor
    ) -> tuple[TrainState, tf.Tensor]:
        """Steps start..stop-1; returns the state after them and the batch losses [stop - start]."""
        losses = tf.TensorArray(self.dtype, size=stop - start)
        for t in tf.range(start, stop):
            _, x, y, eps = batches.batch(t)
            state, loss = self.step(state, x, y, eps, batches.lr[t], t)
            losses = losses.write(t - start, loss)
        return state, losses.stack()

    def _record_steps(
        self, state: TrainState, batches: Batches, start: tf.Tensor, stop: tf.Tensor
    ) -> tuple[list[tf.Tensor], TrainState, tf.Tensor]:
        """As run_steps, also returning the states before each step: the flattened states start..stop-1,
        one tensor [stop - start, *shape] per state tensor (the reverse sweep reads them backwards)."""
        n = stop - start
        states = [tf.TensorArray(s.dtype, size=n, element_shape=s.shape) for s in self.flatten(state)]
        losses = tf.TensorArray(self.dtype, size=n)
        for i in tf.range(n):
            states = [ta.write(i, s) for ta, s in zip(states, self.flatten(state))]
            _, x, y, eps = batches.batch(start + i)
            state, loss = self.step(state, x, y, eps, batches.lr[start + i], start + i)
            losses = losses.write(i, loss)
        return [ta.stack() for ta in states], state, losses.stack()

    def _per_sample_loss(self, state: TrainState, x: Sequence[tf.Tensor], y: tf.Tensor) -> tf.Tensor:
        """[n] training loss of each sample under `state`, inference mode."""
        outputs, _ = self.forward(state.trainable, state.non_trainable, x, training=False)
        return self.task.loss(outputs, y)

    def _evaluate(self, state: TrainState, x: Sequence[tf.Tensor], y: tf.Tensor) -> dict[str, tf.Tensor]:
        """{objective E, loss (mean training loss), accuracy (NaN for regression)} on (x, y), inference mode."""
        outputs, _ = self.forward(state.trainable, state.non_trainable, x, training=False)
        return {
            "objective": tf.reduce_mean(self.task.objective(outputs, y)),
            "loss": tf.reduce_mean(self.task.loss(outputs, y)),
            "accuracy": self.task.accuracy(outputs, y),
        }


DIVERGENCE_FACTOR = 100.0  # a batch loss this many times the first one means training has blown up


def train(
    recipe: Recipe,
    state: TrainState,
    batches: Batches,
    stored_steps: Sequence[int],
    on_state: Callable[[int, TrainState], None],
    progress: Callable[[int], None] | None = None,
    on_segment: Callable[[int, list[np.ndarray]], None] | None = None,
) -> TrainState:
    """Run steps 0..stored_steps[-1]; call on_state(t, state) for every t in stored_steps (0 included),
    and, if given, on_segment(start, states) for every segment: its flattened states start..stop-1, one
    array [stop - start, *shape] per state tensor (every state the reverse sweep reads, kept from training).

    Raises DivergenceError naming the first step whose batch loss is NaN/inf or more than
    DIVERGENCE_FACTOR times the largest batch loss of the first segment.
    """
    on_state(stored_steps[0], state)
    reference = None  # the largest batch loss of the first segment
    for start, stop in zip(stored_steps[:-1], stored_steps[1:]):
        if on_segment is None:
            state, losses = recipe.run_steps(state, batches, tf.constant(start), tf.constant(stop))
        else:
            states, state, losses = recipe.record_steps(state, batches, tf.constant(start), tf.constant(stop))
            on_segment(start, [s.numpy() for s in states])
        losses = losses.numpy()
        raise_if_nonfinite(losses, "training", first_step=start)
        reference = float(np.max(losses)) if reference is None else reference
        raise_if_exploded(losses, reference, "training loss", first_step=start)
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


def raise_if_exploded(values: np.ndarray, reference: float, what: str, first_step: int) -> None:
    """DivergenceError naming the first step whose value exceeds DIVERGENCE_FACTOR x |reference|
    (losses and objectives blow up upwards; a margin objective may fall below zero and that is fine)."""
    limit = DIVERGENCE_FACTOR * max(abs(reference), np.finfo(np.float32).tiny)
    bad = np.flatnonzero(values > limit)
    if bad.size:
        step = first_step + int(bad[0])
        raise DivergenceError(
            f"{what} diverged: {float(values[bad[0]]):.3g} at step {step}, over {DIVERGENCE_FACTOR:g}x its early value "
            f"{reference:.3g}; try a smaller optimizer.lr"
        )


def per_sample_losses(
    recipe: Recipe, state: TrainState, x: Sequence[np.ndarray], y: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """[n] float64 training loss of every sample under `state` (inference mode), in chunks of rows.
    x: one array [n, *shape] per model input."""
    parts = [
        recipe.per_sample_loss(
            state,
            as_inputs([a[i : i + chunk] for a in x], recipe.dtype),
            as_targets(y[i : i + chunk], recipe.task, recipe.dtype),
        )
        for i in range(0, y.shape[0], chunk)
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


KERAS_MOMENTS = "keras.src.backend.tensorflow.nn._compute_moments"  # what the patch replaces (a Keras internal)
KERAS_MOMENTS_PARAMETERS = ("x", "axes", "keepdims")  # its signature in the Keras the patch was written for
KERAS_WRITTEN_FOR = "3.15"  # pyproject pins keras>=3.15,<3.16


@functools.cache
def use_twice_differentiable_batch_norm() -> Callable[..., Any]:
    """Make Keras' TensorFlow BatchNormalization statistics differentiable twice: Keras' moments helper is replaced
    by _moments_without_stop_gradient, once per process (later calls return at once). Returns Keras' original.

    RuntimeError when the helper is missing or its signature changed (a Keras other than KERAS_WRITTEN_FOR): the
    patch would otherwise silently do nothing, and second derivatives through BatchNorm would be wrong."""
    import keras
    from keras.src.backend.tensorflow import nn as keras_tf_nn

    original = getattr(keras_tf_nn, "_compute_moments", None)
    parameters = tuple(inspect.signature(original).parameters) if callable(original) else None
    if parameters != KERAS_MOMENTS_PARAMETERS:
        found = "is missing" if parameters is None else f"takes {parameters}"
        raise RuntimeError(
            f"Keras {keras.__version__}: {KERAS_MOMENTS} {found}, expected {KERAS_MOMENTS_PARAMETERS} as in Keras "
            f"{KERAS_WRITTEN_FOR}; pipeline.kernels.training patches it so that BatchNorm has second derivatives. "
            "Install the pinned Keras, or review the patch against this version"
        )
    keras_tf_nn._compute_moments = _moments_without_stop_gradient
    assert callable(original)  # checked above: parameters is None otherwise
    return original
