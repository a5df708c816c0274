"""Exact hypergradients of the validation objective through a recorded training run (reverse sweep).

With E = objective(theta_T) and adjoint a_t = dE/d(state_t), each step t = T-1..0 is recomputed from
state_t inside a GradientTape and one vector-Jacobian product of state_{t+1} with respect to
(state_t, eps_B, x_B) gives a_t and, for every sample i in the batch, its contribution to

    influence_i  = dE/d eps_i   (positive: more weight on sample i raises validation error)
    input_grad_i = dE/d x_i     one array per model input, each of that input's sample shape

summed over all the steps that used sample i. States are read from checkpoints every k steps and the
k states of a segment are recomputed, so memory holds the checkpoints plus k states.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from pipeline.errors import DivergenceError
from pipeline.kernels.training import Batches, Recipe, TrainState, raise_if_nonfinite


class Hypergradients(NamedTuple):
    objective: float  # E at the final state
    influence: np.ndarray  # [N] dE/d eps_i
    input_grad: tuple[np.ndarray, ...]  # per model input [N, *shape]: dE/d x_i, in the training dtype
    replay_error: float  # max |recomputed state - stored checkpoint| over segment ends (0 when bit-exact)


class ReverseSweep:
    """Compiled pieces of the sweep for one recipe; `run` drives them over the checkpointed segments."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self._objective_grad = tf.function(self._objective_grad_fn, reduce_retracing=True)
        self._reverse_segment = tf.function(self._reverse_segment_fn, reduce_retracing=True)
        # A separate (not inlined) function: inlined into the while loop, Grappler's memory optimizer
        # rewrites the large AddN of the second-order gradient into temporary variables whose names
        # clash between iterations (AlreadyExistsError at N=50,000, d=784).
        self._reverse_step = tf.function(self._reverse_step_fn, experimental_attributes={"_noinline": True})

    # E and dE/d(differentiable state) at the final state.
    def _objective_grad_fn(self, state: TrainState, x_val: tuple[tf.Tensor, ...], y_val: tf.Tensor) -> tuple[tf.Tensor, TrainState]:
        r = self.recipe
        diff = r.differentiable(state)
        with tf.GradientTape() as tape:
            tape.watch(diff)
            value = r.objective(self._merge(state, diff), x_val, y_val)
        grads = tape.gradient(value, diff, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return value, tf.nest.map_structure(tf.convert_to_tensor, grads)

    def _merge(self, state: TrainState, diff: TrainState) -> TrainState:
        """`state` with its differentiable tensors replaced by those of `diff` (so the tape sees them)."""
        floats = iter(diff.non_trainable)
        nt = [next(floats) if is_float else v for v, is_float in zip(state.non_trainable, self.recipe.float_non_trainable)]
        return TrainState(list(diff.trainable), nt, list(diff.optimizer))

    def _reverse_step_fn(self, state: TrainState, adjoint: TrainState, batches: Batches, t: tf.Tensor):
        """One VJP: (a_t, dE/d eps_B [b], dE/d x_B (per input [b, *shape]), ids [b]) from a_{t+1} and state_t."""
        r = self.recipe
        ids, x, y, eps = batches.batch(t)
        diff = r.differentiable(state)
        with tf.GradientTape() as tape:
            tape.watch([diff, x, eps])
            new_state, _ = r.step(self._merge(state, diff), x, y, eps, batches.lr[t], t)
            new_diff = r.differentiable(new_state)
        grads = tape.gradient(
            new_diff, [diff, x, eps], output_gradients=adjoint, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        grad_state, grad_x, grad_eps = tf.nest.map_structure(tf.convert_to_tensor, grads)
        return grad_state, grad_eps, grad_x, ids

    def _reverse_segment_fn(
        self,
        state: TrainState,
        adjoint: TrainState,
        batches: Batches,
        start: tf.Tensor,
        stop: tf.Tensor,
        floor: tf.Tensor,
        influence: tf.Variable,
        input_grad: tuple[tf.Variable, ...],
    ) -> tuple[TrainState, TrainState]:
        """Recompute states start..stop-1 from `state`, then carry the adjoint from stop back to
        max(start, floor), adding per-sample gradients into the accumulators. Returns (adjoint there,
        recomputed state at stop)."""
        r = self.recipe
        n = stop - start
        flat = r.flatten(state)
        stored = [tf.TensorArray(s.dtype, size=n, element_shape=s.shape) for s in flat]
        for i in tf.range(n):
            stored = [ta.write(i, s) for ta, s in zip(stored, r.flatten(state))]
            _, x, y, eps = batches.batch(start + i)
            state, _ = r.step(state, x, y, eps, batches.lr[start + i], start + i)
        end_state = state
        for i in tf.range(n - 1, tf.maximum(floor - start, 0) - 1, -1):
            state_i = r.unflatten([ta.read(i) for ta in stored])
            adjoint, grad_eps, grad_x, ids = self._reverse_step(state_i, adjoint, batches, start + i)
            # Row-wise ResourceScatterAdd: several times faster here than scatter_nd_add.
            influence.scatter_add(tf.IndexedSlices(grad_eps, ids))
            for accumulator, grad in zip(input_grad, grad_x):
                accumulator.scatter_add(tf.IndexedSlices(grad, ids))
        return adjoint, end_state

    def run(
        self,
        checkpoints: Mapping[int, TrainState],
        stored_steps: Sequence[int],
        batches: Batches,
        x_val: tuple[tf.Tensor, ...],
        y_val: tf.Tensor,
        progress: Callable[[int], None] | None = None,
        horizon: int | None = None,
    ) -> Hypergradients:
        """Sweep from the last stored step back to 0, or only over the last `horizon` steps (truncated
        unrolling: earlier steps contribute nothing). `checkpoints[t]` is the state after t steps;
        x_val, y_val: validation inputs (one tensor per model input) and targets, as tensors."""
        r = self.recipe
        steps = sorted(stored_steps)
        floor = 0 if horizon is None else max(0, steps[-1] - horizon)
        value, adjoint = self._objective_grad(checkpoints[steps[-1]], x_val, y_val)
        raise_if_nonfinite(np.array([value.numpy()]), "validation objective", first_step=steps[-1])
        influence = tf.Variable(tf.zeros(batches.eps.shape, r.dtype))
        input_grad = tuple(tf.Variable(tf.zeros(x.shape, r.dtype)) for x in batches.x)
        replay_error = 0.0
        for start, stop in reversed(list(zip(steps[:-1], steps[1:]))):
            if stop <= floor:
                break
            adjoint, end_state = self._reverse_segment(
                checkpoints[start], adjoint, batches, tf.constant(start), tf.constant(stop), tf.constant(floor), influence, input_grad
            )
            replay_error = max(replay_error, _max_abs_diff(r.flatten(end_state), r.flatten(checkpoints[stop])))
            if not np.isfinite(float(tf.reduce_sum(influence))):
                raise DivergenceError(f"reverse sweep diverged: NaN/inf in steps {start}..{stop - 1}; try a smaller optimizer.lr")
            if progress is not None:
                progress(stop - start)
        return Hypergradients(
            objective=float(value.numpy()),
            influence=influence.numpy().astype(np.float64),
            input_grad=tuple(g.numpy() for g in input_grad),
            replay_error=replay_error,
        )


def _max_abs_diff(a: list[tf.Tensor], b: list[tf.Tensor]) -> float:
    diffs = [float(tf.reduce_max(tf.abs(tf.cast(x, tf.float64) - tf.cast(y, tf.float64)))) for x, y in zip(a, b) if x.shape.num_elements()]
    return max(diffs, default=0.0)
