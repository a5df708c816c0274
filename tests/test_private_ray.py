"""The local Ray of a run is private: it listens on 127.0.0.1 only and refuses work from any process without the
run's token (token authentication stays on even when the environment says RAY_AUTH_MODE=disabled); its dashboard
starts only when asked for, on 127.0.0.1, behind the same token.

The run's Ray is started the way the pipeline starts it (cluster.connect) in a driver process of its own; foreign
processes are separate interpreters with a clean environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

DRIVER = """
import json, os, sys
import ray
from pipeline import cluster
from pipeline.config import ClusterSettings
cluster.connect(ClusterSettings(dashboard="dashboard" in sys.argv))
ray.get(ray.remote(lambda: None).remote())  # a worker is up too
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "token": os.environ["RAY_AUTH_TOKEN"]}), flush=True)
sys.stdin.read()
"""

FOREIGN = """
import os, sys
import ray
ray.init(address=sys.argv[1])
@ray.remote
def touch(path):
    open(path, "w").close()
ray.get(touch.remote(sys.argv[2]), timeout=120)
"""

# A foreign process must be told to use 127.0.0.1: by default Ray turns a loopback address into the machine's
# routable one, where the run's Ray does not listen at all.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
REFUSED = "Authentication token is missing or incorrect"


def _start_driver(*args: str) -> tuple[subprocess.Popen, dict, list[str]]:
    """A run's driver holding its local Ray until its stdin closes: (process, its JSON line, lines printed before)."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")  # what the environment says must not switch authentication off
    env.pop("RAY_AUTH_TOKEN", None)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    printed = []
    for line in driver.stdout:
        if line.startswith("{"):
            return driver, json.loads(line), printed
        printed.append(line.strip())
    os.killpg(driver.pid, signal.SIGKILL)
    pytest.fail(f"the driver did not start its Ray: {printed}")


def _stop_driver(driver: subprocess.Popen) -> None:
    driver.stdin.close()
    try:
        driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


@pytest.fixture(scope="module")
def run_ray():
    driver, info, printed = _start_driver()
    yield {**info, "pid": driver.pid, "printed": printed}
    _stop_driver(driver)


def _foreign(address: str, marker: Path, **env: str) -> subprocess.CompletedProcess:
    """A process that is not the run: PATH and HOME only, plus `env`; it tries to run a task that creates `marker`."""
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env}
    command = [sys.executable, "-c", FOREIGN, address, str(marker)]
    return subprocess.run(command, env=clean, capture_output=True, text=True, timeout=240)


def test_a_foreign_process_without_the_token_cannot_submit_work(run_ray, tmp_path):
    marker = tmp_path / "foreign-task-ran"
    plain = _foreign(run_ray["gcs"], marker, **LOOPBACK)
    assert plain.returncode != 0 and not marker.exists()
    assert REFUSED in plain.stderr, plain.stderr[-2000:]
    guessed = _foreign(run_ray["gcs"], marker, **LOOPBACK, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    assert guessed.returncode != 0 and not marker.exists()
    assert REFUSED in guessed.stderr, guessed.stderr[-2000:]
    # the same process with the run's token gets in: what refused the others is the token, nothing else
    holder = _foreign(run_ray["gcs"], marker, **LOOPBACK, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=run_ray["token"])
    assert holder.returncode == 0 and marker.exists(), holder.stderr[-2000:]


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _listening(session: int) -> list[tuple[Address, int, str]]:
    """(address, port, process name) of every listening TCP socket of the processes of a session (Linux /proc)."""
    owners: dict[str, str] = {}  # socket inode -> process name
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            name = (entry / "comm").read_text().strip()
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = name
        except (OSError, ValueError):  # a process that ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            _, local, _, state, *_, inode = line.split()[:10]
            if state != "0A" or inode not in owners:  # 0A: LISTEN
                continue
            host, port = local.split(":")
            raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))  # 32-bit words, LE
            found.append((ipaddress.ip_address(raw), int(port, 16), owners[inode]))
    return found


def _beyond_loopback(sockets: list[tuple[Address, int, str]]) -> list[tuple[Address, int, str]]:
    def loopback(address: Address) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)
        return address.is_loopback or (mapped is not None and mapped.is_loopback)

    return [s for s in sockets if not loopback(s[0])]


LINUX = pytest.mark.skipif(not Path("/proc/net/tcp6").exists(), reason="reads listening sockets from Linux /proc")


@LINUX
def test_the_run_ray_listens_on_127_0_0_1_only(run_ray):
    sockets = _listening(run_ray["pid"])
    assert int(run_ray["gcs"].rsplit(":", 1)[1]) in {port for _, port, _ in sockets}
    assert {"gcs_server", "raylet"} <= {name for _, _, name in sockets}, sockets
    assert _beyond_loopback(sockets) == []
    assert not any("dashboard" in line for line in run_ray["printed"])  # not asked for


@pytest.mark.slow  # a second Ray of its own
@LINUX
def test_the_dashboard_when_asked_listens_on_127_0_0_1_behind_the_token():
    driver, info, printed = _start_driver("dashboard")
    try:
        line = next(line for line in printed if line.startswith("[cluster] Ray dashboard: "))
        url = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert url and info["token"] in line, line  # the run's own token, to sign in with
        assert int(url.group(1)) in {port for _, port, _ in _listening(driver.pid)}
        assert _beyond_loopback(_listening(driver.pid)) == []
        http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1
        version = f"{url.group(0)}/api/version"
        with pytest.raises(urllib.error.HTTPError) as refused:
            http.open(version, timeout=30)
        assert refused.value.code == 401
        signed = urllib.request.Request(version, headers={"Authorization": f"Bearer {info['token']}"})
        assert json.loads(http.open(signed, timeout=30).read())["ray_version"]
    finally:
        _stop_driver(driver)
