"""Resources and worker environment (GPU paths are checked at the config/resource level: no GPU here)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pipeline.cluster import configure_tensorflow, task_options, worker_env
from pipeline.config import ClusterSettings


def test_gpus_requested_only_when_the_cluster_has_them(caplog):
    settings = ClusterSettings(cpus_per_task=1, gpus_per_task=0.5, max_retries=3)
    with_gpus = task_options(settings, cluster_gpus=2.0)
    assert with_gpus["num_gpus"] == 0.5 and with_gpus["num_cpus"] == 1 and with_gpus["max_retries"] == 3
    with caplog.at_level(logging.WARNING):
        without = task_options(settings, cluster_gpus=0.0)
    assert without["num_gpus"] == 0.0  # a GPU request on a GPU-less cluster would wait forever
    assert "no GPUs" in caplog.text
    assert task_options(ClusterSettings(), cluster_gpus=4.0)["num_gpus"] == 0.0


def test_thread_limits_travel_in_the_runtime_env():
    env = worker_env(ClusterSettings(tf_threads=3))
    assert env["TF_NUM_INTRAOP_THREADS"] == "3" and env["TF_NUM_INTEROP_THREADS"] == "3"
    assert task_options(ClusterSettings(tf_threads=3), 0.0)["runtime_env"] == {"env_vars": env}


def test_configure_tensorflow_is_safe_without_gpus_and_repeatable():
    import tensorflow as tf

    configure_tensorflow()
    configure_tensorflow()
    assert tf.config.list_physical_devices("GPU") == []


def test_orphaned_agents_are_those_whose_raylet_is_gone():
    from pipeline.cluster import orphaned_agents

    processes = [
        (10, 1, 0, "/venv/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/ray/s1"),
        (11, 10, 0, "ray::DashboardAgent"),  # its raylet is alive
        (12, 1, 0, "ray::DashboardAgent"),  # reparented to init: its raylet died with a killed driver
        (13, 7, 0, "ray::RuntimeEnvAgent"),  # reparented to a subreaper
        (14, 1, 1000, "ray::RuntimeEnvAgent"),  # another user's: never touched
        (15, 1, 0, "ray::IDLE"),  # not an agent
    ]
    assert orphaned_agents(processes, uid=0) == [12, 13]


def _flaky():
    """The pool actor of these tests, a Ray actor class (a local class: Ray ships it by value, the tests folder is
    not on the workers' path)."""
    import ray

    class Flaky:
        """Squares its job; dies like a lost machine (os._exit) the first `die` times it starts job `die_at`, raises
        ValueError for job -1. Every start is logged as a file in `log_dir`."""

        def __init__(self, log_dir: str, die_at: int, die: int):
            self.log, self.die_at, self.die = Path(log_dir), die_at, die

        def square(self, job: int) -> tuple[int, int]:
            start = len(list(self.log.glob(f"job={job}-*")))
            (self.log / f"job={job}-{start}-pid={os.getpid()}").write_text("")
            if job == self.die_at and start < self.die:
                os._exit(1)
            if job == -1:
                raise ValueError("job -1 is bad")
            return job * job, os.getpid()

    return ray.remote(Flaky).options(num_cpus=1)


def _square(actor, job):
    return actor.square.remote(job)


def _pool(log_dir, jobs, retries, die_at=3, die=1, n_actors=2):
    from pipeline.cluster import run_on_actors

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return run_on_actors(_flaky(), (str(log_dir), die_at, die), n_actors, jobs, _square, retries, "test")


def _starts(log_dir, job) -> list[int]:
    """pids that started `job`, in order."""
    return [int(p.name.split("pid=")[1]) for p in sorted(Path(log_dir).glob(f"job={job}-*"))]


def test_pool_resubmits_a_job_whose_actor_died_to_another_actor(ray_session, tmp_path, capsys):
    results = _pool(tmp_path, list(range(6)), retries=1)
    assert [r[0] for r in results] == [j * j for j in range(6)]  # every job once, in job order
    dead, survivor = _starts(tmp_path, 3)
    assert results[3][1] == survivor != dead
    assert all(len(_starts(tmp_path, j)) == 1 for j in (0, 1, 2, 4, 5))
    assert "job 4 of 6 lost its actor (ActorDiedError); resubmitted (retry 1 of 1)" in capsys.readouterr().err


def test_pool_gives_up_after_the_retries_of_a_job(ray_session, tmp_path):
    import ray

    with pytest.raises(ray.exceptions.RayActorError):
        _pool(tmp_path, list(range(4)), retries=1, die=2)
    assert len(_starts(tmp_path, 3)) == 2  # the first try and one retry
    assert [r[0] for r in _pool(tmp_path / "more", list(range(4)), retries=2, die=2)] == [0, 1, 4, 9]


def test_pool_never_retries_a_job_that_raises(ray_session, tmp_path):
    with pytest.raises(ValueError, match="job -1 is bad"):
        _pool(tmp_path, [0, -1, 2], retries=2)
    assert len(_starts(tmp_path, -1)) == 1


def test_pool_size_is_every_cpu_of_the_local_ray_right_after_tasks_end(ray_session):
    import ray

    from pipeline.cluster import pool_size

    @ray.remote(num_cpus=1)
    def busy() -> None:
        pass

    sizes = []
    for _ in range(5):
        ray.get([busy.remote(), busy.remote()])  # Ray's count of free CPUs lags behind these for a moment
        sizes.append(pool_size(ClusterSettings(), n_jobs=10))
    assert sizes == [2] * 5  # the session's Ray has 2 CPUs
    assert pool_size(ClusterSettings(), n_jobs=1) == 1
    assert pool_size(ClusterSettings(cpus_per_task=0.5), n_jobs=10) == 4


def test_one_pool_serves_several_phases_of_jobs_with_the_same_actors(ray_session, tmp_path):
    import ray

    from pipeline.cluster import ActorPool

    with ActorPool(_flaky(), (str(tmp_path), 1, 1), 2, retries=1) as pool:
        first = pool.run([0, 1, 2], _square, "phase 1")
        second = pool.run([3, 4, 5], _square, "phase 2")
        actors = list(pool.actors)
    assert [r[0] for r in first + second] == [0, 1, 4, 9, 16, 25]
    dead = _starts(tmp_path, 1)[0]
    assert dead not in {pid for _, pid in second} and len({pid for _, pid in first + second} - {dead}) <= 2
    with pytest.raises(ray.exceptions.RayActorError):  # killed on leaving the block
        ray.get(actors[0].square.remote(6), timeout=60)
