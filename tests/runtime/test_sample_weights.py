"""Per-sample weights from the data (npz w_train, a Parquet data.weight_column) and train.class_weight: training equals
`model.fit(sample_weight=..., class_weight=...)`, the sweep's dE/d eps_i (eps_i scales sample i's weight) matches
finite differences of retraining, and bad weights are one-line errors."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline.config import DataSettings, InfluenceSettings, ModelSettings, OptimizerSettings, Settings, TrainSettings
from pipeline.data import load_dataset
from pipeline.errors import ConfigError, DataError
from pipeline.kernels.schedule import checkpoint_steps
from pipeline.kernels.training import as_inputs, make_batches, train
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.metrics import relative_errors
from pipeline.models import build_model
from pipeline.runtime.recipes import check_weights_supported, recipe_for, sample_weights, schedule_for

N_TRAIN, BATCH, EPOCHS = 96, 32, 2
CLASS_WEIGHT = (1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 0.25, 1.0, 3.0, 1.0)


def _settings(class_weight=CLASS_WEIGHT, method="trajectory") -> Settings:
    return Settings(
        model=ModelSettings(hidden=(8,)),
        optimizer=OptimizerSettings(name="momentum", lr=0.05, momentum=0.9),
        train=TrainSettings(epochs=EPOCHS, batch_size=BATCH, shuffle=True, dtype="float64", class_weight=class_weight),
        influence=InfluenceSettings(method=method),
    )


@pytest.fixture
def weighted(digits_subset):
    data = digits_subset(N_TRAIN)
    # float32 values: Keras' data adapter passes sample_weight through float32 even under floatx float64
    w = np.random.default_rng(0).uniform(0.2, 2.0, N_TRAIN).astype(np.float32).astype(np.float64)
    w[11] = 0.0  # a sample kept in the data but given no weight
    return replace(data, w_train=w)


def _final_and_objective(settings, data, eps=None):
    recipe, schedule = recipe_for(settings, data, 0), schedule_for(settings, data, 0)
    batches = make_batches(
        data.x_train["x"], data.y_train, schedule, "float64", recipe.task, eps, sample_weights(settings, data)
    )
    out = {}
    train(recipe, recipe.initial_state(), batches, [0, schedule.n_steps], out.__setitem__)
    final = out[schedule.n_steps]
    x_val, y_val = as_inputs(data.x_val["x"], "float64"), tf.constant(data.y_val)
    return final, float(recipe.objective(final, x_val, y_val))


@pytest.mark.parametrize("given", ["sample_weight", "class_weight"])
def test_weighted_training_equals_model_fit(weighted, float64_keras, given):
    """Keras takes one of sample_weight and class_weight at a time; each is checked against its setting."""
    settings = _settings(class_weight=CLASS_WEIGHT if given == "class_weight" else None)
    settings = replace(settings, train=replace(settings.train, shuffle=False))
    data = weighted if given == "sample_weight" else replace(weighted, w_train=None)
    final, _ = _final_and_objective(settings, data)
    model = build_model(settings.model, data.input_shapes, "classification", 10, "float64", seed=0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    weights = (
        {"sample_weight": data.w_train} if given == "sample_weight" else {"class_weight": dict(enumerate(CLASS_WEIGHT))}
    )
    model.fit(data.x_train["x"], data.y_train, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, **weights)
    # 1e-8 of the weights' scale: this model's unweighted run already differs from model.fit by 8e-10 (3e-10 with
    # plain SGD); the weights change nothing in that
    scale = max(np.abs(v.numpy()).max() for v in model.trainable_variables)
    for mine, theirs in zip(final.trainable, model.trainable_variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-8 * scale)
    plain = replace(settings, train=replace(settings.train, class_weight=None))
    unweighted, _ = _final_and_objective(plain, replace(data, w_train=None))
    assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(final.trainable, unweighted.trainable)) > 1e-3


def test_sweep_differentiates_the_weighted_run(weighted):
    """influence_i = dE/d eps_i where sample i weighs eps_i * w_i * class_weight[y_i]: central differences of
    retraining agree, and a sample of weight 0 gets exactly 0."""
    settings = _settings()
    recipe, schedule = recipe_for(settings, weighted, 0), schedule_for(settings, weighted, 0)
    steps = checkpoint_steps(schedule.n_steps, None)
    weights = sample_weights(settings, weighted)
    assert weights is not None
    np.testing.assert_array_equal(weights, weighted.w_train * np.asarray(CLASS_WEIGHT)[weighted.y_train])
    batches = make_batches(weighted.x_train["x"], weighted.y_train, schedule, "float64", recipe.task, None, weights)
    stored = {}
    train(recipe, recipe.initial_state(), batches, steps, stored.__setitem__)
    x_val, y_val = as_inputs(weighted.x_val["x"], "float64"), tf.constant(weighted.y_val)
    influence = ReverseSweep(recipe).run(stored, steps, batches, x_val, y_val).influence
    assert influence[11] == 0.0
    h = 1e-4
    for i in (3, 40):
        eps = np.ones(N_TRAIN)
        eps[i] = 1 + h
        _, plus = _final_and_objective(settings, weighted, eps)
        eps[i] = 1 - h
        _, minus = _final_and_objective(settings, weighted, eps)
        assert relative_errors(influence[i], (plus - minus) / (2 * h)) < 1e-6


def test_weights_from_npz_and_parquet(tmp_path):
    rng = np.random.default_rng(1)
    x, y, w = rng.normal(size=(30, 4)), np.arange(30) % 3, rng.uniform(0.5, 1.5, 30)
    np.savez(tmp_path / "d.npz", x_train=x[:20], y_train=y[:20], w_train=w[:20], x_val=x[20:], y_val=y[20:])
    data = load_dataset(DataSettings(source="npz", path=str(tmp_path / "d.npz"), max_train=15))
    np.testing.assert_array_equal(data.w_train, w[:15])
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "label": y, "weight": w, "split": ["train"] * 20 + ["val"] * 10})
    pq.write_table(table, tmp_path / "d.parquet")
    data = load_dataset(
        DataSettings(
            source="parquet",
            path=str(tmp_path / "d.parquet"),
            feature_columns=("a", "b"),
            split_column="split",
            weight_column="weight",
        )
    )
    np.testing.assert_array_equal(data.w_train, w[:20])
    assert data.x_train["x"].shape == (20, 2)  # the weight column is never a feature


@pytest.mark.parametrize(
    "weights,message",
    [
        (np.full(20, -1.0), r"^w_train: weights must be finite and >= 0 \(row 0 is -1.0\) in "),
        (np.zeros(20), r"^w_train: every weight is 0 in "),
        (np.ones(19), r"^w_train: needs one weight per training sample \(20\), got shape \(19,\) in "),
    ],
    ids=["negative", "all zero", "wrong length"],
)
def test_bad_weights_are_one_line_errors(tmp_path, weights, message):
    x, y = np.zeros((30, 2)), np.arange(30) % 2
    np.savez(tmp_path / "d.npz", x_train=x[:20], y_train=y[:20], w_train=weights, x_val=x[20:], y_val=y[20:])
    with pytest.raises(DataError, match=message):
        load_dataset(DataSettings(source="npz", path=str(tmp_path / "d.npz")))


def test_class_weight_needs_one_value_per_class_and_a_method_that_models_weights(digits_subset):
    data = digits_subset(N_TRAIN)
    with pytest.raises(ConfigError, match=r"^train.class_weight has 3 values; the data has 10 classes$"):
        sample_weights(_settings(class_weight=(1.0, 2.0, 3.0)), data)
    with pytest.raises(ConfigError, match=r"^train.class_weight: influence.method=tracin does not model sample"):
        check_weights_supported(_settings(method="tracin"), data)
    check_weights_supported(_settings(method="truncated"), data)  # a sweep method: exact with weights
    check_weights_supported(_settings(class_weight=None, method="tracin"), data)  # no weights: nothing to refuse


def test_weights_are_part_of_the_data_fingerprint(weighted):
    """Other weights, another recorded trajectory (a rerun with changed weights is refused, not resumed)."""
    from pipeline.run import data_fingerprint

    other = replace(weighted, w_train=weighted.w_train * 2)
    keys = {data_fingerprint(weighted), data_fingerprint(other), data_fingerprint(replace(weighted, w_train=None))}
    assert len(keys) == 3


def test_the_evaluation_retrains_with_the_weights(weighted):
    """pipeline.evaluate's retraining task trains the weighted run too (eps scales the weights)."""
    from pipeline.evaluation.retrain import fresh_objective

    settings = _settings()
    eps = np.ones(N_TRAIN)
    eps[5] = 0.0
    _, expected = _final_and_objective(settings, weighted, eps)
    assert fresh_objective(settings, weighted, 0, eps) == pytest.approx(expected, rel=1e-12)
    _, unweighted = _final_and_objective(_settings(class_weight=None), replace(weighted, w_train=None), eps)
    assert abs(expected - unweighted) > 1e-6
