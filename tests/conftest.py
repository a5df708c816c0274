"""Shared fixtures. TensorFlow is imported once per test process; one Ray instance serves the session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


@pytest.fixture
def kill_at_shard(monkeypatch) -> Callable[[int | None], None]:
    """kill_at_shard(n): from now on in this test, a sharded method's actor exits abruptly (os._exit, as if its
    machine died) the first time it starts shard n of a seed, once per run directory (a marker file
    .killed-seed=<s>-shard=<n> there remembers it); kill_at_shard(None) stops it.

    Test-only fault injection: the actor class the score stage starts (pipeline.runtime.ShardScorer) is replaced in
    this process by a subclass defined here, which Ray ships to the actor processes by value (cloudpickle), so
    production code carries no hook."""
    from pipeline import runtime

    production = runtime.ShardScorer

    def install(shard: int | None) -> None:
        monkeypatch.setattr(runtime, "ShardScorer", production if shard is None else _dying_scorer(production, shard))

    return install


def _dying_scorer(base: type, shard: int) -> type:
    """`base` (the ShardScorer actor class) whose score() calls os._exit(1) the first time it gets `shard`."""

    class ShardScorer(base):  # type: ignore[misc, valid-type]
        def score(self, dataset: Any, seed: int, number: int, start: int, stop: int) -> Any:
            marker = self.body.layout.root / f".killed-seed={seed}-shard={number}"
            if number == shard and not marker.exists():
                marker.write_text("")
                os._exit(1)
            return super().score(dataset, seed, number, start, stop)

    return ShardScorer
