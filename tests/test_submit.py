"""scripts/submit.sh against a separately started Ray head (`ray start --head`), started and stopped here."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

DASHBOARD_PORT = 8297


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def ray_head(tmp_path):
    """A one-node Ray cluster of its own (own ports, own process group), with this interpreter on PATH, token
    authentication on (the token in RAY_AUTH_TOKEN of the head, the client and the job) and on 127.0.0.1 only."""
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    # Every agent port of its own: the test session's local Ray already holds the default ones.
    ports = [
        f"--{name}={port}"
        for name, port in zip(
            (
                "port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "metrics-export-port",
                "runtime-env-agent-port",
                "node-manager-port",
                "object-manager-port",
                "ray-client-server-port",
            ),
            _free_ports(8),
        )
    ]
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            *ports,
            "--dashboard-port",
            str(DASHBOARD_PORT),
            "--include-dashboard",
            "true",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{DASHBOARD_PORT}"
    # Ready when a trivial job runs: the dashboard answers before its job agent can take submissions.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--", "true"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("ray start --head did not accept a job within 120 s")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


@pytest.mark.slow  # starts a Ray head and submits a job: about 1.5 minutes
def test_submit_script_runs_the_pipeline_as_a_ray_job(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "job"
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "submit.sh"),
            f"output.dir={out}",
            "data.max_train=200",
            "train.epochs=2",
            "stages=[train,score,aggregate]",
        ],
        env=dict(env, RAY_ADDRESS=address),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["config"]["cluster"]["address"] == "auto"
    assert (out / "_SUCCESS").exists() and (out / "ranking.parquet").exists()


FAKE_RAY = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$(dirname "$0")/submitted"
"""


@pytest.mark.parametrize(
    "overrides",
    [["output.dir=runs/digits"], ["train.epochs=1", "++output.dir=./runs"], ["output.dir='runs'"], ["train.epochs=1"]],
)
def test_submit_refuses_a_relative_output_dir_before_submitting(tmp_path, overrides):
    (tmp_path / "ray").write_text(FAKE_RAY)
    (tmp_path / "ray").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    submit = ["bash", str(REPO / "scripts" / "submit.sh")]
    result = subprocess.run([*submit, *overrides], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "submitted").exists()
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: output.dir")
    assert "Ray's temporary copy" in result.stderr and "absolute path" in result.stderr

    assert subprocess.run([*submit, "output.dir=/shared/runs/a"], env=env).returncode == 0  # absolute: submitted
    submitted = (tmp_path / "submitted").read_text().split("\n")
    assert submitted[:2] == ["job", "submit"]
    assert submitted[-3:] == ["cluster.address=auto", "output.dir=/shared/runs/a", ""]
