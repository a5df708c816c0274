"""Shared fixtures. TensorFlow is imported once per test process; one Ray instance serves the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, started once, with the pipeline's worker environment."""
    import ray

    from pipeline import cluster
    from pipeline.config import ClusterSettings

    cluster.connect(ClusterSettings(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_subset():
    """digits_subset(n): the digits data set with only its first n training samples (cached per session)."""
    from pipeline.config import DataSettings
    from pipeline.data import load_dataset

    cache = {}

    def load(n_train: int | None = None):
        if n_train not in cache:
            cache[n_train] = load_dataset(DataSettings(max_train=n_train))
        return cache[n_train]

    return load


@pytest.fixture
def float64_keras():
    """Keras floatx and dtype policy float64 for one test, restored afterwards (the policy too: once set,
    layers follow it rather than floatx)."""
    import keras

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)
