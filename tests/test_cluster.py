"""Resources and worker environment (GPU paths are checked at the config/resource level: no GPU here)."""

from __future__ import annotations

import logging

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
