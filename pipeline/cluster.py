"""Ray connection, task resources, worker environment and TensorFlow device set-up.

The driver never imports TensorFlow; workers import it once each (Ray reuses workers across tasks).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import ray
from tqdm import tqdm

from pipeline.config import ClusterSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


def worker_env(settings: ClusterSettings) -> dict[str, str]:
    """Environment of every worker: TensorFlow thread limits (TF ignores OMP_NUM_THREADS) and quiet logs."""
    threads = str(settings.tf_threads)
    return {
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "RAY_AUTH_MODE": "disabled",
    }


def connect(settings: ClusterSettings) -> None:
    """Join `cluster.address` (auto, ray://...) or start a local Ray; no-op when Ray is already up."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env(settings)},
        "include_dashboard": False,
        "configure_logging": True,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if settings.address is None:  # "local": always a new instance, never a cluster found in /tmp/ray
        options["num_cpus"] = settings.num_cpus
        removed = reap_orphaned_agents()
        if removed:
            print(f"[cluster] stopped {len(removed)} Ray agent process(es) left behind by a killed run (pids {', '.join(map(str, removed))})")
    ray.init(address=settings.address or "local", **options)


# Per-node helpers a raylet starts. When a driver that started its own Ray is killed with SIGKILL, its raylet
# dies but these survive (reparented to init) and ignore SIGTERM; an agent of a live raylet is its child.
AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def orphaned_agents(processes: Iterable[tuple[int, int, int, str]], uid: int) -> list[int]:
    """pids among (pid, ppid, uid, command line) that are Ray agents of this user whose parent is not a
    raylet any more (reparented to init or a subreaper)."""
    table = list(processes)
    commands = {pid: command for pid, _, _, command in table}
    return [
        pid
        for pid, ppid, owner, command in table
        if owner == uid and command.startswith(AGENT_TITLES) and "raylet" not in commands.get(ppid, "").split(" ", 1)[0]
    ]


def _processes() -> Iterator[tuple[int, int, int, str]]:
    """(pid, ppid, uid, command line) of every process /proc lets us read (Linux; nothing elsewhere)."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            yield int(entry.name), ppid, entry.stat().st_uid, command
        except (OSError, ValueError, IndexError):
            continue


def reap_orphaned_agents() -> list[int]:
    """SIGKILL the Ray agents a killed driver left behind (see AGENT_TITLES); returns their pids."""
    removed = []
    for pid in orphaned_agents(_processes(), os.getuid()):
        try:
            os.kill(pid, signal.SIGKILL)
            removed.append(pid)
        except OSError:
            continue
    return removed


def gpus_in_cluster() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def task_options(settings: ClusterSettings, cluster_gpus: float) -> dict[str, Any]:
    """Ray options of one task. GPUs are requested only if the cluster has them: a GPU request on a
    cluster without GPUs would wait forever."""
    gpus = settings.gpus_per_task if cluster_gpus > 0 else 0.0
    if settings.gpus_per_task > 0 and cluster_gpus == 0:
        log.warning("cluster.gpus_per_task=%s but the cluster has no GPUs; running on CPUs", settings.gpus_per_task)
    return {
        "num_cpus": settings.cpus_per_task,
        "num_gpus": gpus,
        "max_retries": settings.max_retries,
        "runtime_env": {"env_vars": worker_env(settings)},
    }


def configure_tensorflow() -> None:
    """Inside a worker, before any tensor is made: grow GPU memory on demand (so tasks can share a GPU)."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this worker: the setting is in force from before
            pass


def run_tasks(fn: Callable[..., T], calls: Iterable[tuple], options: dict[str, Any], desc: str) -> list[T]:
    """Run fn(*args) for every args in `calls` as Ray tasks; results in call order, progress bar on completion.

    The first failing task raises its exception (Ray re-raises it as the original exception type).
    """
    remote = ray.remote(fn).options(**options)
    refs = [remote.remote(*args) for args in calls]
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="task", disable=not refs) as bar:
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[position[ref]] = ray.get(ref)
                    bar.update(1)
        finally:
            for ref in pending:
                ray.cancel(ref)
    return results
