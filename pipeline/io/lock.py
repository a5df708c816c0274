"""A lock on an output dir (root/.lock, a small JSON record) so two drivers never write into the same run.

The record holds the driver's pid, host and process start time (Linux: the boot id and field 22 of
/proc/<pid>/stat, clock ticks since boot). A lock left by a run that died on this host (its pid is gone, or
now belongs to another process: another start time or boot) or holding unparseable bytes is stale and is
taken over silently; a lock from another host cannot be checked and always refuses.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

LOCK_NAME = ".lock"
SETTLE_READS = 4  # re-reads of an unparseable lock file: its creator may be between create and write
SETTLE_PAUSE = 0.05


class RunLock:
    """`with RunLock(root):` holds root/.lock for the block (creating root if needed).

    Raises ConfigError (one line naming output.dir) if a live run holds the lock or root is not writable.
    On exit the lock file is removed only if it still holds this lock's record (pid, host, started_at).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.record: dict[str, Any] = {}

    def __enter__(self) -> RunLock:
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            **process_identity(os.getpid()),
        }
        try:
            if self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError("it is a file, not a directory")
            self.root.mkdir(parents=True, exist_ok=True)
            if self._create():
                return self
            seen = self._settled_content()
            holder = _parse(seen)
            if holder is not None and _alive(holder):
                raise ConfigError(_busy(self.root, holder))
            if self._remove_if_unchanged(seen) and self._create():
                return self
        except OSError as e:
            reason = e.strerror or str(e)
            raise ConfigError(f"output.dir={self.root}: cannot write there ({reason})") from None
        raise ConfigError(
            f"output.dir={self.root}: another run took over its stale lock at the same moment; wait for it or choose "
            "another output.dir"
        )

    def __exit__(self, *exc_info: object) -> None:
        if _parse(self._content()) == self.record:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        """Create the lock file (O_EXCL) holding this lock's record; False if a lock file already exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self.record) + "\n")
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return True

    def _content(self) -> bytes:
        """The lock file's bytes; b"" if there is none."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def _settled_content(self) -> bytes:
        """The lock file's bytes, re-read for a moment while they do not parse (a creator may be mid-write)."""
        raw = self._content()
        for _ in range(SETTLE_READS):
            if _parse(raw) is not None:
                break
            time.sleep(SETTLE_PAUSE)
            raw = self._content()
        return raw

    def _remove_if_unchanged(self, seen: bytes) -> bool:
        """Remove the stale lock file judged from `seen`; False if another run replaced it in the meantime.

        The file is first moved aside, so a fresh lock written by a concurrent takeover is never deleted
        unseen: it is put back (without overwriting) and this takeover gives up.
        """
        aside = self.path.with_name(f"{LOCK_NAME}.{uuid.uuid4().hex[:8]}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        try:
            if aside.read_bytes() == seen:
                return True
            with suppress(OSError):  # a third run already created a lock; it holds the dir
                os.link(aside, self.path)
            return False
        finally:
            aside.unlink(missing_ok=True)


def refuse_if_busy(root: Path) -> None:
    """ConfigError (the "in use" line) if a live run holds root/.lock now. Reads only: a run checks this before its
    slower checks so that a busy directory is refused at once; RunLock still decides when the run starts."""
    try:
        holder = _parse((Path(root) / LOCK_NAME).read_bytes())
    except OSError:
        return
    if holder is not None and _alive(holder):
        raise ConfigError(_busy(Path(root), holder))


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The lock record, or None if the bytes are not a JSON object with an int pid and a str host."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(host, str):
        return None
    return record


def process_identity(pid: int) -> dict[str, str]:
    """{"boot_id", "process_start"} of a process on this host (process_start: field 22 of /proc/<pid>/stat, clock
    ticks since boot); without /proc (not Linux) or for a process gone, the parts that cannot be read are left out."""
    identity = {}
    try:
        identity["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        identity["process_start"] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    return identity


def _alive(holder: dict[str, Any]) -> bool:
    """False only for a holder on this host whose process no longer exists, or whose pid now belongs to another
    process (its boot id or start time differs from the lock's record); other hosts cannot be checked."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now = process_identity(holder["pid"])
    return all(holder[k] == now[k] for k in ("boot_id", "process_start") if k in holder and k in now)


def _busy(root: Path, holder: dict[str, Any]) -> str:
    return (
        f"output.dir={root}: in use by another run (pid {holder['pid']} on host {holder['host']}, "
        f"since {holder.get('started_at', 'an unknown time')}); wait for it or choose another output.dir "
        f"(if you are sure that run is dead, delete {root / LOCK_NAME})"
    )
