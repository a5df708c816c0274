"""Exact hypergradients of the validation objective through a recorded training run (reverse sweep).

With E = objective(theta_T) and adjoint a_t = dE/d(state_t), each step t = T-1..0 is recomputed from
state_t inside a GradientTape and one vector-Jacobian product of state_{t+1} with respect to
(state_t, eps_B, x_B) gives a_t and, for every sample i in the batch, its contribution to

    influence_i  = dE/d eps_i   (positive: more weight on sample i raises validation error)
    input_grad_i = dE/d x_i     one array per model input, each of that input's sample shape

summed over all the steps that used sample i. With `input_grad=False` the inputs are not watched and no
accumulator is made: the VJP then never forms the products that carry the adjoint back into x_B (on a model
dominated by its first layer, most of the reverse step's cost; docs/benchmarks/trajectory.md), and the
influence is bit-identical. States are read from checkpoints every k steps and the
k states of a segment are recomputed (replayed), so memory holds the checkpoints plus k states. When
every state was kept from training (`every_state`, Recipe.record_steps), the replay is skipped: the
segment's states are read instead, and the recorded checkpoints only check them; a segment whose kept
states cannot be trusted (None) is replayed.

`run_queries` carries Q objectives at once, E_q = sum_v W[q, v] objective(x_v, y_v) for a weight matrix
W [Q, V] (one-hot rows: one validation sample each; rows 1/|class| on a class: that class's mean). The
replay, the recomputed step and its tape are shared; the Q vector-Jacobian products are one vectorized
backward pass (tf.vectorized_map over the cotangents, measured faster than a loop over a persistent tape
in docs/benchmarks/queries.md). The adjoint then has a leading [Q] axis: memory grows with Q x state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from pipeline.errors import DivergenceError
from pipeline.kernels.training import Batches, Recipe, TrainState, raise_if_nonfinite


class Hypergradients(NamedTuple):
    objective: float  # E at the final state
    influence: np.ndarray  # [N] dE/d eps_i (= w_i dE/d(loss weight of i); batches.eps holds eps_i w_i)
    input_grad: tuple[np.ndarray, ...]  # per model input [N, *shape]: dE/d x_i, in the training dtype; () unless asked
    replay_error: float  # max |state swept - stored checkpoint| at segment boundaries (0 when bit-exact)


class QueryHypergradients(NamedTuple):
    objective: np.ndarray  # [Q] E_q at the final state
    influence: np.ndarray  # [Q, N] dE_q/d eps_i (positive: more weight on sample i raises E_q)
    input_grad: tuple[np.ndarray, ...]  # per model input [Q, N, *shape] dE_q/d x_i; empty unless asked for
    replay_error: float  # as in Hypergradients


# Every state of a run, kept from training: (start, stop) -> the flattened states start..stop-1, one
# array [stop - start, *shape] per state tensor (Recipe.flatten order), or None if they cannot be trusted.
EveryState = Callable[[int, int], Sequence[np.ndarray] | None]


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
        self._queries_objective_grad = tf.function(self._queries_objective_grad_fn, reduce_retracing=True)
        self._queries_segment = tf.function(self._queries_segment_fn, reduce_retracing=True)
        self._queries_step = tf.function(self._queries_step_fn, experimental_attributes={"_noinline": True})

    # E and dE/d(differentiable state) at the final state.
    def _objective_grad_fn(
        self, state: TrainState, x_val: tuple[tf.Tensor, ...], y_val: tf.Tensor
    ) -> tuple[tf.Tensor, TrainState]:
        r = self.recipe
        diff = r.differentiable(state)
        with tf.GradientTape() as tape:
            tape.watch(diff)
            value = r.objective(self._merge(state, diff), x_val, y_val)
        grads = tape.gradient(value, diff, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return value, tf.nest.map_structure(tf.convert_to_tensor, grads)

    def _merge(self, state: TrainState, diff: TrainState) -> TrainState:
        """`state` with its differentiable tensors replaced by those of `diff` (so the tape sees them)."""
        carried = iter(diff.non_trainable)
        nt = [
            next(carried) if carries else v
            for v, carries in zip(state.non_trainable, self.recipe.adjoint_non_trainable)
        ]
        return TrainState(list(diff.trainable), nt, list(diff.optimizer))

    def _reverse_step_fn(
        self, state: TrainState, adjoint: TrainState, batches: Batches, t: tf.Tensor, input_grad: bool = True
    ):
        """One VJP: (a_t, dE/d eps_B [b], dE/d x_B (per input [b, *shape]; () without input_grad), ids [b]) from
        a_{t+1} and state_t. Without input_grad, x_B is not watched, so the tape forms no product towards it."""
        r = self.recipe
        ids, x, y, eps = batches.batch(t)
        diff = r.differentiable(state)
        sources = [diff, x, eps] if input_grad else [diff, eps]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            new_state, _ = r.step(self._merge(state, diff), x, y, eps, batches.lr[t], t)
            new_diff = r.differentiable(new_state)
        grads = tape.gradient(
            new_diff, sources, output_gradients=adjoint, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        grads = tf.nest.map_structure(tf.convert_to_tensor, grads)
        return grads[0], grads[-1], tuple(grads[1]) if input_grad else (), ids

    def _reverse_segment_fn(
        self,
        states: list[tf.Tensor],
        adjoint: TrainState,
        batches: Batches,
        start: tf.Tensor,
        floor: tf.Tensor,
        influence: tf.Variable,
        input_grad: tuple[tf.Variable, ...],
    ) -> TrainState:
        """Carry the adjoint from the end of a segment back to max(start, floor), adding per-sample
        gradients into the accumulators (input_grad: one per model input, or () to leave x unwatched). states: the
        flattened states start..stop-1, one tensor [stop - start, *shape] per state tensor. Returns the adjoint
        there."""
        r = self.recipe
        n = tf.shape(states[0])[0]
        for i in tf.range(n - 1, tf.maximum(floor - start, 0) - 1, -1):
            state_i = r.unflatten([s[i] for s in states])
            adjoint, grad_eps, grad_x, ids = self._reverse_step(state_i, adjoint, batches, start + i, bool(input_grad))
            # Row-wise ResourceScatterAdd: several times faster here than scatter_nd_add.
            influence.scatter_add(tf.IndexedSlices(grad_eps, ids))
            for accumulator, grad in zip(input_grad, grad_x):
                accumulator.scatter_add(tf.IndexedSlices(grad, ids))
        return adjoint

    def run(
        self,
        checkpoints: Mapping[int, TrainState],
        stored_steps: Sequence[int],
        batches: Batches,
        x_val: tuple[tf.Tensor, ...],
        y_val: tf.Tensor,
        progress: Callable[[int], None] | None = None,
        horizon: int | None = None,
        every_state: EveryState | None = None,
        input_grad: bool = True,
    ) -> Hypergradients:
        """Sweep from the last stored step back to 0, or only over the last `horizon` steps (truncated
        unrolling: earlier steps contribute nothing). `checkpoints[t]` is the state after t steps;
        x_val, y_val: validation inputs (one tensor per model input) and targets, as tensors;
        every_state: the run's states kept from training (no replay), or None (replay each segment);
        input_grad: also dE/d x_i (False: x is never watched, Hypergradients.input_grad is ())."""
        r = self.recipe
        steps = sorted(stored_steps)
        floor = 0 if horizon is None else max(0, steps[-1] - horizon)
        value, adjoint = self._objective_grad(checkpoints[steps[-1]], x_val, y_val)
        raise_if_nonfinite(np.array([value.numpy()]), "validation objective", first_step=steps[-1])
        influence = tf.Variable(tf.zeros(batches.eps.shape, r.dtype))
        grads = tuple(tf.Variable(tf.zeros(x.shape, r.dtype)) for x in batches.x) if input_grad else ()

        def segment(states, adj, start):
            return self._reverse_segment(states, adj, batches, tf.constant(start), tf.constant(floor), influence, grads)

        replay_error = self._over_segments(
            checkpoints, steps, floor, batches, every_state, adjoint, segment, influence, progress
        )
        return Hypergradients(
            objective=float(value.numpy()),
            influence=influence.numpy().astype(np.float64) * batches.weight.numpy(),
            input_grad=tuple(g.numpy() for g in grads),
            replay_error=replay_error,
        )

    # ----- several objectives at once -----------------------------------------------------------
    def _vjps(self, tape: tf.GradientTape, target: Any, sources: Any, cotangents: Any) -> Any:
        """J^T c for every cotangent c along the leading [Q] axis of `cotangents` (a nest shaped like
        `target`, each leaf [Q, *leaf shape]): one vectorized backward pass through the (persistent) tape.
        Returns a nest like `sources`, each leaf [Q, *source shape]."""

        def one(cotangent: object) -> object:
            grads = tape.gradient(
                target, sources, output_gradients=cotangent, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return tf.nest.map_structure(tf.convert_to_tensor, grads)

        return tf.vectorized_map(one, cotangents)

    def _queries_objective_grad_fn(
        self, state: TrainState, x_val: tuple[tf.Tensor, ...], y_val: tf.Tensor, weights: tf.Tensor
    ) -> tuple[tf.Tensor, TrainState]:
        """E_q = sum_v weights[q, v] objective_v [Q] and dE_q/d(differentiable state) (leaves [Q, *shape])."""
        r = self.recipe
        diff = r.differentiable(state)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(diff)
            merged = self._merge(state, diff)
            outputs, _ = r.forward(merged.trainable, merged.non_trainable, x_val, training=False)
            per_sample = r.task.objective(outputs, y_val)
        return tf.linalg.matvec(weights, per_sample), self._vjps(tape, per_sample, diff, weights)

    def _queries_step_fn(
        self, state: TrainState, adjoints: TrainState, batches: Batches, t: tf.Tensor, input_grad: bool
    ):
        """Q VJPs of one step sharing its tape: (a_t [Q, ...], dE_q/d eps_B [Q, b], dE_q/d x_B (per input
        [Q, b, *shape], or () without input_grad), ids [b]) from a_{t+1} [Q, ...] and state_t."""
        r = self.recipe
        ids, x, y, eps = batches.batch(t)
        diff = r.differentiable(state)
        sources = (diff, eps, x) if input_grad else (diff, eps)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(sources)
            new_state, _ = r.step(self._merge(state, diff), x, y, eps, batches.lr[t], t)
            new_diff = r.differentiable(new_state)
        grads = self._vjps(tape, new_diff, sources, adjoints)
        return grads[0], grads[1], tuple(grads[2]) if input_grad else (), ids

    def _queries_segment_fn(
        self,
        states: list[tf.Tensor],
        adjoints: TrainState,
        batches: Batches,
        start: tf.Tensor,
        influence: tf.Variable,
        input_grad: tuple[tf.Variable, ...],
    ) -> TrainState:
        """As _reverse_segment_fn with Q adjoints; accumulators are sample-major: influence [N, Q],
        input_grad per input [N, Q, *shape] (row-wise scatter by sample id)."""
        r = self.recipe
        for i in tf.range(tf.shape(states[0])[0] - 1, -1, -1):
            state_i = r.unflatten([s[i] for s in states])
            adjoints, grad_eps, grad_x, ids = self._queries_step(
                state_i, adjoints, batches, start + i, bool(input_grad)
            )
            influence.scatter_add(tf.IndexedSlices(tf.transpose(grad_eps), ids))
            for accumulator, grad in zip(input_grad, grad_x):
                perm = [1, 0, *range(2, len(grad.shape))]
                accumulator.scatter_add(tf.IndexedSlices(tf.transpose(grad, perm), ids))
        return adjoints

    def run_queries(
        self,
        checkpoints: Mapping[int, TrainState],
        stored_steps: Sequence[int],
        batches: Batches,
        x_val: tuple[tf.Tensor, ...],
        y_val: tf.Tensor,
        weights: tf.Tensor,
        input_grad: bool = False,
        progress: Callable[[int], None] | None = None,
        every_state: EveryState | None = None,
    ) -> QueryHypergradients:
        """Hypergradients of Q objectives E_q = sum_v weights[q, v] objective(x_val[v], y_val[v]) in one
        sweep over the whole run. weights: [Q, V] in the training dtype (V = rows of x_val, y_val);
        input_grad: also dE_q/d x_i (memory Q x N x input size); every_state: as in `run`."""
        r = self.recipe
        steps = sorted(stored_steps)
        values, adjoints = self._queries_objective_grad(checkpoints[steps[-1]], x_val, y_val, weights)
        raise_if_nonfinite(values.numpy(), "validation objective", first_step=steps[-1])
        q, n = int(weights.shape[0]), int(batches.eps.shape[0])
        influence = tf.Variable(tf.zeros((n, q), r.dtype))
        grads = tuple(tf.Variable(tf.zeros((n, q, *x.shape[1:]), r.dtype)) for x in batches.x) if input_grad else ()

        def segment(states, adj, start):
            return self._queries_segment(states, adj, batches, tf.constant(start), influence, grads)

        replay_error = self._over_segments(
            checkpoints, steps, 0, batches, every_state, adjoints, segment, influence, progress
        )
        return QueryHypergradients(
            objective=values.numpy().astype(np.float64),
            influence=influence.numpy().T.astype(np.float64) * batches.weight.numpy(),
            input_grad=tuple(np.moveaxis(g.numpy(), 1, 0) for g in grads),
            replay_error=replay_error,
        )

    def _over_segments(
        self,
        checkpoints: Mapping[int, TrainState],
        steps: Sequence[int],
        floor: int,
        batches: Batches,
        every_state: EveryState | None,
        adjoint: object,
        segment: Callable[[list[tf.Tensor], object, int], object],
        influence: tf.Variable,
        progress: Callable[[int], None] | None,
    ) -> float:
        """Drive `segment(states start..stop-1, adjoint, start) -> adjoint` from the last segment back to
        the one holding step `floor`, the states replayed from checkpoints[start] or read from
        every_state (replayed when it gives None); raise DivergenceError at the first NaN/inf in the
        accumulated influence. Returns the replay error: max |state swept - stored checkpoint|, at stop for a
        replay, at start for states read."""
        r, replay_error = self.recipe, 0.0
        for start, stop in reversed(list(zip(steps[:-1], steps[1:]))):
            if stop <= floor:
                break
            kept = every_state(start, stop) if every_state is not None else None
            if kept is None:
                states, end_state, _ = r.record_steps(
                    checkpoints[start], batches, tf.constant(start), tf.constant(stop)
                )
                error = _max_abs_diff(r.flatten(end_state), r.flatten(checkpoints[stop]))
            else:
                states = [tf.convert_to_tensor(a) for a in kept]
                error = _max_abs_diff([s[0] for s in states], r.flatten(checkpoints[start]))
            adjoint = segment(states, adjoint, start)
            replay_error = max(replay_error, error)
            if not np.isfinite(float(tf.reduce_sum(influence))):
                raise DivergenceError(
                    f"reverse sweep diverged: NaN/inf in steps {start}..{stop - 1}; try a smaller optimizer.lr"
                )
            if progress is not None:
                progress(stop - start)
        return replay_error


def _max_abs_diff(a: list[tf.Tensor], b: list[tf.Tensor]) -> float:
    diffs = [
        float(tf.reduce_max(tf.abs(tf.cast(x, tf.float64) - tf.cast(y, tf.float64))))
        for x, y in zip(a, b)
        if x.shape.num_elements()
    ]
    return max(diffs, default=0.0)
