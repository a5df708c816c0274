"""Learning-rate schedules: the per-step values are those a Keras optimizer uses, the named schedules follow
their formulas, and bad settings are ValueErrors naming the parameter."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.kernels.lr_schedules import OneCycle, learning_rates, make_schedule_object
from pipeline.kernels.schedule import make_schedule

N_STEPS = 12
LR = 0.1
NAMED = {
    "constant": {},
    "cosine": {"alpha": 0.1},
    "warmup_cosine": {"warmup_steps": 3, "alpha": 0.05, "initial_learning_rate": 0.01},
    "piecewise": {"boundaries": [3, 7], "values": [0.1, 0.05, 0.01]},
    "exponential": {"decay_steps": 4, "decay_rate": 0.5, "staircase": True},
    "one_cycle": {"pct_start": 0.25},
}


@pytest.mark.parametrize("name,params", list(NAMED.items()), ids=list(NAMED))
def test_values_are_what_compiled_fit_uses(float64_keras, name, params):
    """The learning rate model.fit applies at each step, read off a bias whose loss gradient is exactly 1: SGD
    moves it by -lr_t (float32 values, added exactly in float64)."""
    schedule = make_schedule_object(name, LR, N_STEPS, **params)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=lambda y, outputs: outputs[:, 0], jit_compile=False)
    bias = [0.0]
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: bias.append(float(model.layers[0].bias[0]))
    )
    model.fit(
        np.zeros((N_STEPS, 1)), np.zeros(N_STEPS), batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[record]
    )
    values = learning_rates(schedule, N_STEPS)
    assert values.dtype == np.float64 and values.shape == (N_STEPS,)
    np.testing.assert_array_equal(values, -np.diff(bias))


@pytest.mark.parametrize("name,params", list(NAMED.items()), ids=list(NAMED))
def test_values_are_the_schedule_at_each_iteration(name, params):
    """Evaluated eagerly (as `optimizer.learning_rate` reports it), a value may differ in its last float32 bit:
    in compiled code Grappler folds constants (e.g. CosineDecay's (1 - alpha) * 0.5)."""
    schedule = make_schedule_object(name, LR, N_STEPS, **params)
    values = learning_rates(schedule, N_STEPS)
    eager = [float(schedule(tf.constant(t, tf.int64))) for t in range(N_STEPS)]
    np.testing.assert_allclose(values, eager, rtol=np.finfo(np.float32).eps, atol=0)
    np.testing.assert_array_equal(values, values.astype(np.float32))


def test_named_schedules_follow_their_formulas():
    t = np.arange(N_STEPS)
    rates = {name: learning_rates(make_schedule_object(name, LR, N_STEPS, **p), N_STEPS) for name, p in NAMED.items()}
    close = {"rtol": 1e-6, "atol": 1e-9}  # float32 values against float64 formulas
    np.testing.assert_allclose(rates["constant"], LR, **close)
    np.testing.assert_allclose(rates["cosine"], LR * (0.1 + 0.9 * (1 + np.cos(np.pi * t / N_STEPS)) / 2), **close)
    warm = 0.01 + (LR - 0.01) * t[:3] / 3
    cool = LR * (0.05 + 0.95 * (1 + np.cos(np.pi * (t[3:] - 3) / (N_STEPS - 3))) / 2)
    np.testing.assert_allclose(rates["warmup_cosine"], np.concatenate([warm, cool]), **close)
    np.testing.assert_allclose(rates["piecewise"], [0.1] * 4 + [0.05] * 4 + [0.01] * 4, **close)  # t <= boundary
    np.testing.assert_allclose(rates["exponential"], LR * 0.5 ** (t // 4), **close)
    np.testing.assert_allclose(rates["one_cycle"], _torch_one_cycle(LR, N_STEPS, 0.25, 25.0, 1e4), **close)


def _torch_one_cycle(max_lr, total_steps, pct_start, div_factor, final_div_factor):
    """torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos", three_phase=False).get_lr, step by step."""
    initial = max_lr / div_factor
    phases = [(pct_start * total_steps - 1, initial, max_lr), (total_steps - 1, max_lr, initial / final_div_factor)]
    rates = []
    for step in range(total_steps):
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                rates.append(end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1))
                break
            start_step = end_step
    return np.array(rates)


def test_one_cycle_holds_its_last_value_after_the_run():
    values = learning_rates(OneCycle(LR, N_STEPS), N_STEPS + 3)
    assert values[-4] == values[-1] == pytest.approx(LR / 25 / 1e4, rel=1e-6)


def test_import_path_builds_any_schedule_class():
    by_path = make_schedule_object(
        "pipeline.kernels.lr_schedules:OneCycle", LR, N_STEPS, max_learning_rate=LR, total_steps=N_STEPS
    )
    np.testing.assert_array_equal(
        learning_rates(by_path, N_STEPS), learning_rates(make_schedule_object("one_cycle", LR, N_STEPS), N_STEPS)
    )
    keras_class = make_schedule_object(
        "keras.optimizers.schedules:InverseTimeDecay",
        LR,
        N_STEPS,
        initial_learning_rate=LR,
        decay_steps=2,
        decay_rate=1.0,
    )
    assert isinstance(keras_class, keras.optimizers.schedules.InverseTimeDecay)


def test_make_schedule_takes_per_step_learning_rates():
    rates = learning_rates(make_schedule_object("cosine", LR, 6), 6)
    schedule = make_schedule(10, 4, 2, shuffle=True, seed=0, lr=rates)  # 3 steps per epoch
    np.testing.assert_array_equal(schedule.lr, rates)
    constant = make_schedule(10, 4, 2, shuffle=True, seed=0, lr=0.1)
    np.testing.assert_array_equal(constant.index, schedule.index)
    assert constant.lr.dtype == np.float64 and np.all(constant.lr == 0.1)
    with pytest.raises(ValueError, match=r"lr: \(5,\) learning rates for a schedule of 6 steps"):
        make_schedule(10, 4, 2, shuffle=True, seed=0, lr=rates[:5])


@pytest.mark.parametrize(
    "name,lr,n_steps,params,match",
    [
        ("linear", LR, 10, {}, "schedule 'linear': unknown"),
        ("cosine", 0.0, 10, {}, "lr=0.0: must be a positive number"),
        ("cosine", LR, 0, {}, "n_steps=0: must be a positive integer"),
        ("cosine", LR, 10, {"warmup_steps": 2}, "schedule cosine: unknown parameter 'warmup_steps'"),
        ("warmup_cosine", LR, 10, {}, "schedule warmup_cosine: parameter 'warmup_steps' is required"),
        ("warmup_cosine", LR, 10, {"warmup_steps": -1}, "warmup_steps=-1: must be a non-negative integer"),
        ("warmup_cosine", LR, 10, {"warmup_steps": 10}, "warmup_steps=10: must be less than the run's 10 steps"),
        ("warmup_cosine", LR, 10, {"warmup_steps": 2, "alpha": 2.0}, r"alpha=2.0: must be in \[0, 1\]"),
        ("piecewise", LR, 10, {"boundaries": [3], "values": [0.1]}, "values=.*: must be 2 learning rates"),
        ("piecewise", LR, 10, {"boundaries": [3, -1], "values": [0.1] * 3}, "boundaries=.*: must be a non-empty list"),
        ("piecewise", LR, 10, {"boundaries": [5, 3], "values": [0.1] * 3}, "boundaries=.*: must be increasing"),
        ("exponential", LR, 10, {"decay_steps": 0, "decay_rate": 0.5}, "decay_steps=0: must be positive"),
        ("exponential", LR, 10, {"decay_steps": 5, "decay_rate": -0.5}, "decay_rate=-0.5: must be positive"),
        ("one_cycle", LR, 10, {"pct_start": 0.1}, r"pct_start=0.1: must be such that 1 < pct_start \* 10 < 10"),
        ("one_cycle", LR, 10, {"div_factor": 0.0}, "div_factor=0.0: must be positive"),
        ("numpy:ndarray", LR, 10, {}, "schedule numpy:ndarray: not a keras.optimizers.schedules.LearningRateSchedule"),
        ("no_such_module:Schedule", LR, 10, {}, "schedule no_such_module:Schedule: cannot be imported"),
        (
            "pipeline.kernels.lr_schedules:OneCycle",
            LR,
            10,
            {"total_steps": 10},
            "schedule pipeline.kernels.lr_schedules:OneCycle: .*max_learning_rate",
        ),
    ],
)
def test_bad_settings_are_value_errors_naming_the_parameter(name, lr, n_steps, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule_object(name, lr, n_steps, **params)


def test_learning_rates_checks_the_number_of_steps():
    schedule = make_schedule_object("constant", LR, 5)
    assert learning_rates(schedule, 0).shape == (0,)
    with pytest.raises(ValueError, match="n_steps=-1: must be a non-negative integer"):
        learning_rates(schedule, -1)
