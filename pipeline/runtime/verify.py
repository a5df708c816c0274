"""The verify stage's tasks: retrainings of a seed from its stored initial state on its stored schedule (one
perturbation each), the growth of an initial-weight perturbation, and the float64 replay of a float32 run.
objective_after_training is also the evaluation's same-seed retraining. Runs in workers (imports TensorFlow)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tensorflow as tf

from pipeline.config import Settings
from pipeline.data import Dataset
from pipeline.kernels.training import TrainState, train
from pipeline.kernels.trajectory import ReverseSweep
from pipeline.runtime.jobs import Perturbation
from pipeline.runtime.recipes import recipe_for
from pipeline.runtime.seed import SeedRun


def retrained_objective(settings: Settings, dataset: Dataset, seed: int, perturbation: Perturbation) -> float:
    """Ray task body: retrain with one perturbation (see Perturbation); returns the validation objective."""
    return objective_after_training(settings, dataset, seed, *_perturbed(settings, dataset, perturbation))


def retrained_objectives(
    settings: Settings, dataset: Dataset, seed: int, perturbation: Perturbation
) -> tuple[float, np.ndarray]:
    """Ray task body: retrain with one perturbation; returns (E exactly as retrained_objective computes it,
    the objective of every validation sample [V] float64), so one retraining serves every query."""
    run, final = _retrained(settings, dataset, seed, *_perturbed(settings, dataset, perturbation))
    recipe, x_val, y_val = run.recipe, run.x_val, run.y_val
    outputs, _ = recipe.forward(final.trainable, final.non_trainable, x_val, training=False)
    per_sample = recipe.task.objective(outputs, y_val).numpy().astype(np.float64)
    return float(recipe.evaluate(final, x_val, y_val)["objective"]), per_sample


def objective_after_training(
    settings: Settings, dataset: Dataset, seed: int, eps: np.ndarray, x: dict[str, np.ndarray] | None = None
) -> float:
    """Ray task body: retrain seed `seed` from its stored initial state on its stored schedule with sample weights
    eps [N] (0 removes a sample) and inputs x (name -> [N, *shape]; default: the dataset's); returns E."""
    run, final = _retrained(settings, dataset, seed, eps, x)
    return float(run.recipe.evaluate(final, run.x_val, run.y_val)["objective"])


def perturbation_growth(settings: Settings, dataset: Dataset, seed: int, scale: float) -> float:
    """Ray task body: retrain from the stored initial weights moved by a random relative perturbation of size
    `scale` (||d theta_0|| = scale ||theta_0||); returns (||d theta_T|| / ||theta_T||) / scale."""
    run = SeedRun.load(settings, dataset, seed)
    initial, n_steps = run.initial, run.schedule.n_steps
    rng = np.random.default_rng(seed)
    flat = np.concatenate([w.numpy().ravel() for w in initial.trainable])
    noise = [rng.normal(size=w.shape) for w in initial.trainable]
    norm = np.sqrt(sum(float(np.sum(z * z)) for z in noise))
    moved = [
        w + tf.constant(z * scale * np.linalg.norm(flat) / norm, w.dtype) for w, z in zip(initial.trainable, noise)
    ]
    batches = run.batches()
    finals = []
    for start in (initial, TrainState(moved, initial.non_trainable, initial.optimizer)):
        out: dict[int, TrainState] = {}
        train(run.recipe, start, batches, [0, n_steps], out.__setitem__)
        finals.append(np.concatenate([w.numpy().ravel() for w in out[n_steps].trainable]).astype(np.float64))
    return float(np.linalg.norm(finals[1] - finals[0]) / np.linalg.norm(finals[0]) / scale)


def float64_influence(settings: Settings, dataset: Dataset, seed: int) -> np.ndarray:
    """Ray task body: the trajectory influence [N] of a float64 replay of a float32 run: its stored initial state
    cast to float64, trained on its stored schedule, swept in float64."""
    run = SeedRun.load(settings, dataset, seed)
    recipe = recipe_for(replace(settings, train=replace(settings.train, dtype="float64")), dataset, seed)
    cast = lambda t: tf.cast(t, tf.float64) if t.dtype.is_floating else t  # noqa: E731  (seed state stays integer)
    initial = recipe.unflatten([cast(t) for t in run.recipe.flatten(run.initial)])
    batches = run.batches(dtype="float64")
    states: dict[int, TrainState] = {}
    train(recipe, initial, batches, run.steps, states.__setitem__)
    x_val, y_val = run.validation(dtype="float64")
    return ReverseSweep(recipe).run(states, run.steps, batches, x_val, y_val).influence


def _perturbed(
    settings: Settings, dataset: Dataset, perturbation: Perturbation
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sample weights eps [N], training inputs name -> [N, *shape]) of one perturbation."""
    eps = np.ones(dataset.n_train)
    x = dict(dataset.x_train)
    if perturbation.weight is not None:
        eps[list(perturbation.ids)] = perturbation.weight
    for name, dx in (perturbation.dx or {}).items():
        x[name] = x[name].astype(settings.train.dtype)  # a copy, in the training precision
        x[name][perturbation.ids[0]] += dx
    return eps, x


def _retrained(
    settings: Settings, dataset: Dataset, seed: int, eps: np.ndarray, x: dict[str, np.ndarray] | None = None
) -> tuple[SeedRun, TrainState]:
    """(the seed's SeedRun, final state) of seed `seed` retrained from its stored initial state on its stored
    schedule with sample weights eps [N] and inputs x (default: the dataset's)."""
    run = SeedRun.load(settings, dataset, seed)
    final: dict[int, TrainState] = {}
    train(run.recipe, run.initial, run.batches(eps=eps, x=x), [0, run.schedule.n_steps], final.__setitem__)
    return run, final[run.schedule.n_steps]
