"""Ray connection, task resources, worker environment and TensorFlow device set-up.

The driver never imports TensorFlow; workers import it once each (Ray reuses workers across tasks).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray._private import ray_constants
from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # missing from ray's stub
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError
from tqdm import tqdm

from pipeline.config import ClusterSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
J = TypeVar("J")

# What losing an actor, its worker or its node looks like to the caller; anything else (a task's own exception) is
# an answer, never retried.
LOST = (RayActorError, NodeDiedError, WorkerCrashedError, ObjectLostError)
# Ray's own switch for single-machine Ray (Windows, macOS): every Ray process then binds to 127.0.0.1.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


PROGRESS_ENV = "PIPELINE_PROGRESS"  # "1": progress bars (driver and workers); "0": none; unset: when stderr is a TTY


def progress_enabled() -> bool:
    """Whether to draw progress bars: PIPELINE_PROGRESS if set, else off under TQDM_DISABLE or when stderr is not a
    terminal (CI, a log file: the stages' own lines are the output, one per stage and seed)."""
    chosen = os.environ.get(PROGRESS_ENV)
    if chosen is not None:
        return chosen == "1"
    return not os.environ.get("TQDM_DISABLE") and sys.stderr.isatty()


class LogProgress:
    """Progress of long driver work where no bar is drawn (a log, CI): one line `[progress] desc: done/total unit
    (percent, elapsed)` at most every `interval` seconds, so short work prints nothing and long work shows it lives."""

    def __init__(self, total: int, desc: str, unit: str, interval: float = 60.0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.done, self.began = 0, time.monotonic()
        self.told = self.began

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.told >= self.interval and self.done < self.total:
            self.told = now
            percent = 100 * self.done / max(self.total, 1)
            print(
                f"[progress] {self.desc}: {self.done}/{self.total} {self.unit}s ({percent:.0f}%, "
                f"{(now - self.began) / 60:.1f} min)",
                flush=True,
            )

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def driver_bar(total: int, desc: str, unit: str) -> Any:
    """The driver's progress display for `total` units of work: a tqdm bar on a terminal, else LogProgress."""
    if progress_enabled():
        return tqdm(total=total, desc=desc, unit=unit, disable=not total)
    return LogProgress(total, desc, unit)


def worker_bar(total: int, desc: str, unit: str) -> Any:
    """A progress bar in a Ray worker, drawn by the driver (ray.experimental.tqdm_ray), or a silent stand-in when
    the driver draws none (workers inherit PIPELINE_PROGRESS from it, see worker_env)."""
    if not progress_enabled():
        return tqdm(total=total, disable=True)
    from ray.experimental.tqdm_ray import tqdm as ray_tqdm

    return ray_tqdm(total=total, desc=desc, unit=unit)


def worker_env(settings: ClusterSettings) -> dict[str, str]:
    """Environment of every worker: TensorFlow thread limits (TF ignores OMP_NUM_THREADS), quiet logs, and whether
    the driver draws progress bars."""
    threads = str(settings.tf_threads)
    return {
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_ENABLE_ONEDNN_OPTS": "0",
        PROGRESS_ENV: "1" if progress_enabled() else "0",
    }


def connect(settings: ClusterSettings) -> None:
    """Join `cluster.address` (auto, ray://...) or start a private local Ray; no-op when Ray is already up.

    A local Ray listens on 127.0.0.1 only and keeps Ray's token authentication on, with a token no other process
    has (see local_token), so nothing else on the machine or the network can join it or submit work to it.
    """
    if ray.is_initialized():
        return
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env(settings)},
        "configure_logging": True,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if settings.address is not None:
        ray.init(address=settings.address, **options)
        return
    removed = reap_orphaned_agents()
    if removed:
        pids = ", ".join(map(str, removed))
        print(f"[cluster] stopped {len(removed)} Ray agent process(es) left behind by a killed run (pids {pids})")
    made = local_token()
    with loopback_only():  # "local": always a new instance, never a cluster found in /tmp/ray
        context = ray.init(address="local", num_cpus=settings.num_cpus, include_dashboard=settings.dashboard, **options)
    if settings.dashboard:
        token = f"this run's token {os.environ['RAY_AUTH_TOKEN']}" if made else "your RAY_AUTH_TOKEN"
        print(f"[cluster] Ray dashboard: http://{context.dashboard_url} (sign in with {token})")


def local_token() -> bool:
    """Token authentication on for the local Ray this process starts, whatever RAY_AUTH_MODE said, with the token
    of RAY_AUTH_TOKEN or a new random one (returns True then). Ray's default, ~/.ray/auth_token, is shared by every
    local Ray of the user and readable by whoever can read the file; an environment variable reaches only this
    process and the Ray processes it starts. Ray reads both variables once, at import: its settings are reloaded."""
    os.environ["RAY_AUTH_MODE"] = "token"
    made = not os.environ.get("RAY_AUTH_TOKEN")
    if made:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return made


@contextmanager
def loopback_only() -> Iterator[None]:
    """A Ray started inside listens on 127.0.0.1 only (GCS, raylet, object manager, workers, agents, dashboard).

    Ray 2.60 has no option for this: a local Ray binds to the machine's routable address unless Ray is
    single-machine (SINGLE_MACHINE_ENV=0), a setting Ray reads at import. The environment variable reaches the
    processes Ray starts, the constant this one; both are restored afterwards (a later `cluster.address` join
    needs the routable address).
    """
    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


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
        with suppress(RuntimeError):  # already initialised in this worker: the setting is in force from before
            tf.config.experimental.set_memory_growth(gpu, True)


def run_tasks(fn: Callable[..., T], calls: Iterable[tuple], options: dict[str, Any], desc: str) -> list[T]:
    """Run fn(*args) for every args in `calls` as Ray tasks; results in call order, progress bar on completion.

    The first failing task raises its exception (Ray re-raises it as the original exception type).
    """
    remote = ray.remote(fn).options(**options)
    refs = [remote.remote(*args) for args in calls]
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with driver_bar(len(refs), desc, "task") as bar:
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


def pool_size(settings: ClusterSettings, n_jobs: int) -> int:
    """Actors for n_jobs jobs of `cluster.cpus_per_task` CPUs each: every CPU of a local Ray (the run has it to
    itself, and Ray's count of free CPUs lags behind tasks that just ended), the free CPUs of a shared cluster."""
    resources = ray.cluster_resources() if settings.address is None else ray.available_resources()
    return max(1, min(n_jobs, int(resources.get("CPU", 0.0) // settings.cpus_per_task)))


def run_on_actors(
    actor_class: Any,
    args: tuple,
    n_actors: int,
    jobs: Sequence[J],
    call: Callable[[Any, J], Any],
    retries: int,
    desc: str,
    weight: Callable[[J], int] = lambda job: 1,
    unit: str = "job",
) -> list[Any]:
    """Run `jobs` on a pool of at most `n_actors` actors made for them alone (ActorPool.run); results in job order."""
    if not jobs:
        return []
    with ActorPool(actor_class, args, min(n_actors, len(jobs)), retries) as pool:
        return pool.run(jobs, call, desc, weight, unit)


class ActorPool:
    """`n_actors` actors `actor_class.remote(*args)` that run lists of jobs (run), each job retried up to `retries`
    times when its actor, worker or node is lost. Several runs share the actors (one start-up for several phases of
    jobs); leaving the `with` block, close() or a failed run kills them all.

    A lost actor is killed and replaced by a new one, which Ray places on a live node. Jobs go only to actors that
    are up, so a replacement that cannot be placed (its node's CPUs are gone) holds no job.
    """

    def __init__(self, actor_class: Any, args: tuple, n_actors: int, retries: int):
        self.actor_class, self.args, self.retries = actor_class, args, retries
        self.n_actors = max(1, n_actors)
        self.actors: list[Any] = []
        self.idle: list[Any] = []
        self.starting: dict[Any, Any] = {}  # readiness reference -> actor
        self.lost_starts = 0
        for _ in range(self.n_actors):
            self._start()

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.idle, self.starting = [], [], {}

    def run(
        self,
        jobs: Sequence[J],
        call: Callable[[Any, J], Any],
        desc: str,
        weight: Callable[[J], int] = lambda job: 1,
        unit: str = "job",
    ) -> list[Any]:
        """Results of every job in job order. `call(actor, job)` submits one job and returns its object reference;
        the progress bar counts `weight(job)` per finished job. A job whose actor is lost (LOST) goes back to the
        front of the queue for the next ready actor; a job's own exception, or a loss beyond its retries, is raised
        as Ray gives it (and the pool closed)."""
        results: list[Any] = [None] * len(jobs)
        tries = [0] * len(jobs)
        todo = deque(range(len(jobs)))
        running: dict[Any, tuple[Any, int]] = {}  # reference -> (actor, job)
        with driver_bar(sum(weight(job) for job in jobs), desc, unit) as bar:
            try:
                while todo or running:
                    while todo and self.idle:
                        actor, i = self.idle.pop(), todo.popleft()
                        running[call(actor, jobs[i])] = (actor, i)
                    [ref], _ = ray.wait([*running, *self.starting], num_returns=1)
                    if ref in self.starting:
                        self._ready(ref)
                        continue
                    actor, i = running.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except LOST as exc:
                        tries[i] += 1
                        if tries[i] > self.retries:
                            raise
                        todo.appendleft(i)
                        lost = f"[cluster] {desc}: job {i + 1} of {len(jobs)} lost its actor ({type(exc).__name__})"
                        tqdm.write(f"{lost}; resubmitted (retry {tries[i]} of {self.retries})", file=sys.stderr)
                        self._replace(actor)
                        continue
                    bar.update(weight(jobs[i]))
                    self.idle.append(actor)
            except BaseException:
                self.close()
                raise
        return results

    def _start(self) -> None:
        actor = self.actor_class.remote(*self.args)
        self.actors.append(actor)
        self.starting[actor.__ray_ready__.remote()] = actor

    def _ready(self, ref: Any) -> None:
        """An actor is up (idle from now), or was lost starting: replaced, unless its constructor failed or starts
        keep failing (more than `retries` per actor of the pool)."""
        actor = self.starting.pop(ref)
        try:
            ray.get(ref)
        except LOST as exc:
            self.lost_starts += 1
            if getattr(exc, "actor_init_failed", False) or self.lost_starts > self.retries * self.n_actors:
                raise
            self._replace(actor)
            return
        self.idle.append(actor)

    def _replace(self, actor: Any) -> None:
        ray.kill(actor)
        self.actors.remove(actor)
        self._start()
