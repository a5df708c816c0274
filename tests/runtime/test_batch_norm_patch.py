"""The Keras BatchNorm moments patch (kernels.training.use_twice_differentiable_batch_norm): applied once, refused
loudly when the Keras internal it replaces changes, and right: second derivatives of the variance through Keras'
own moments() match finite differences, which Keras' original (variance around stop_gradient(mean)) does not."""

from __future__ import annotations

import hashlib
import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import nn as keras_tf_nn

from pipeline.kernels import training

# sha256 of inspect.getsource(keras.src.backend.tensorflow.nn._compute_moments) in the Keras the patch was written for
ORIGINAL_SOURCE_SHA256 = "f6147c543d5578427692277349d232fe19cb1f1494e978d6abe00c058af73e48"


def test_keras_is_the_version_the_patch_was_written_for_and_its_moments_helper_is_unchanged():
    """Fails when Keras is upgraded: review the patch against the new keras.src.backend.tensorflow.nn, then update
    KERAS_WRITTEN_FOR, the pin in pyproject.toml and the hash here."""
    original = training.use_twice_differentiable_batch_norm()
    assert keras.__version__.startswith(training.KERAS_WRITTEN_FOR + ".")
    assert tuple(inspect.signature(original).parameters) == training.KERAS_MOMENTS_PARAMETERS
    assert hashlib.sha256(inspect.getsource(original).encode()).hexdigest() == ORIGINAL_SOURCE_SHA256
    assert "_compute_moments(" in inspect.getsource(keras_tf_nn.moments)  # what BatchNormalization calls


def test_the_patch_is_applied_once_per_process():
    original = training.use_twice_differentiable_batch_norm()
    assert keras_tf_nn._compute_moments is training._moments_without_stop_gradient
    assert training.use_twice_differentiable_batch_norm() is original  # cached: nothing is patched again
    assert original is not training._moments_without_stop_gradient


def test_a_changed_keras_helper_is_one_clear_error(monkeypatch):
    original = training.use_twice_differentiable_batch_norm()
    training.use_twice_differentiable_batch_norm.cache_clear()
    try:
        monkeypatch.setattr(keras_tf_nn, "_compute_moments", lambda x, axes, keepdims, synchronized: None)
        changed = r"_compute_moments takes \('x', 'axes', 'keepdims', 'synchronized'\), expected"
        with pytest.raises(RuntimeError, match=changed):
            training.use_twice_differentiable_batch_norm()
        monkeypatch.delattr(keras_tf_nn, "_compute_moments")
        missing = r"_compute_moments is missing, expected \('x', 'axes', 'keepdims'\) as in Keras 3\.15"
        with pytest.raises(RuntimeError, match=missing):
            training.use_twice_differentiable_batch_norm()
    finally:  # back to Keras' own helper, patched again, as the rest of this process expects
        monkeypatch.undo()
        keras_tf_nn._compute_moments = original
        training.use_twice_differentiable_batch_norm.cache_clear()
        assert training.use_twice_differentiable_batch_norm() is original
    assert keras_tf_nn._compute_moments is training._moments_without_stop_gradient


def _variance_hvp(x: tf.Tensor, v: tf.Tensor) -> np.ndarray:
    """d/dx (v . d var/dx) of the batch variance of x [n, 2] (axis 0) from Keras' moments(), by nested tapes."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            _, variance = keras.ops.moments(x, axes=[0])
            total = tf.reduce_sum(variance)
        gradient = inner.gradient(total, x)
        directional = tf.reduce_sum(gradient * v)
    return outer.gradient(directional, x).numpy()


def _variance_gradient(x: np.ndarray) -> np.ndarray:
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        _, variance = keras.ops.moments(xt, axes=[0])
        total = tf.reduce_sum(variance)
    return tape.gradient(total, xt).numpy()


def test_second_derivatives_of_the_variance_match_finite_differences(monkeypatch):
    rng = np.random.default_rng(0)
    x, v = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 1.0  # a direction with a nonzero mean
    h = 1e-5
    finite = (_variance_gradient(x + h * v) - _variance_gradient(x - h * v)) / (2 * h)
    original = training.use_twice_differentiable_batch_norm()
    patched = _variance_hvp(tf.constant(x), tf.constant(v))
    np.testing.assert_allclose(patched, finite, rtol=1e-6, atol=1e-9)
    monkeypatch.setattr(keras_tf_nn, "_compute_moments", original)  # Keras' own: misses the mean's dependence on x
    unpatched = _variance_hvp(tf.constant(x), tf.constant(v))
    assert np.max(np.abs(unpatched - finite)) > 0.1 * np.max(np.abs(finite))
