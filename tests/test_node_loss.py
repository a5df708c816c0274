"""Losing a cluster node while its actor scores a shard: the raylet of a worker node is SIGKILLed mid-shard, the
shard is resubmitted to an actor on the live node, and the run completes with every sample exactly once.

The cluster (a head without CPUs and two worker nodes of 1 CPU, ray.cluster_utils) and the pipeline's driver run in
a process of their own: this file run as a script.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

SCORING = "ray::ShardScorer.score"  # the title of an actor process while it scores a shard


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process /proc lets us read."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), command)
        except (OSError, ValueError, IndexError):
            continue
    return table


def _kill_session(session: int) -> None:
    """SIGKILL what is left of the processes of a session (Ray agents survive their raylet)."""
    for pid in _processes():
        try:
            if os.getsid(pid) == session:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes in Linux /proc")
def test_a_node_lost_mid_shard_costs_a_retry_not_the_run(tmp_path):
    from test_sharded_scoring import _in_process_tracin, _scores, sharded_settings

    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    out, err = tmp_path / "driver.out", tmp_path / "driver.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        driver = subprocess.Popen(
            [sys.executable, __file__, str(tmp_path / "run")],
            cwd=Path(__file__).parent,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while not out.read_text().startswith("[") and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        raylets = set(json.loads(out.read_text().splitlines()[0]))
        killed = None
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            scoring = [
                ppid for ppid, command in _processes().values() if command.startswith(SCORING) and ppid in raylets
            ]
            if scoring:
                killed = scoring[0]
                os.kill(killed, signal.SIGKILL)  # the node is gone: its raylet, then its workers
            time.sleep(0.2)
        assert killed is not None, "no shard was seen scoring on a worker node"
        driver.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _kill_session(driver.pid)
    log = out.read_text() + err.read_text()
    assert driver.returncode == 0, log[-4000:]
    assert "lost its actor" in log and "resubmitted (retry 1 of 2)" in log, log[-4000:]
    run = tmp_path / "run"
    assert (run / "_SUCCESS").exists()
    scores = _scores(run)[0]  # every sample exactly once
    np.testing.assert_allclose(scores, _in_process_tracin(run, sharded_settings(run)), rtol=1e-10)


def _driver(run: Path) -> None:
    """The cluster and a run of the pipeline on it; prints the worker nodes' raylet pids first (a JSON list)."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    from test_sharded_scoring import sharded_settings

    from pipeline.config import ClusterSettings
    from pipeline.run import execute

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    print(
        json.dumps([node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid for node in workers]),
        flush=True,
    )
    execute(sharded_settings(run, cluster=ClusterSettings(address=cluster.address, max_retries=2)))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    sys.path[:0] = [str(REPO)]
    _driver(Path(sys.argv[1]))
