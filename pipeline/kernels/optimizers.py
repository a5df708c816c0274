"""Functional optimizers with the exact Keras 3 update rules (optax style: init + update), and their registry.

Each kernel repeats its Keras 3.15 class operation for operation, so that float32 and float64 runs match
`model.fit` to float rounding. Keras turns a Python hyperparameter into a tensor in one of two ways, and each
kernel does what its Keras class does:
- `ops.cast(h, dtype)` goes through float32 (`_keras_hyper`): the learning rate, SGD's momentum, the betas of
  Adam, Nadam and Lion, the weight decay, Adagrad's initial accumulator;
- `ops.multiply(h, x)`, `x + h`, ... convert h straight to the variable dtype: the epsilons, RMSprop's rho and
  momentum, the clipping thresholds, Nadam's u_product factors. `1 - beta` is Python double where Keras
  computes it in Python (Adam) and a tensor op on the float32 beta where Keras does that (Nadam, Lion).

As in Keras' base optimizer, a step first clips the gradients (`clipnorm` | `global_clipnorm` | `clipvalue`),
then applies the decoupled weight decay w <- w - w * weight_decay * lr to every variable (Keras excludes none
unless `exclude_from_weight_decay` is called), then the optimizer's own update, all with the step's lr.

The learning rate is used as its float32 value, which is what Keras uses under its default floatx float32: a
float lr lives in a float32 variable and every built-in LearningRateSchedule computes in float32.

TensorFlow and Keras are imported lazily: configuration checks can read `OPTIMIZERS` without them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

Tensors = list["tf.Tensor"]
Hyper = float | bool
UpdateFn = Callable[[Tensors, Tensors, Tensors, "tf.Tensor", "tf.Tensor"], tuple[Tensors, Tensors]]


class FunctionalOptimizer(NamedTuple):
    """`slots`: names of the per-variable state buffers, each shaped and typed like its weight (state layout:
    slot-major, then variable order); `initial`: each slot's initial value (empty: all zeros).

    `update(params, state, grads, lr, step) -> (params, state)`; `lr` is a scalar (used as its float32 value),
    `step` the 0-based global step (Keras' `optimizer.iterations` during the step).
    """

    name: str
    slots: tuple[str, ...]
    update: UpdateFn
    initial: tuple[float, ...] = ()

    def init(self, params: Sequence[tf.Tensor]) -> Tensors:
        """The initial state; a nonzero initial value goes through float32 as in Keras' Constant initializer."""
        import tensorflow as tf

        values = self.initial or (0.0,) * len(self.slots)
        return [
            tf.zeros_like(p) if v == 0 else _keras_hyper(v, p.dtype) * tf.ones_like(p) for v in values for p in params
        ]


def _keras_hyper(value: float | tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """A hyperparameter as Keras' `ops.cast(value, dtype)` sees it: a float32 value cast to `dtype`."""
    import tensorflow as tf

    return tf.cast(tf.cast(value, tf.float32), dtype)


def _safe_sqrt(x: tf.Tensor) -> tf.Tensor:
    """sqrt(x), bit for bit, with derivative 0 instead of inf where x = 0 (there an Adam-type update's
    numerator is 0 too: a second moment is 0 only while every gradient so far was 0)."""
    import tensorflow as tf

    positive = x > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))


# ----- kernels: the optimizers' own updates, as in their Keras `update_step` ---------------------------------


def sgd() -> FunctionalOptimizer:
    """keras.optimizers.SGD without momentum: w <- w - lr * g."""

    def update(params, state, grads, lr, step):
        return [p - g * _keras_hyper(lr, p.dtype) for p, g in zip(params, grads)], []

    return FunctionalOptimizer("sgd", (), update)


def momentum(momentum: float, nesterov: bool = False) -> FunctionalOptimizer:
    """keras.optimizers.SGD with momentum: m <- momentum * m - lr * g;  w <- w + m
    (nesterov: w <- w + momentum * m - lr * g with the new m)."""
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum={momentum}: must be in [0, 1]")

    def update(params, state, grads, lr, step):
        new_params, new_state = [], []
        for p, m, g in zip(params, state, grads):
            mu, rate = _keras_hyper(momentum, p.dtype), _keras_hyper(lr, p.dtype)
            m = m * mu - g * rate
            new_params.append(p + (m * mu - g * rate) if nesterov else p + m)
            new_state.append(m)
        return new_params, new_state

    return FunctionalOptimizer("momentum", ("momentum",), update)


def _sgd(**hyper: Any) -> FunctionalOptimizer:
    """SGD as Keras builds it (hyper: momentum, nesterov): a momentum buffer only when momentum != 0."""
    return momentum(**hyper) if hyper["momentum"] != 0 else sgd()


def adam(
    beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False
) -> FunctionalOptimizer:
    """keras.optimizers.Adam (t = step + 1):
        m <- m + (g - m)(1 - beta_1);  v <- v + (g^2 - v)(1 - beta_2);  v_hat <- max(v_hat, v) if amsgrad
        w <- w - m * lr sqrt(1 - beta_2^t) / (1 - beta_1^t) / (sqrt(v or v_hat) + epsilon)
    (sqrt as _safe_sqrt: Keras' values bit for bit, and a finite derivative where v = 0)."""
    import tensorflow as tf

    def update(params, state, grads, lr, step):
        n = len(params)
        ms, vs, v_hats = state[:n], state[n : 2 * n], state[2 * n :] if amsgrad else [None] * n
        new_params, new_m, new_v, new_v_hat = [], [], [], []
        for p, m, v, v_hat, g in zip(params, ms, vs, v_hats, grads):
            dtype = p.dtype
            local_step = tf.cast(step + 1, dtype)
            beta_1_power = tf.pow(_keras_hyper(beta_1, dtype), local_step)
            beta_2_power = tf.pow(_keras_hyper(beta_2, dtype), local_step)
            alpha = _keras_hyper(lr, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
            m = m + (g - m) * (1 - beta_1)
            v = v + (tf.square(g) - v) * (1 - beta_2)
            new_m.append(m)
            new_v.append(v)
            if amsgrad:
                v = v_hat = tf.maximum(v_hat, v)
                new_v_hat.append(v_hat)
            new_params.append(p - (m * alpha) / (_safe_sqrt(v) + epsilon))
        return new_params, new_m + new_v + new_v_hat

    return FunctionalOptimizer("adam", ("m", "v", "v_hat") if amsgrad else ("m", "v"), update)


def rmsprop(
    rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7, centered: bool = False
) -> FunctionalOptimizer:
    """keras.optimizers.RMSprop:
        v <- rho v + (1 - rho) g^2;  centered: a <- rho a + (1 - rho) g, d = v - a^2 + epsilon, else d = v + epsilon
        increment = lr g / sqrt(d);  momentum > 0: b <- momentum b + increment, w <- w - b;  else w <- w - increment.
    Slots: velocity, then momentum (momentum > 0), then average_gradient (centered), as Keras orders them."""
    import tensorflow as tf

    slots = ("velocity",) + (("momentum",) if momentum > 0 else ()) + (("average_gradient",) if centered else ())

    def update(params, state, grads, lr, step):
        n = len(params)
        buffers = {name: state[i * n : (i + 1) * n] for i, name in enumerate(slots)}
        new: dict[str, list] = {name: [] for name in slots}
        new_params = []
        for i, (p, g) in enumerate(zip(params, grads)):
            v = rho * buffers["velocity"][i] + (1 - rho) * tf.square(g)
            new["velocity"].append(v)
            if centered:
                a = rho * buffers["average_gradient"][i] + (1 - rho) * g
                new["average_gradient"].append(a)
                denominator = v - tf.square(a) + epsilon
            else:
                denominator = v + epsilon
            increment = _keras_hyper(lr, p.dtype) * g / tf.sqrt(denominator)
            if momentum > 0:
                b = momentum * buffers["momentum"][i] + increment
                new["momentum"].append(b)
                new_params.append(p - b)
            else:
                new_params.append(p - increment)
        return new_params, [t for name in slots for t in new[name]]

    return FunctionalOptimizer("rmsprop", slots, update)


def adagrad(initial_accumulator_value: float = 0.1, epsilon: float = 1e-7) -> FunctionalOptimizer:
    """keras.optimizers.Adagrad: s <- s + g^2 (s starts at initial_accumulator_value);
    w <- w - lr g / sqrt(s + epsilon)."""
    import tensorflow as tf

    def update(params, state, grads, lr, step):
        accumulators = [s + tf.square(g) for s, g in zip(state, grads)]
        new_params = [
            p - _keras_hyper(lr, p.dtype) * g / tf.sqrt(s + epsilon) for p, s, g in zip(params, accumulators, grads)
        ]
        return new_params, accumulators

    return FunctionalOptimizer("adagrad", ("accumulator",), update, (initial_accumulator_value,))


def nadam(beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> FunctionalOptimizer:
    """keras.optimizers.Nadam (t = step + 1, mu_t = beta_1 (1 - 0.5 * 0.96^t)):
        U <- U mu_t  (Keras' u_product, product of mu_1..mu_t: a slot "u_product" starting at 1, every element equal;
        Keras computes it in double from the Python constants, mu_t below from their float32 values)
        m <- m + (g - m)(1 - beta_1);  v <- v + (g^2 - v)(1 - beta_2)
        m_hat = mu_{t+1} m / (1 - U mu_{t+1}) + (1 - mu_t) g / (1 - U);  v_hat = v / (1 - beta_2^t)
        w <- w - m_hat lr / (sqrt(v_hat) + epsilon).
    The slot is exact where a closed form of the step is not (Keras rounds the running product every step)."""
    import tensorflow as tf

    def update(params, state, grads, lr, step):
        n = len(params)
        new_params, new_m, new_v, new_u = [], [], [], []
        for p, m, v, u, g in zip(params, state[:n], state[n : 2 * n], state[2 * n :], grads):
            dtype = p.dtype
            local_step, next_step = tf.cast(step + 1, dtype), tf.cast(step + 2, dtype)
            u = u * beta_1 * (1.0 - 0.5 * tf.pow(tf.constant(0.96, dtype), local_step))  # _backend_update_step
            decay, b1, b2 = _keras_hyper(0.96, dtype), _keras_hyper(beta_1, dtype), _keras_hyper(beta_2, dtype)
            u_t = b1 * (1.0 - 0.5 * tf.pow(decay, local_step))
            u_t_1 = b1 * (1.0 - 0.5 * tf.pow(decay, next_step))
            u_product_t_1 = u * u_t_1
            beta_2_power = tf.pow(b2, local_step)
            m = m + (g - m) * (1 - b1)
            v = v + (tf.square(g) - v) * (1 - b2)
            m_hat = (u_t_1 * m) / (1 - u_product_t_1) + ((1 - u_t) * g) / (1 - u)
            v_hat = v / (1 - beta_2_power)
            new_params.append(p - (m_hat * _keras_hyper(lr, dtype)) / (_safe_sqrt(v_hat) + epsilon))
            new_m.append(m)
            new_v.append(v)
            new_u.append(u)
        return new_params, new_m + new_v + new_u

    return FunctionalOptimizer("nadam", ("m", "v", "u_product"), update, (0.0, 0.0, 1.0))


def lion(beta_1: float = 0.9, beta_2: float = 0.99) -> FunctionalOptimizer:
    """keras.optimizers.Lion: w <- w - lr sign(beta_1 m + (1 - beta_1) g);  m <- beta_2 m + (1 - beta_2) g.

    The derivative of sign is 0 wherever it exists (everywhere but 0): the weights Lion trains are locally
    constant in the gradients, hence in the sample weights and inputs, and the hypergradients of a run trained
    with Lion are exactly 0. That is the exact derivative, not a failure of the sweep."""
    import tensorflow as tf

    if not 0 < beta_1 <= 1:
        raise ValueError(f"beta_1={beta_1}: must be in (0, 1] (otherwise Lion degenerates to SignSGD)")

    def update(params, state, grads, lr, step):
        new_params, new_m = [], []
        for p, m, g in zip(params, state, grads):
            b1, b2 = _keras_hyper(beta_1, p.dtype), _keras_hyper(beta_2, p.dtype)
            new_params.append(p - _keras_hyper(lr, p.dtype) * tf.sign(m * b1 + g * (1.0 - b1)))
            new_m.append(m * b2 + g * (1.0 - b2))
        return new_params, new_m

    return FunctionalOptimizer("lion", ("momentum",), update)


# ----- clipping and weight decay, as Keras' base optimizer applies them --------------------------------------


def _clip_by_global_norm(grads: Tensors, clip_norm: float) -> Tensors:
    """Keras' clip_by_global_norm, same values: g * clip_norm * min(1 / ||G||, 1 / clip_norm) (NaN if ||G|| is
    not finite). Where ||G|| = 0 (Keras: 1/0 = inf, a NaN derivative) the derivative is the identity's."""
    import tensorflow as tf

    squared = tf.reduce_sum(tf.stack([tf.reduce_sum(tf.square(g)) for g in grads]))
    positive = squared > 0
    root = tf.sqrt(tf.where(positive, squared, tf.ones_like(squared)))
    norm = tf.where(positive, root, squared)
    inverse = tf.where(positive, 1.0 / root, tf.constant(math.inf, squared.dtype))
    scale = clip_norm * tf.minimum(inverse, 1.0 / clip_norm) + (norm - norm)
    return [g * scale for g in grads]


def clip_gradients(
    grads: Tensors, clipnorm: float | None = None, clipvalue: float | None = None, global_clipnorm: float | None = None
) -> Tensors:
    """Keras' `_clip_gradients`: clipnorm (each gradient to L2 norm <= clipnorm, tf.clip_by_norm), else
    global_clipnorm (all gradients together), else clipvalue (each element into [-clipvalue, clipvalue]);
    a threshold that is None or <= 0 does nothing, as in Keras.

    Derivatives: clipping by norm is smooth except where a norm equals its threshold (a kink: TensorFlow takes
    the clipped side's derivative there) and is the identity around a zero norm (derivative 1, not NaN);
    clipvalue has derivative 1 inside the interval and 0 outside."""
    import tensorflow as tf

    if clipnorm and clipnorm > 0:
        return [tf.clip_by_norm(g, clipnorm) for g in grads]
    if global_clipnorm and global_clipnorm > 0:
        return _clip_by_global_norm(grads, global_clipnorm)
    if clipvalue and clipvalue > 0:
        return [tf.clip_by_value(g, -clipvalue, clipvalue) for g in grads]
    return grads


def with_clipping_and_decay(
    optimizer: FunctionalOptimizer,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> FunctionalOptimizer:
    """`optimizer` preceded, at every step, by clip_gradients and the decoupled weight decay
    w <- w - (w * weight_decay) * lr (weight_decay None: none), in Keras' order. At most one clipping option."""
    clipping = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
    for key, value in {"weight_decay": weight_decay, **clipping}.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if value is not None and not number:
            raise ValueError(f"{key}={value!r}: must be a number")
    given = [k for k, v in clipping.items() if v is not None]
    if len(given) > 1:
        raise ValueError(f"only one of clipnorm, clipvalue and global_clipnorm can be set; got {', '.join(given)}")
    if weight_decay is None and not given:
        return optimizer
    inner = optimizer.update

    def update(params, state, grads, lr, step):
        grads = clip_gradients(grads, clipnorm, clipvalue, global_clipnorm)
        if weight_decay is not None:
            params = [p - p * _keras_hyper(weight_decay, p.dtype) * _keras_hyper(lr, p.dtype) for p in params]
        return inner(params, state, grads, lr, step)

    return optimizer._replace(update=update)


# ----- the registry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its Keras class and hyperparameters, and its functional kernel.

    hyper: Keras' hyperparameter names with Keras' defaults (a bool default: a bool setting; else a number);
    kernel(**hyper): the update without clipping or weight decay; weight_decay: the default decoupled weight
    decay (AdamW's 0.004; None: no decay unless asked for).
    """

    name: str
    keras_class: str  # the class in keras.optimizers
    hyper: Mapping[str, Hyper]
    kernel: Callable[..., FunctionalOptimizer]
    description: str
    weight_decay: float | None = None

    def hyperparameters(self, **hyper: Hyper) -> dict[str, Hyper]:
        """The defaults overridden by `hyper`, numbers as floats; ValueError naming an unknown or mistyped one."""
        for key, value in hyper.items():
            if key not in self.hyper:
                known = ", ".join(self.hyper) or "none"
                raise ValueError(f"optimizer {self.name}: unknown hyperparameter {key!r} (known: {known})")
            flag = isinstance(self.hyper[key], bool)
            if flag != isinstance(value, bool) or not isinstance(value, (bool, int, float)):
                kind = "true or false" if flag else "a number"
                raise ValueError(f"optimizer {self.name}: {key}={value!r} must be {kind}")
            if not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"optimizer {self.name}: {key}={value!r} must be finite")
        merged = {**self.hyper, **hyper}
        return {k: v if isinstance(v, bool) else float(v) for k, v in merged.items()}

    def functional(
        self,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        **hyper: Hyper,
    ) -> FunctionalOptimizer:
        """The functional optimizer: kernel(**hyper) with clipping and weight decay (None: the spec's default)."""
        kernel = self.kernel(**self.hyperparameters(**hyper))
        decay = self.weight_decay if weight_decay is None else weight_decay
        return with_clipping_and_decay(kernel, decay, clipnorm, clipvalue, global_clipnorm)

    def keras(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        **hyper: Hyper,
    ) -> keras.optimizers.Optimizer:
        """The Keras counterpart of `functional(...)`. A float learning_rate is passed as its float32 value (what
        the functional optimizers use, and Keras too under floatx float32); a LearningRateSchedule as it is."""
        import keras
        import numpy as np

        if isinstance(learning_rate, (int, float)):
            learning_rate = float(np.float32(learning_rate))
        decay = self.weight_decay if weight_decay is None else weight_decay
        cls = getattr(keras.optimizers, self.keras_class)
        clipping = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        return cls(learning_rate=learning_rate, weight_decay=decay, **clipping, **self.hyperparameters(**hyper))


_ADAM_HYPER = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False}

OPTIMIZERS: dict[str, OptimizerSpec] = {
    s.name: s
    for s in (
        OptimizerSpec("sgd", "SGD", {"momentum": 0.0, "nesterov": False}, _sgd, "SGD, with momentum when momentum > 0"),
        OptimizerSpec("momentum", "SGD", {"momentum": 0.9, "nesterov": False}, _sgd, "SGD with momentum (default 0.9)"),
        OptimizerSpec("adam", "Adam", _ADAM_HYPER, adam, "Adam (AMSGrad with amsgrad=true)"),
        OptimizerSpec("adamw", "AdamW", _ADAM_HYPER, adam, "Adam with decoupled weight decay (default 0.004)", 0.004),
        OptimizerSpec(
            "rmsprop", "RMSprop", {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False}, rmsprop, "RMSprop"
        ),
        OptimizerSpec("adagrad", "Adagrad", {"initial_accumulator_value": 0.1, "epsilon": 1e-7}, adagrad, "Adagrad"),
        OptimizerSpec("nadam", "Nadam", {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}, nadam, "Nesterov Adam"),
        OptimizerSpec("lion", "Lion", {"beta_1": 0.9, "beta_2": 0.99}, lion, "Lion (sign updates: hypergradients 0)"),
    )
}


def build(
    name: str,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    **hyper: Hyper,
) -> FunctionalOptimizer:
    """The functional optimizer `name` (a key of OPTIMIZERS) with hyperparameters `hyper` (the rest at Keras'
    defaults), decoupled weight decay and at most one clipping option, as in Keras. ValueError for unknown names."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r}: unknown (known: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name].functional(weight_decay, clipnorm, clipvalue, global_clipnorm, **hyper)
