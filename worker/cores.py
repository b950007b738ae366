"""The CPU cores a worker process is given, and the threads it runs with on them.

A process is *given* the cores of its affinity mask (``taskset``, Kubernetes' static CPU manager,
Docker's ``--cpuset-cpus``), bounded by its cgroup's CPU quota (Docker's ``--cpus``, a Kubernetes CPU
limit), rounded up. A node that runs several worker processes divides its cores among them, so each
runs as many compute threads as it has cores and no more: oversubscribed threads on a shared core
spend their time waiting for each other (measured in ``bench/distributed.py``).

``DEFECTSCAN_TORCH_THREADS`` overrides the count; :func:`configure` applies it to torch's intra-op pool
and OpenCV's (which also sizes the segmenter's search pool).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _quota(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in cores (v2 ``cpu.max``, else v1 ``cfs_quota_us``), None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cores_given(root: Path = CGROUP) -> int:
    """How many cores this process may use: its affinity mask, bounded by its CPU quota (rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _quota(root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def threads_per_process(processes: int, wanted: int = 0, cores: int | None = None) -> int:
    """Compute threads for each of ``processes`` processes sharing the given cores (``wanted`` if set)."""
    if wanted > 0:
        return wanted
    return max(1, (cores if cores is not None else cores_given()) // max(1, processes))


def core_slices(processes: int, cores: list[int] | None = None) -> list[set[int]]:
    """The given cores split into ``processes`` disjoint slices as even as they go (each process pinned
    to its own slice); with fewer cores than processes, processes share them round-robin."""
    pool = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if processes <= len(pool):
        bounds = [i * len(pool) // processes for i in range(processes + 1)]
        return [set(pool[bounds[i] : bounds[i + 1]]) for i in range(processes)]
    return [{pool[i % len(pool)]} for i in range(processes)]


def configure(threads: int) -> int:
    """Run torch's and OpenCV's compute pools with ``threads`` threads; returns torch's count."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return int(torch.get_num_threads())
