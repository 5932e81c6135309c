"""File helpers shared across jaxtag: one way to write a file atomically (and durably), the
temporary names that a later run can clean up, a file's sha256, the CPUs this process may use."""
from __future__ import annotations

import hashlib
import os
import secrets

# Every temporary file jaxtag writes carries this mark and its process id (at the end), so that
# a later run can tell the leftovers of a killed process from the files of a live one.
TMP_MARK = ".jaxtag-tmp-"


def temporary_name(path: str) -> str:
    """A hidden, unique name beside `path` for writing it before the atomic rename."""
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.{secrets.token_hex(4)}{TMP_MARK}{os.getpid()}")


def left_by_dead_process(name: str) -> bool:
    """Whether a temporary name (TMP_MARK + a process id) was left by a process that is gone, so
    its file can be removed. Our own id on a leftover means a killed run in an earlier container
    that had it (a live writer in this process removes its own temporary files)."""
    pid = name.rsplit(TMP_MARK, 1)[1] if TMP_MARK in name else None
    if pid is None:
        return False
    if not pid.isdigit() or int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:   # alive, another user's
        return False
    return False


def fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (where the OS lets a folder be fsynced)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, data, durable: bool = True) -> None:
    """Write `path` so that it is either absent, its old content or complete: into a new
    temporary file beside it (created exclusively: never through a planted link), then renamed.
    durable: the data and the rename are fsynced, so that after a power cut a file written after
    another is never there without it (a library's record is written after its outputs).
    data: str, bytes, or a function writing to a binary file. Its folder is made if missing."""
    folder = os.path.dirname(path)
    os.makedirs(folder or ".", exist_ok=True)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256_file(path: str) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"                      # cgroup v2
CGROUP_V1_QUOTA = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def available_cpus() -> int:
    """The CPUs this process may use: os.cpu_count() narrowed by its CPU affinity (taskset,
    numactl, a batch scheduler) and by a container's CPU quota (cgroup v2 cpu.max, or v1's CFS
    quota), rounded up; at least 1."""
    import math
    import os
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota() -> float | None:
    """CPUs' worth of time a container may use, or None where there is no limit."""
    try:
        with open(CGROUP_CPU_MAX, encoding="ascii") as f:
            limit, period = f.read().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota, period = (int(open(p, encoding="ascii").read()) for p in CGROUP_V1_QUOTA)
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
