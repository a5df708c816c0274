"""Per-sample training losses and validation objectives, written so they can be differentiated twice.

(TensorFlow's fused sparse softmax cross-entropy refuses second derivatives, so it is spelled out.)
Shapes: outputs [B, C] (logits, or probabilities when from_logits=False), labels [B] int.
"""

from __future__ import annotations

import tensorflow as tf

_PROB_EPSILON = 1e-7  # keras.backend.epsilon(), used by Keras to clip probabilities


def _log_scores(outputs: tf.Tensor, from_logits: bool) -> tf.Tensor:
    if from_logits:
        return outputs
    return tf.math.log(tf.clip_by_value(outputs, _PROB_EPSILON, 1 - _PROB_EPSILON))


def cross_entropy(outputs: tf.Tensor, labels: tf.Tensor, from_logits: bool = True) -> tf.Tensor:
    """[B]: -log softmax(outputs)[label], as keras.losses.sparse_categorical_crossentropy."""
    z = _log_scores(outputs, from_logits)
    return tf.reduce_logsumexp(z, axis=-1) - tf.gather(z, tf.cast(labels, tf.int32), axis=1, batch_dims=1)


def squared_error(outputs: tf.Tensor, labels: tf.Tensor, from_logits: bool = True) -> tf.Tensor:
    """[B]: mean over classes of (output - one_hot(label))^2, as keras MSE on one-hot targets."""
    target = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(outputs)[-1], dtype=outputs.dtype)
    return tf.reduce_mean(tf.square(outputs - target), axis=-1)


def margin(outputs: tf.Tensor, labels: tf.Tensor, from_logits: bool = True) -> tf.Tensor:
    """[B]: (best wrong score) - (true score); negative when the sample is classified correctly."""
    num_classes = tf.shape(outputs)[-1]
    is_true = tf.one_hot(tf.cast(labels, tf.int32), num_classes, on_value=True, off_value=False)
    true_score = tf.reduce_sum(tf.where(is_true, outputs, tf.zeros_like(outputs)), axis=-1)
    lowest = tf.constant(outputs.dtype.min, outputs.dtype)
    best_wrong = tf.reduce_max(tf.where(is_true, lowest, outputs), axis=-1)
    return best_wrong - true_score


PER_SAMPLE = {"cross_entropy": cross_entropy, "mse": squared_error, "margin": margin}


def per_sample(kind: str, outputs: tf.Tensor, labels: tf.Tensor, from_logits: bool) -> tf.Tensor:
    """[B] per-sample value of `kind` (cross_entropy | mse | margin)."""
    return PER_SAMPLE[kind](outputs, labels, from_logits)
