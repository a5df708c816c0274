"""The task seam: what the targets are and which per-sample losses apply (after kronfluence's Task).

A `Task` holds the training loss and the validation objective as per-sample functions
`(outputs [B, k], targets) -> [B]`, written so they can be differentiated twice (TensorFlow's fused
softmax cross-entropy cannot, so it is spelled out). Targets are class ids [B] (classification) or
floats [B] / [B, k] (regression). Losses follow Keras 3 exactly, including its rule that a softmax
output is scored from the logits that produced it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

PerSample = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

_PROB_EPSILON = 1e-7  # keras.backend.epsilon(): Keras clips probabilities that do not come from a softmax
HUBER_DELTA = 1.0  # keras.losses.Huber default


def keras_logits(outputs: tf.Tensor) -> tf.Tensor | None:
    """The logits Keras 3 scores a probability output with, or None (keras/src/backend/tensorflow/nn.py,
    `_get_logits`): those a softmax recorded on its output, or the input of a graph Softmax op."""
    recorded = getattr(outputs, "_keras_logits", None)
    if recorded is not None:
        return recorded
    if not tf.executing_eagerly() and hasattr(outputs, "op") and outputs.op.type == "Softmax":
        return outputs.op.inputs[0]
    return None


def _log_probabilities(outputs: tf.Tensor, from_logits: bool) -> tf.Tensor:
    """Scores whose log-softmax is the log-probability of each class."""
    if from_logits:
        return outputs
    logits = keras_logits(outputs)
    if logits is not None:
        return logits
    return tf.math.log(tf.clip_by_value(outputs, _PROB_EPSILON, 1 - _PROB_EPSILON))


def cross_entropy(from_logits: bool, label_smoothing: float = 0.0) -> PerSample:
    """-log softmax(outputs)[label], as keras.losses.sparse_categorical_crossentropy. With label_smoothing s > 0,
    keras.losses.CategoricalCrossentropy(label_smoothing=s) on one-hot labels: the target is (1 - s) one_hot + s / k
    over the k classes, so the loss is (1 - s)(-log p_label) + s * mean over classes of (-log p_c)."""

    def loss(outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        z = _log_probabilities(outputs, from_logits)
        return tf.reduce_logsumexp(z, axis=-1) - tf.gather(z, tf.cast(labels, tf.int32), axis=1, batch_dims=1)

    def smoothed(outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        z = _log_probabilities(outputs, from_logits)
        k = tf.shape(z)[-1]
        target = tf.one_hot(tf.cast(labels, tf.int32), k, dtype=z.dtype) * tf.constant(1 - label_smoothing, z.dtype)
        target = target + tf.constant(label_smoothing, z.dtype) / tf.cast(k, z.dtype)
        log_p = z - tf.reduce_logsumexp(z, axis=-1, keepdims=True)
        return -tf.reduce_sum(target * log_p, axis=-1)

    return smoothed if label_smoothing else loss


def one_hot_squared_error(outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean over classes of (output - one_hot(label))^2, as keras MSE on one-hot targets."""
    target = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(outputs)[-1], dtype=outputs.dtype)
    return tf.reduce_mean(tf.square(outputs - target), axis=-1)


def margin(outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """(best wrong score) - (true score); negative when the sample is classified correctly."""
    is_true = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(outputs)[-1], on_value=True, off_value=False)
    true_score = tf.reduce_sum(tf.where(is_true, outputs, tf.zeros_like(outputs)), axis=-1)
    best_wrong = tf.reduce_max(tf.where(is_true, tf.constant(outputs.dtype.min, outputs.dtype), outputs), axis=-1)
    return best_wrong - true_score


def _residual(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """outputs - targets [B, k]; targets [B] are read as [B, 1]."""
    return outputs - tf.reshape(tf.cast(targets, outputs.dtype), tf.shape(outputs))


def squared_error(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Mean over outputs of (output - target)^2 (keras.losses.mean_squared_error)."""
    return tf.reduce_mean(tf.square(_residual(outputs, targets)), axis=-1)


def absolute_error(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Mean over outputs of |output - target| (keras.losses.mean_absolute_error)."""
    return tf.reduce_mean(tf.abs(_residual(outputs, targets)), axis=-1)


def huber(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """keras.losses.huber with delta = 1: quadratic below delta, linear above."""
    error = tf.abs(_residual(outputs, targets))
    delta = tf.constant(HUBER_DELTA, outputs.dtype)
    return tf.reduce_mean(
        tf.where(error <= delta, 0.5 * tf.square(error), delta * error - 0.5 * tf.square(delta)), axis=-1
    )


BUILTIN: dict[str, dict[str, Callable[[bool], PerSample]]] = {
    "classification": {
        "cross_entropy": cross_entropy,
        "mse": lambda from_logits: one_hot_squared_error,
        "margin": lambda from_logits: margin,
    },
    "regression": {
        "mse": lambda from_logits: squared_error,
        "mae": lambda from_logits: absolute_error,
        "huber": lambda from_logits: huber,
    },
}


def resolve(kind: str, name: str, from_logits: bool) -> PerSample:
    """A built-in loss of task `kind`, or a user function given as 'module:function'."""
    if name in BUILTIN[kind]:
        return BUILTIN[kind][name](from_logits)
    module_name, _, attr = name.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class Task:
    """kind: classification | regression; loss: the training loss; objective: the per-sample validation
    objective whose mean is E. Both map (outputs [B, k], targets) -> [B]."""

    kind: str
    loss: PerSample
    objective: PerSample
    from_logits: bool = True  # False: the model ends in a softmax (its logits are recovered as Keras does)

    @property
    def target_dtype(self) -> tf.DType | None:
        """int64 for class ids; None: targets take the model's float dtype."""
        return tf.int64 if self.kind == "classification" else None

    def logits(self, outputs: tf.Tensor) -> tf.Tensor:
        """[B, k] class scores whose softmax is the model's class probabilities (classification)."""
        return _log_probabilities(outputs, self.from_logits)

    def accuracy(self, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        """Fraction of argmax(outputs) == label (classification); NaN for regression."""
        if self.kind != "classification":
            return tf.constant(float("nan"), tf.float64)
        correct = tf.equal(tf.argmax(outputs, axis=-1, output_type=tf.int64), tf.cast(targets, tf.int64))
        return tf.reduce_mean(tf.cast(correct, tf.float64))


def make_task(kind: str, loss: str, objective: str, from_logits: bool = True, label_smoothing: float = 0.0) -> Task:
    """The task's losses; label_smoothing smooths the training loss only (it must then be cross_entropy)."""
    if label_smoothing:
        if kind != "classification" or loss != "cross_entropy":
            raise ValueError(f"label smoothing needs the cross_entropy loss of classification (got {kind} {loss})")
        training: PerSample = cross_entropy(from_logits, label_smoothing)
    else:
        training = resolve(kind, loss, from_logits)
    return Task(kind, training, resolve(kind, objective, from_logits), from_logits)
