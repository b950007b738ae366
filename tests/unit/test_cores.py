"""The cores a worker process is given and the threads it runs on them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from defectscan.worker.cores import core_slices, cores_given, threads_per_process


def test_a_cgroup_quota_bounds_the_cores_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert cores_given(tmp_path) == affinity  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores_given(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: one
    assert cores_given(tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")  # cgroup v1, 1.5 cores: two at most
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cores_given(tmp_path) == min(2, affinity)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert cores_given(tmp_path) == affinity


def test_threads_divide_the_cores_among_processes() -> None:
    assert threads_per_process(1, cores=16) == 16
    assert threads_per_process(8, cores=16) == 2
    assert threads_per_process(3, cores=2) == 1  # never below one
    assert threads_per_process(8, wanted=3, cores=16) == 3  # DEFECTSCAN_TORCH_THREADS wins


def test_core_slices_are_disjoint_and_cover_the_cores() -> None:
    assert core_slices(2, [0, 1, 2, 3, 4]) == [{0, 1}, {2, 3, 4}]
    assert core_slices(4, list(range(8))) == [{0, 1}, {2, 3}, {4, 5}, {6, 7}]
    assert core_slices(3, [5, 7]) == [{5}, {7}, {5}]  # more processes than cores: shared round-robin
    assert set().union(*core_slices(3, list(range(16)))) == set(range(16))


def test_a_worker_process_runs_one_thread_per_core_it_is_given() -> None:
    code = (
        "import cv2, torch; from defectscan.worker.tasks import configure_threads; "
        "print(configure_threads(), cv2.getNumThreads())"
    )
    env = {k: v for k, v in os.environ.items() if k != "DEFECTSCAN_TORCH_THREADS"}
    one = {min(os.sched_getaffinity(0))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, one),
    )
    assert out.stdout.split() == ["1", "1"]
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "DEFECTSCAN_TORCH_THREADS": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["3", "3"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_all_cores_given_means_a_thread_per_core() -> None:
    code = "from defectscan.worker.tasks import configure_threads; print(configure_threads())"
    env = {k: v for k, v in os.environ.items() if k != "DEFECTSCAN_TORCH_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == cores_given()
