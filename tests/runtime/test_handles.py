"""pipeline.runtime's handles: each names an existing task body or actor class (with every method it forwards), is
pickled as a name (never as code), and calls its body."""

from __future__ import annotations

import importlib
import inspect

import cloudpickle
import pytest

from pipeline import runtime

HANDLES = {
    name: value
    for name, value in vars(runtime).items()
    if getattr(value, "__module__", None) == runtime.__name__ and not name.startswith("_")
}


def _target(handle) -> object:
    """The body a handle stands for: pipeline.runtime.<module>.<name>, from the handle's closure."""
    function = handle.__init__ if inspect.isclass(handle) else handle
    where = inspect.getclosurevars(function).nonlocals
    return getattr(importlib.import_module(f"pipeline.runtime.{where['module']}"), where["name"])


def test_the_handles_are_every_task_and_actor_the_stages_use():
    assert sorted(HANDLES) == sorted(
        [
            "check_run",
            "train_seed",
            "score_seed",
            "score_query_batch",
            "score_features_query_batch",
            "predict_queries",
            "retrained_objective",
            "retrained_objectives",
            "objective_after_training",
            "perturbation_growth",
            "float64_influence",
            "ShardScorer",
            "TrakWorker",
        ]
    )


@pytest.mark.parametrize("name", sorted(HANDLES))
def test_a_handle_resolves_to_its_body_and_is_pickled_by_name(name):
    handle = HANDLES[name]
    body = _target(handle)
    assert body.__name__ == name
    assert cloudpickle.loads(cloudpickle.dumps(handle)) is handle  # by reference: the worker imports pipeline.runtime
    if inspect.isclass(handle):
        methods = [m for m in vars(handle) if not m.startswith("_")]
        assert methods and all(callable(getattr(body, m, None)) for m in methods)
        assert all(getattr(handle, m).__qualname__ == f"{name}.{m}" for m in methods)  # ray::ShardScorer.score
    else:
        assert list(inspect.signature(body).parameters)  # a function taking the task's arguments


def test_a_task_handle_calls_its_body(monkeypatch):
    from pipeline.runtime import jobs

    monkeypatch.setattr(jobs, "chosen_steps", lambda *args: ("called", args), raising=True)
    probe = runtime._task("jobs", "chosen_steps")
    assert probe([0, 4, 8], 2) == ("called", ([0, 4, 8], 2))
