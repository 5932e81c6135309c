"""Small file helpers shared across jaxtag."""
from __future__ import annotations

import hashlib


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
