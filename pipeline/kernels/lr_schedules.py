"""Learning-rate schedules as Keras LearningRateSchedule objects, and the per-step learning rates they give.

A Keras optimizer evaluates `schedule(optimizer.iterations)` at every step, iterations counting from 0, and uses
the value (float32 for every schedule here) for that step's update and weight decay. `learning_rates` evaluates
the schedule object itself at steps 0..T-1, compiled as model.fit runs it, so its array holds exactly the values
model.fit uses; pass it as the lr of `schedule.make_schedule` and give the same object to the Keras optimizer to
train identically. (Evaluated eagerly, as `optimizer.learning_rate` reports it or under run_eagerly, a value can
differ in its last float32 bit: compiled, Grappler folds constants, e.g. CosineDecay's (1 - alpha) * 0.5.)

Named schedules of `make_schedule_object(name, lr, n_steps, **params)`, with T = n_steps and t the step:
- constant: lr.
- cosine (CosineDecay, decay_steps=T; alpha=0): lr (alpha + (1 - alpha)(1 + cos(pi t / T)) / 2).
- warmup_cosine (CosineDecay with warmup_target=lr; warmup_steps required, alpha=0, initial_learning_rate=0):
  linear from initial_learning_rate to lr over warmup_steps, then cosine from lr over T - warmup_steps steps.
- piecewise (PiecewiseConstantDecay; boundaries, values required): values[0] for t <= boundaries[0],
  values[i] for boundaries[i-1] < t <= boundaries[i], values[-1] after the last boundary; lr is not used.
- exponential (ExponentialDecay; decay_steps, decay_rate required, staircase=False):
  lr decay_rate^(t / decay_steps), the exponent floored with staircase.
- one_cycle (OneCycle below; pct_start=0.3, div_factor=25, final_div_factor=1e4).
- "pkg.module:Class": any LearningRateSchedule subclass, built as Class(**params) (lr and T are not passed).
Imports Keras: call it inside workers.
"""

from __future__ import annotations

import importlib
import itertools
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras.optimizers.schedules import LearningRateSchedule

from pipeline.kernels.schedule import LR_SCHEDULES


class Constant(LearningRateSchedule):
    """The same learning rate at every step, in float32 like Keras' built-in schedules."""

    def __init__(self, learning_rate: float):
        self.learning_rate = learning_rate

    def __call__(self, step: Any) -> Any:
        return ops.convert_to_tensor(self.learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}


class OneCycle(LearningRateSchedule):
    """PyTorch's OneCycleLR (anneal_strategy="cos", three_phase=False) as a Keras schedule, in float32.

    With peak = max_learning_rate, start = peak / div_factor, end = start / final_div_factor,
    u = pct_start * total_steps - 1 (the step at the peak) and T = total_steps - 1:
        t <= u:  lr = peak + (start - peak)(1 + cos(pi t / u)) / 2               (start -> peak)
        t >  u:  lr = end + (peak - end)(1 + cos(pi (t - u) / (T - u))) / 2      (peak -> end)
    Steps after T keep lr(T) = end (PyTorch raises there). Needs 1 < pct_start * total_steps < total_steps.
    """

    def __init__(
        self,
        max_learning_rate: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ):
        _check(total_steps, "total_steps", _is_int(total_steps) and total_steps >= 2, "an integer >= 2")
        peak_step = pct_start * total_steps - 1
        bounds = f"such that 1 < pct_start * {total_steps} < {total_steps}"
        _check(pct_start, "pct_start", 0 < peak_step < total_steps - 1, bounds)
        _check(div_factor, "div_factor", div_factor > 0, "positive")
        _check(final_div_factor, "final_div_factor", final_div_factor > 0, "positive")
        self.max_learning_rate = max_learning_rate
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor

    def __call__(self, step: Any) -> Any:
        peak = ops.convert_to_tensor(self.max_learning_rate)
        dtype = peak.dtype
        last = ops.cast(self.total_steps - 1, dtype)
        up = ops.cast(self.pct_start * self.total_steps - 1, dtype)
        t = ops.minimum(ops.cast(step, dtype), last)
        start = peak / ops.cast(self.div_factor, dtype)
        end = start / ops.cast(self.final_div_factor, dtype)
        pi = ops.array(math.pi, dtype=dtype)
        rising = peak + (start - peak) * (1.0 + ops.cos(pi * ops.minimum(t / up, 1.0))) / 2.0
        falling = end + (peak - end) * (1.0 + ops.cos(pi * ops.maximum((t - up) / (last - up), 0.0))) / 2.0
        return ops.where(t <= up, rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
        }


def _check(value: Any, name: str, ok: bool, must: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}: must be {must}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return numeric and math.isfinite(value)


def make_schedule_object(name: str, lr: float, n_steps: int, **params: Any) -> LearningRateSchedule:
    """The schedule `name` (one of LR_SCHEDULES, or "pkg.module:Class") for a run of n_steps optimizer steps with
    base / peak learning rate lr; ValueError naming the parameter for a bad or missing value."""
    _check(lr, "lr", _is_number(lr) and lr > 0, "a positive number")
    _check(n_steps, "n_steps", _is_int(n_steps) and n_steps >= 1, "a positive integer")
    if ":" in name:
        return _imported(name, params)
    if name not in LR_SCHEDULES:
        raise ValueError(f"schedule {name!r}: unknown (known: {', '.join(LR_SCHEDULES)}, or 'package.module:Class')")
    required, optional = LR_SCHEDULES[name]
    for key in params:
        if key not in required and key not in optional:
            known = ", ".join([*required, *optional]) or "none"
            raise ValueError(f"schedule {name}: unknown parameter {key!r} (known: {known})")
    for key in required:
        if key not in params:
            raise ValueError(f"schedule {name}: parameter {key!r} is required")
    p = {**optional, **params}
    lr, n_steps = float(lr), int(n_steps)
    if name == "constant":
        return Constant(lr)
    if name == "cosine":
        _check(p["alpha"], "alpha", _is_number(p["alpha"]) and 0 <= p["alpha"] <= 1, "in [0, 1]")
        return keras.optimizers.schedules.CosineDecay(lr, n_steps, alpha=float(p["alpha"]))
    if name == "warmup_cosine":
        warmup = p["warmup_steps"]
        _check(warmup, "warmup_steps", _is_int(warmup) and warmup >= 0, "a non-negative integer")
        _check(warmup, "warmup_steps", warmup < n_steps, f"less than the run's {n_steps} steps")
        _check(p["alpha"], "alpha", _is_number(p["alpha"]) and 0 <= p["alpha"] <= 1, "in [0, 1]")
        start = p["initial_learning_rate"]
        _check(start, "initial_learning_rate", _is_number(start) and start >= 0, "a non-negative number")
        return keras.optimizers.schedules.CosineDecay(
            float(start), n_steps - warmup, alpha=float(p["alpha"]), warmup_target=lr, warmup_steps=int(warmup)
        )
    if name == "piecewise":
        boundaries, values = list(p["boundaries"]), list(p["values"])
        steps_ok = len(boundaries) >= 1 and all(_is_int(b) and b >= 0 for b in boundaries)
        _check(boundaries, "boundaries", steps_ok, "a non-empty list of non-negative integers")
        _check(boundaries, "boundaries", all(a < b for a, b in itertools.pairwise(boundaries)), "increasing")
        count = f"{len(boundaries) + 1} learning rates, one more than boundaries"
        _check(values, "values", len(values) == len(boundaries) + 1, count)
        _check(values, "values", all(_is_number(v) and v >= 0 for v in values), "non-negative numbers")
        schedules = keras.optimizers.schedules
        return schedules.PiecewiseConstantDecay([int(b) for b in boundaries], [float(v) for v in values])
    if name == "exponential":
        _check(p["decay_steps"], "decay_steps", _is_number(p["decay_steps"]) and p["decay_steps"] > 0, "positive")
        _check(p["decay_rate"], "decay_rate", _is_number(p["decay_rate"]) and p["decay_rate"] > 0, "positive")
        _check(p["staircase"], "staircase", isinstance(p["staircase"], bool), "true or false")
        decay_steps, decay_rate = float(p["decay_steps"]), float(p["decay_rate"])
        return keras.optimizers.schedules.ExponentialDecay(lr, decay_steps, decay_rate, staircase=p["staircase"])
    for key in ("pct_start", "div_factor", "final_div_factor"):
        _check(p[key], key, _is_number(p[key]), "a number")
    return OneCycle(lr, n_steps, float(p["pct_start"]), float(p["div_factor"]), float(p["final_div_factor"]))


def _imported(path: str, params: dict[str, Any]) -> LearningRateSchedule:
    """Class(**params) for "pkg.module:Class", which must subclass keras' LearningRateSchedule."""
    module_name, _, attribute = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"schedule {path}: cannot be imported ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, LearningRateSchedule)):
        raise ValueError(f"schedule {path}: not a keras.optimizers.schedules.LearningRateSchedule subclass")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"schedule {path}: {exc}") from None


def learning_rates(schedule: LearningRateSchedule, n_steps: int) -> np.ndarray:
    """[n_steps] float64: schedule(t) at t = 0..n_steps-1, the learning rate a Keras optimizer uses at step t.

    Each step is evaluated on its own int64 scalar, as Keras evaluates schedule(iterations), in one compiled
    tf.map_fn: bit for bit the values compiled model.fit uses (float32 for the schedules here). Under
    tf.config.run_functions_eagerly it runs eagerly and gives the eager values, which eager Keras uses."""
    _check(n_steps, "n_steps", _is_int(n_steps) and n_steps >= 0, "a non-negative integer")
    if n_steps == 0:
        return np.zeros(0, dtype=np.float64)
    dtype = tf.convert_to_tensor(schedule(tf.constant(0, tf.int64))).dtype
    evaluate = tf.function(lambda steps: tf.map_fn(schedule, steps, fn_output_signature=dtype))
    return evaluate(tf.range(int(n_steps), dtype=tf.int64)).numpy().astype(np.float64)
