"""RunLock: one driver per output dir; stale locks are taken over, unusable dirs give a one-line ConfigError."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.io.lock import RunLock, process_identity, refuse_if_busy

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time; from pathlib import Path; from pipeline.io.lock import RunLock\nwith "
    "RunLock(Path(sys.argv[1])):\n    time.sleep(60)"
)


def _dead_pid() -> int:
    """The pid of a process that has finished and been reaped."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def test_acquire_writes_record_and_release_removes_it(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "out"
    with RunLock(root):
        record = _record(root / ".lock")
        assert record["pid"] == os.getpid()
        assert record["host"] == socket.gethostname()
        assert record["started_at"]
        assert record["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert record["process_start"] == Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert not (root / ".lock").exists()
    assert root.is_dir()
    with RunLock(root):  # free again
        pass


def test_second_acquisition_while_held_refuses_and_keeps_the_lock(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        held = (tmp_path / ".lock").read_bytes()
        with (
            pytest.raises(
                ConfigError, match=rf"^output\.dir={tmp_path}: in use by another run \(pid {os.getpid()} on host "
            ),
            RunLock(tmp_path),
        ):
            pytest.fail("entered a held lock")
        assert (tmp_path / ".lock").read_bytes() == held
    assert not (tmp_path / ".lock").exists()


def test_lock_held_by_live_process_refuses_then_is_taken_over_once_it_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / ".lock").exists() or not (tmp_path / ".lock").read_bytes():
            assert holder.poll() is None and time.monotonic() < deadline, "holder did not take the lock"
            time.sleep(0.02)
        way_out = rf"choose another output\.dir \(if you are sure that run is dead, delete {tmp_path}/\.lock\)$"
        with (
            pytest.raises(ConfigError, match=rf"in use by another run \(pid {holder.pid} on host .*{way_out}"),
            RunLock(tmp_path),
        ):
            pytest.fail("entered a lock held by a live process")
    finally:
        holder.kill()
        holder.wait()
    assert _record(tmp_path / ".lock")["pid"] == holder.pid  # SIGKILL left the lock behind: now stale
    with RunLock(tmp_path):
        assert _record(tmp_path / ".lock")["pid"] == os.getpid()


def test_stale_lock_of_dead_pid_is_taken_over_silently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started_at": "yesterday"})
    )
    with RunLock(tmp_path):
        assert _record(tmp_path / ".lock")["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()
    assert capsys.readouterr() == ("", "")
    assert [p.name for p in tmp_path.iterdir()] == []  # no leftover moved-aside file


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"pid": "x", "host": "h"}', b"\xff\xfe"])
def test_garbage_lock_is_taken_over(tmp_path: Path, content: bytes) -> None:
    (tmp_path / ".lock").write_bytes(content)
    with RunLock(tmp_path):
        assert _record(tmp_path / ".lock")["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_lock_of_another_host_refuses_and_says_how_to_clear_it(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": _dead_pid(), "host": "elsewhere.invalid", "started_at": "2024-01-01T00:00:00+00:00"})
    )
    with (
        pytest.raises(
            ConfigError, match=r"on host elsewhere\.invalid, since 2024-01-01T00:00:00\+00:00\).*delete .*\.lock\)$"
        ) as refused,
        RunLock(tmp_path),
    ):
        pytest.fail("entered a lock of another host")
    assert "\n" not in str(refused.value)
    assert _record(tmp_path / ".lock")["host"] == "elsewhere.invalid"


def test_exit_leaves_a_lock_that_is_no_longer_its_own(tmp_path: Path) -> None:
    other = {"pid": 1, "host": socket.gethostname(), "started_at": "now"}
    with RunLock(tmp_path):
        (tmp_path / ".lock").write_text(json.dumps(other))
    assert _record(tmp_path / ".lock") == other


def test_output_dir_that_is_a_file_refuses(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("data")
    with (
        pytest.raises(
            ConfigError, match=rf"^output\.dir={target}: cannot write there \(it is a file, not a directory\)$"
        ),
        RunLock(target),
    ):
        pytest.fail("entered a lock in a file")
    assert target.read_text() == "data"


def test_output_dir_under_proc_refuses() -> None:
    with (
        pytest.raises(ConfigError, match=r"^output\.dir=/proc/x/run: cannot write there \(.+\)$"),
        RunLock(Path("/proc/x/run")),
    ):
        pytest.fail("entered a lock under /proc")


def test_takeover_never_deletes_a_lock_written_after_it_was_judged_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two drivers find the same stale lock; the slower one must not delete the faster one's fresh lock."""
    fresh = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": "just now"}
    (tmp_path / ".lock").write_text(json.dumps(fresh))
    monkeypatch.setattr(RunLock, "_settled_content", lambda self: b"stale garbage seen earlier")
    with (
        pytest.raises(
            ConfigError, match=rf"^output\.dir={tmp_path}: another run took over its stale lock at the same moment"
        ),
        RunLock(tmp_path),
    ):
        pytest.fail("entered a lock taken over by another run")
    assert _record(tmp_path / ".lock") == fresh
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def _live_unrelated_process() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


@pytest.mark.parametrize("field", ["process_start", "boot_id"])
def test_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path: Path, field: str) -> None:
    """The pid of the lock is alive but is another process (other start time, or the machine rebooted): stale."""
    other = _live_unrelated_process()
    try:
        record = {"pid": other.pid, "host": socket.gethostname(), "started_at": "then", **process_identity(other.pid)}
        record[field] = "1" if field == "process_start" else "00000000-0000-0000-0000-000000000000"
        (tmp_path / ".lock").write_text(json.dumps(record))
        with RunLock(tmp_path):
            assert _record(tmp_path / ".lock")["pid"] == os.getpid()
        assert other.poll() is None  # the unrelated process is left alone
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / ".lock").exists()


def test_lock_of_the_same_live_process_still_refuses(tmp_path: Path) -> None:
    other = _live_unrelated_process()
    try:
        record = {"pid": other.pid, "host": socket.gethostname(), "started_at": "now", **process_identity(other.pid)}
        (tmp_path / ".lock").write_text(json.dumps(record))
        with (
            pytest.raises(ConfigError, match=rf"in use by another run \(pid {other.pid} on host "),
            RunLock(tmp_path),
        ):
            pytest.fail("entered a lock held by a live process")
        assert _record(tmp_path / ".lock") == record
    finally:
        other.kill()
        other.wait()


def test_old_lock_without_a_start_time_of_a_live_pid_refuses(tmp_path: Path) -> None:
    """Locks written before start times were recorded are judged by their pid alone, as before."""
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started_at": "x"}))
    with pytest.raises(ConfigError, match=r"in use by another run"), RunLock(tmp_path):
        pytest.fail("entered a lock of a live pid")


def test_refuse_if_busy_only_reads(tmp_path: Path) -> None:
    refuse_if_busy(tmp_path / "missing")  # nothing there: free
    (tmp_path / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started_at": "x"}))
    refuse_if_busy(tmp_path)  # stale: free, and left for RunLock to take over
    assert (tmp_path / ".lock").exists()
    with (
        RunLock(tmp_path / "held"),
        pytest.raises(
            ConfigError, match=rf"^output\.dir={tmp_path / 'held'}: in use by another run \(pid {os.getpid()}"
        ),
    ):
        refuse_if_busy(tmp_path / "held")
