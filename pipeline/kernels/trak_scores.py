"""TRAK scores from stored features (kernels.trak computes them): NumPy only, so the driver can reduce and
invert the kernel and score queries without TensorFlow.

    influence_i = -slope_i * t^T G^-1 phi_i,  G = Phi^T Phi + lambda I

for a target feature t (phi_E = P^T grad E, or one query's), training features phi_i [k] and loss slopes
slope_i (d loss_i / d f_i). Positive = harmful, as every method's influence.
"""

from __future__ import annotations

import numpy as np


def kernel_inverse(gram: np.ndarray, damping: float) -> np.ndarray:
    """(Phi^T Phi + lambda I)^-1 [k, k] float64 for gram = Phi^T Phi, lambda = damping x mean diagonal
    (relative, so one setting fits any model's gradient scale)."""
    gram = np.asarray(gram, np.float64)
    k = gram.shape[0]
    regularized = gram + damping * max(float(np.trace(gram)) / k, np.finfo(np.float64).tiny) * np.eye(k)
    return np.linalg.inv(regularized)


def scores(phi: np.ndarray, slope: np.ndarray, inverse: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[q, n] = -slope_i * t_q^T G^-1 phi_i for target features t [q, k] (phi_E, or one row per query)."""
    weighted = np.asarray(targets, np.float64) @ inverse  # [q, k]
    return -(weighted @ np.asarray(phi, np.float64).T) * np.asarray(slope, np.float64)[None, :]


def self_influence(phi: np.ndarray, slope: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """[n] slope_i^2 phi_i^T G^-1 phi_i: the estimated effect of sample i's weight on its own training loss."""
    phi = np.asarray(phi, np.float64)
    return np.einsum("nk,kl,nl->n", phi, inverse, phi) * np.asarray(slope, np.float64) ** 2
